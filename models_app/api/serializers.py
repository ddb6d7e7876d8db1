"""Request and response shapes of the REST API. Secrets are write-only fields or absent: a Hub token is
accepted on create and never serialized; an API key's raw value appears only in ApiKeyCreatedSerializer."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_app.models import ApiKey, DownloadJob, HubCredential, Snapshot
from models_app.services import validation
from models_app.services.credentials import label as credential_label
from models_app.services.errors import action_for_job


class StrictCharField(serializers.CharField):
    """A string and nothing else: DRF's CharField turns 0 or true into "0" and "True". Its length is checked
    as sent, as the schema's maxLength says; DRF checks it after trimming, so 101 characters with a leading
    space would pass a limit of 100 (schemathesis found that). A field whose pattern allows no space at its ends
    says trim_whitespace=False: " " or "name " met its pattern only after DRF's trim (found again)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


# What validation.validate_repo_id accepts, as a pattern clients and fuzzers can read: two parts of word
# characters, each '.' or '-' followed by one (no '..', '--', or a part starting or ending with them).
REPO_ID_PATTERN = (
    r"^[A-Za-z0-9_]([A-Za-z0-9_]|[.-][A-Za-z0-9_]){0,47}/[A-Za-z0-9_]([A-Za-z0-9_]|[.-][A-Za-z0-9_]){0,47}$"
)
# A branch, tag or commit: segments that do not start with '.' and contain no '..' (validation.validate_revision).
REVISION_PATTERN = r"^[A-Za-z0-9_+=]([A-Za-z0-9_+=-]|[.][A-Za-z0-9_+=-]|/[A-Za-z0-9_+=]){0,99}$"
# Printable ASCII without spaces, as credentials._clean_token requires.
TOKEN_PATTERN = r"^[!-~]{1,500}$"
# What validation.validate_allow_patterns accepts, so a schema-valid pattern is never refused: printable ASCII
# without a backslash, not blank, not absolute (no leading "/" or drive letter, spaces stripped), no "..".
GLOB_PATTERN = r"^(?! */)(?! *[A-Za-z]:)(?!.*\.\.)(?=.*[!-~])[ -\[\]-~]{1,200}$"
# Something besides spaces, and no NUL (DRF refuses those): what a name field takes. The spaces are spelled
# out, exactly what str.strip() removes (DRF trims with it): `\s` means fewer characters to an ECMA-style
# reader of the schema (no U+0085, U+001C-U+001F), so a name of U+0085 alone looked valid and was blank here.
_PY_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_PATTERN = rf"^[^\x00]*[^{_PY_SPACE}\x00][^\x00]*$"
# What Django's username validator accepts: a usage filter naming anything else can name no user.
USERNAME_PATTERN = r"^[\w.@+-]+$"
# No NUL (DRF refuses those): a node is looked up among the live ones, any other text is unknown_node.
NODE_PATTERN = r"^[^\x00]*$"


# --- Errors -----------------------------------------------------------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: invalid_repo_id, not_found, gated...")
    message = serializers.CharField(help_text="For humans.")
    action = serializers.CharField(required=False, help_text="What to do about it, when there is something.")
    details = serializers.JSONField(required=False, help_text="Per-field messages of a validation error.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# --- Models (snapshots) ------------------------------------------------------------------------------------------


class SnapshotSerializer(serializers.ModelSerializer):
    repo_id = serializers.CharField(source="repository.repo_id")
    kind = serializers.CharField(source="repository.kind")
    private = serializers.BooleanField(source="repository.private")
    gated = serializers.BooleanField(source="repository.gated")
    update_available = serializers.SerializerMethodField(
        help_text="The Hub has a newer commit of the tracked revision than this snapshot"
    )
    file_count = serializers.SerializerMethodField()
    missing_files = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="A partial snapshot: what mlx-lm needs that it does not hold (empty otherwise)",
    )

    class Meta:
        model = Snapshot
        fields = [
            "id",
            "repo_id",
            "kind",
            "commit_sha",
            "ref",
            "node",
            "cache_root",
            "status",
            "missing_files",
            "size_bytes",
            "file_count",
            "model_type",
            "context_length",
            "private",
            "gated",
            "update_available",
            "downloaded_at",
            "verified_at",
            "last_used_at",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.BooleanField())
    def get_update_available(self, obj: Snapshot) -> bool:
        # The snapshot at the Hub's head is the update: it has none itself (as selectors.snapshots.model_list says).
        repo = obj.repository
        return bool(repo.update_available and obj.commit_sha != repo.remote_sha)

    def get_file_count(self, obj: Snapshot) -> int:
        return len(obj.files or [])


class SnapshotFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField(required=False, allow_null=True)
    sha256 = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class SnapshotDetailSerializer(SnapshotSerializer):
    files = serializers.SerializerMethodField()

    class Meta(SnapshotSerializer.Meta):
        fields = [*SnapshotSerializer.Meta.fields, "files"]
        read_only_fields = fields

    @extend_schema_field(SnapshotFileSerializer(many=True))
    def get_files(self, obj: Snapshot) -> list[dict[str, Any]]:
        # Only what a client needs: blob ids and local paths are the server's business.
        return [
            {"path": f.get("path", ""), "size": f.get("size"), "sha256": f.get("sha256")}
            for f in (obj.files or [])
            if isinstance(f, dict)
        ]


class DeleteItemSerializer(serializers.Serializer):
    snapshot_id = serializers.IntegerField()
    commit_sha = serializers.CharField()
    ref = serializers.CharField(allow_blank=True)
    cache_root = serializers.CharField()
    bytes = serializers.IntegerField(help_text="Bytes this snapshot frees (blobs shared with kept ones stay)")


class DeletePlanSerializer(serializers.Serializer):
    repo_id = serializers.CharField()
    dry_run = serializers.BooleanField()
    files_kept = serializers.BooleanField(help_text="Local models are only unregistered; their files stay")
    bytes_freed = serializers.IntegerField()
    items = DeleteItemSerializer(many=True)


class VerifyResultSerializer(serializers.Serializer):
    snapshot_id = serializers.IntegerField()
    ok = serializers.BooleanField()
    status = serializers.CharField(help_text="The snapshot's status after verification")
    files_checked = serializers.IntegerField()
    bytes_hashed = serializers.IntegerField()
    missing = serializers.ListField(child=serializers.CharField(), help_text="Files that are gone")
    mismatched = serializers.DictField(child=serializers.CharField(), help_text="path -> what differs")
    verified_at = serializers.DateTimeField(allow_null=True)


class LoadResultSerializer(serializers.Serializer):
    snapshot_id = serializers.IntegerField()
    repo_id = serializers.CharField()
    queued = serializers.BooleanField(help_text="The request is on the inference worker's queue")
    loaded = serializers.BooleanField(help_text="Whether it is loaded right now (before the request runs)")


# --- Pulls (download jobs) ---------------------------------------------------------------------------------------


class PullErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    action = serializers.CharField(allow_blank=True)


class PullSerializer(serializers.ModelSerializer):
    repo_id = serializers.CharField(source="repository.repo_id")
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True, default=None)
    credential_id = serializers.IntegerField(allow_null=True)
    credential = serializers.SerializerMethodField(
        help_text="The Hub token the pull uses, by name and masked form (never the token); null: none"
    )
    snapshot_id = serializers.IntegerField(allow_null=True)
    percent = serializers.FloatField()
    eta_seconds = serializers.FloatField(allow_null=True)
    error = serializers.SerializerMethodField()
    node_choice = serializers.CharField(
        read_only=True,
        help_text='For a pull to node "any" (when it created or joined the job): which machine was picked '
        "and why; empty otherwise",
    )

    class Meta:
        model = DownloadJob
        fields = [
            "id",
            "repo_id",
            "revision",
            "node",
            "node_choice",
            "cache_root",
            "state",
            "commit_sha",
            "snapshot_id",
            "credential_id",
            "credential",
            "requested_by",
            "force",
            "allow_patterns",
            "bytes_done",
            "bytes_total",
            "files_done",
            "files_total",
            "current_file",
            "speed_bps",
            "percent",
            "eta_seconds",
            "attempts",
            "cancel_requested",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_credential(self, obj: DownloadJob) -> str | None:
        return credential_label(obj.credential) if obj.credential_id and obj.credential else None

    @extend_schema_field(PullErrorSerializer(allow_null=True))
    def get_error(self, obj: DownloadJob) -> dict[str, str] | None:
        if not obj.error_code:
            return None
        return {"code": obj.error_code, "message": obj.error_message, "action": action_for_job(obj)}


# A model's Hub URL as validation.parse_hub_url takes it (huggingface.co or hf.co; the configured
# HF_ENDPOINT's host is accepted too, but the schema cannot name a host that settings may change), optionally
# with /tree/<revision> in one segment.
_URL_PART = r"[A-Za-z0-9_]([A-Za-z0-9_]|[.-][A-Za-z0-9_]){0,47}"
_URL_REVISION = r"[A-Za-z0-9_+=]([A-Za-z0-9_+=-]|[.][A-Za-z0-9_+=-]){0,99}"
HUB_URL_PATTERN = (
    rf"^https?://(www\.huggingface\.co|huggingface\.co|hf\.co)/(models/)?{_URL_PART}/{_URL_PART}"
    rf"(/(tree|blob|resolve)/{_URL_REVISION})?/?$"
)


@extend_schema_field({"type": "string", "pattern": f"{REPO_ID_PATTERN}|{HUB_URL_PATTERN}", "maxLength": 2048})
class RepoIdField(StrictCharField):
    """`org/name` or the model's Hub URL (…/tree/<revision> sets the revision), checked by the downloads
    service's own rules, so a bad id is its `invalid_repo_id` error (with its action), not a generic field
    error. The pattern documents the same rules for clients."""

    def to_internal_value(self, data: Any) -> str:
        text = super().to_internal_value(data)
        validation.parse_hub_url(text)
        return text


@extend_schema_field({"type": "string", "pattern": REVISION_PATTERN, "maxLength": 200, "default": "main"})
class RevisionField(StrictCharField):
    def to_internal_value(self, data: Any) -> str:
        return validation.validate_revision(super().to_internal_value(data))


class PullCreateSerializer(serializers.Serializer):
    repo_id = RepoIdField(
        help_text=(
            "org/name on the Hub, e.g. mlx-community/SmolLM2-135M-Instruct-8bit, or its Hub URL "
            "(a …/tree/<revision> URL sets the revision unless `revision` names another one)"
        )
    )
    revision = RevisionField(default="main", help_text="Branch, tag or commit sha")
    credential_id = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**63 - 1,
        help_text="One of your Hub credentials",
    )
    cache = serializers.ChoiceField(choices=[], required=False, allow_blank=True, help_text="Cache root name")
    force = serializers.BooleanField(default=False, help_text="Download again even if the snapshot is ready")
    node = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=200,
        validators=[RegexValidator(NODE_PATTERN)],
        help_text='The machine to download to, by its NODE_NAME (default: the server\'s own); "any": the live '
        "machine whose cache root has room (the answer's node_choice says which and why)",
    )
    allow_patterns = serializers.ListField(
        child=StrictCharField(
            max_length=200,
            trim_whitespace=False,
            validators=[
                RegexValidator(
                    GLOB_PATTERN,
                    message="A pattern names files inside the repo: printable ASCII, relative (no leading / or "
                    "drive letter), no backslash, and '..' is not allowed; like *.safetensors.",
                )
            ],
        ),
        required=False,
        allow_null=True,
        max_length=50,
        help_text="Only files matching these glob patterns",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["cache"].choices = sorted(settings.CACHE_ROOTS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The Pull page's rule for a URL and a revision, so the API and the page agree.
        attrs["repo_id"], attrs["revision"] = validation.repo_and_revision(
            attrs["repo_id"], attrs["revision"]
        )
        return attrs


# --- Hub credentials ----------------------------------------------------------------------------------------------


class CredentialSerializer(serializers.ModelSerializer):
    name = StrictCharField(max_length=100, validators=[RegexValidator(NAME_PATTERN)])
    token = StrictCharField(
        write_only=True,
        max_length=500,
        validators=[RegexValidator(TOKEN_PATTERN, "That does not look like a Hugging Face token.")],
        help_text="Write-only: never returned",
    )
    masked = serializers.CharField(read_only=True, help_text="hf_****last4")

    class Meta:
        model = HubCredential
        fields = [
            "id",
            "name",
            "token",
            "masked",
            "hub_username",
            "last_verified_at",
            "last_error",
            "is_default",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "masked",
            "hub_username",
            "last_verified_at",
            "last_error",
            "is_default",
            "created_at",
        ]
        # The (owner, name) uniqueness is checked by the service with the owner from the request.
        validators: list = []


class CredentialTestSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    hub_username = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    credential = CredentialSerializer()


# --- Usage -----------------------------------------------------------------------------------------------------


class UsageQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(default=14, min_value=1, max_value=366)
    snapshot_id = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**63 - 1)
    user = StrictCharField(
        required=False,
        max_length=150,
        validators=[RegexValidator(USERNAME_PATTERN)],
        help_text="Staff: only this user's usage (a username)",
    )


class UsageGroupSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()
    ttft_ms = serializers.FloatField(allow_null=True)
    tokens_per_second = serializers.FloatField(allow_null=True)


class UsageBySourceSerializer(UsageGroupSerializer):
    source = serializers.CharField()
    label = serializers.CharField()


class UsageByUserSerializer(UsageGroupSerializer):
    username = serializers.CharField()


class UsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    ttft_ms = serializers.FloatField(allow_null=True)
    tokens_per_second = serializers.FloatField(allow_null=True)
    tokens_by_model = serializers.DictField(child=serializers.IntegerField())


class UsageModelSerializer(serializers.Serializer):
    model = serializers.CharField()
    tokens = serializers.IntegerField()


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()


class UsageReportSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    totals = UsageTotalsSerializer()
    by_day = UsageDaySerializer(many=True)
    by_model = UsageModelSerializer(many=True)
    by_source = UsageBySourceSerializer(many=True)
    by_user = UsageByUserSerializer(many=True, help_text="Staff only; empty for other users")


# --- API keys --------------------------------------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    name = StrictCharField(
        max_length=100,
        validators=[RegexValidator(NAME_PATTERN)],
        help_text="What the key is for, e.g. the tool or machine using it",
    )
    display = serializers.CharField(
        read_only=True, help_text="mlxcr_<prefix>_… (the secret part is never shown)"
    )
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "display", "active", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = ["id", "prefix", "display", "active", "created_at", "last_used_at", "revoked_at"]


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The raw key. Shown once: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = [*ApiKeySerializer.Meta.read_only_fields, "key"]


# --- Health ----------------------------------------------------------------------------------------------------


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    node = serializers.CharField(required=False, help_text="Staff only")
    database = serializers.JSONField()
    redis = serializers.JSONField()
    queues = serializers.JSONField()
    mlx = serializers.JSONField()
    cache = serializers.JSONField()
    versions = serializers.JSONField(required=False, help_text="Staff only")


class DiscoverQuerySerializer(serializers.Serializer):
    q = StrictCharField(
        required=False, default="", allow_blank=True, max_length=200, help_text="Words in the repo id"
    )
    sort = serializers.ChoiceField(choices=["downloads", "trending", "recent", "likes"], default="downloads")
    author = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=96,
        validators=[RegexValidator(r"^[A-Za-z0-9._-]+$")],
        trim_whitespace=False,
        help_text="Only this Hub user or organisation",
    )
    mlx_only = serializers.BooleanField(default=True, help_text="Only repos tagged for the mlx library")
    cursor = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=1000,
        validators=[RegexValidator(r"^[A-Za-z0-9_=.+/%-]+$")],
        trim_whitespace=False,
        help_text="The page after the one that gave this next_cursor ('' for the first page)",
    )


class DiscoverDetailsQuerySerializer(serializers.Serializer):
    repo_id = StrictCharField(
        max_length=200,
        validators=[RegexValidator(REPO_ID_PATTERN)],
        help_text="The repo to check, e.g. mlx-community/Qwen3-8B-4bit",
    )


class DiscoverResultSerializer(serializers.Serializer):
    repo_id = serializers.CharField()
    author = serializers.CharField()
    sha = serializers.CharField(help_text="The commit the Hub listed ('' when not said)")
    base_model = serializers.CharField(
        help_text="What its variants share: the card's base_model, or the name"
    )
    quantization = serializers.CharField(help_text="e.g. 4-bit, 6-bit DWQ, bf16; '' when unknown")
    parameters = serializers.IntegerField(allow_null=True, help_text="Estimated for quantized weights")
    weights_bytes = serializers.IntegerField(allow_null=True)
    downloads = serializers.IntegerField()
    likes = serializers.IntegerField()
    trending = serializers.IntegerField()
    last_modified = serializers.CharField(help_text="ISO 8601, or ''")
    private = serializers.BooleanField()
    gated = serializers.BooleanField()
    library = serializers.CharField()
    model_type = serializers.CharField()
    here = serializers.BooleanField(help_text="A ready snapshot of this repo is in the cache")
    update_available = serializers.BooleanField()
    verdict = serializers.ChoiceField(choices=["green", "amber", "red"])
    verdict_reason = serializers.CharField()
    pull_url = serializers.CharField(help_text="The Pull page, prefilled with this repo")
    details_pending = serializers.BooleanField(
        help_text="The listing said nothing of its weights: GET details_url for its sizes and verdict"
    )
    details_url = serializers.CharField(help_text="GET /api/v1/discover/details for this repo")


class DiscoverGroupSerializer(serializers.Serializer):
    base_model = serializers.CharField()
    repo_ids = serializers.ListField(child=serializers.CharField())


class DiscoverPageSerializer(serializers.Serializer):
    query = serializers.CharField()
    sort = serializers.CharField()
    from_cache = serializers.BooleanField(
        help_text="The Hub's answer came from the cache (DISCOVER_CACHE_TTL)"
    )
    results = DiscoverResultSerializer(many=True)
    groups = DiscoverGroupSerializer(many=True, help_text="Results by base model, variants side by side")
    next_cursor = serializers.CharField(help_text="Pass as cursor for more results; '' when there are none")
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="Stored Hub tokens the Hub refused (their private repos missing)",
    )
