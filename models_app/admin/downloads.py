"""Admin for repositories, snapshots, download jobs and Hub credentials.

Actions call the services (never the ORM behind their back). A Hub token is write-only: the form takes it in
a password field and stores only its ciphertext; neither is ever displayed."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from models_app.admin.ownership import OwnRowsUnlessSuperuser
from models_app.models import DownloadJob, HubCredential, Repository, Snapshot
from models_app.services import credentials, hub
from models_app.services.cache import delete_model
from models_app.services.cache_layout import CacheError
from models_app.services.errors import DownloadError
from models_app.services.hub_checks import human
from models_app.services.verify import verify_model


def _pull(
    admin_: admin.ModelAdmin,
    request: HttpRequest,
    repo_id: str,
    revision: str,
    *,
    force: bool,
    cache: str = "default",
) -> None:
    try:
        job = hub.download_model(repo_id, revision, cache=cache, force=force, user=request.user)
    except DownloadError as exc:
        admin_.message_user(request, f"{repo_id}@{revision}: {exc.message}", messages.ERROR)
        return
    admin_.message_user(request, f"{repo_id}@{revision}: job #{job.id} is {job.state}.", messages.SUCCESS)


# --- Repositories -----------------------------------------------------------------------------------------


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    list_display = [
        "repo_id",
        "kind",
        "private",
        "gated",
        "owner",
        "snapshot_count",
        "update_available",
        "remote_checked_at",
    ]
    list_filter = ["kind", "private", "gated", "update_available"]
    search_fields = ["repo_id", "owner__username"]
    list_select_related = ["owner"]
    readonly_fields = ["remote_sha", "remote_checked_at", "update_summary", "created_at", "updated_at"]
    actions = ["pull_main", "pull_main_force"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Repository]:
        return super().get_queryset(request).annotate(_snapshots=Count("snapshots"))

    @admin.display(description="Snapshots", ordering="_snapshots")
    def snapshot_count(self, obj: Repository) -> int:
        return getattr(obj, "_snapshots", 0)

    @admin.action(description="Pull main")
    def pull_main(self, request: HttpRequest, queryset: QuerySet[Repository]) -> None:
        for repo in queryset.filter(kind=Repository.Kind.HUB):
            _pull(self, request, repo.repo_id, "main", force=False)

    @admin.action(description="Re-download main (force: fetch every file again)")
    def pull_main_force(self, request: HttpRequest, queryset: QuerySet[Repository]) -> None:
        for repo in queryset.filter(kind=Repository.Kind.HUB):
            _pull(self, request, repo.repo_id, "main", force=True)


# --- Snapshots --------------------------------------------------------------------------------------------


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = [
        "repository",
        "short_sha",
        "ref",
        "status",
        "size",
        "node",
        "cache_root",
        "model_type",
        "verified_at",
        "last_used_at",
    ]
    list_filter = ["status", "node", "cache_root", "model_type"]
    search_fields = ["repository__repo_id", "commit_sha", "ref"]
    list_select_related = ["repository"]
    readonly_fields = [
        "repository",
        "commit_sha",
        "ref",
        "node",
        "cache_root",
        "path",
        "size",
        "files",
        "model_type",
        "context_length",
        "downloaded_at",
        "verified_at",
        "last_used_at",
        "created_at",
        "updated_at",
    ]
    exclude = ["size_bytes"]
    actions = ["verify", "redownload", "delete_files"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # snapshots come from pulls and reconcile, never from a form

    def has_change_permission(self, request: HttpRequest, obj: Snapshot | None = None) -> bool:
        return False  # the index follows the cache: change it through the actions

    @admin.display(description="SHA", ordering="commit_sha")
    def short_sha(self, obj: Snapshot) -> str:
        return obj.short_sha

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, obj: Snapshot) -> str:
        return human(obj.size_bytes)

    @admin.action(description="Verify files (hash against the Hub's checksums)")
    def verify(self, request: HttpRequest, queryset: QuerySet[Snapshot]) -> None:
        for snapshot in queryset.select_related("repository"):
            result = verify_model(snapshot)
            problems = {**result.mismatched, **dict.fromkeys(result.missing, "missing")}
            if result.ok:
                self.message_user(request, f"{snapshot}: all files match.", messages.SUCCESS)
            else:
                listed = ", ".join(sorted(problems)[:5]) or snapshot.get_status_display()
                self.message_user(request, f"{snapshot}: {listed}", messages.ERROR)

    @admin.action(description="Re-download (force: fetch every file again)")
    def redownload(self, request: HttpRequest, queryset: QuerySet[Snapshot]) -> None:
        for snapshot in queryset.select_related("repository").filter(repository__kind=Repository.Kind.HUB):
            _pull(
                self,
                request,
                snapshot.repository.repo_id,
                snapshot.commit_sha,
                force=True,
                cache=snapshot.cache_root,
            )

    @admin.action(description="Delete files from the cache")
    def delete_files(self, request: HttpRequest, queryset: QuerySet[Snapshot]) -> None:
        for snapshot in queryset.select_related("repository"):
            try:
                delete_model(snapshot.repository.repo_id, snapshot.commit_sha, user=request.user)
            except CacheError as exc:  # the cache service's refusals (in use, active job...)
                self.message_user(request, f"{snapshot}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{snapshot}: deleted.", messages.SUCCESS)


# --- Download jobs ----------------------------------------------------------------------------------------


@admin.register(DownloadJob)
class DownloadJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "repository",
        "revision",
        "state",
        "progress",
        "attempts",
        "error_code",
        "short_sha",
        "worker",
        "requested_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["state", "error_code", "node", "cache_root", "force"]
    search_fields = ["repository__repo_id", "commit_sha", "worker", "requested_by__username"]
    list_select_related = ["repository", "requested_by"]
    date_hierarchy = "created_at"
    actions = ["cancel", "requeue"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # pulls start from the pages, the API or the CLI, which validate them

    def has_change_permission(self, request: HttpRequest, obj: DownloadJob | None = None) -> bool:
        return False  # the state machine is the services' job: view and act, never edit

    @admin.display(description="SHA", ordering="commit_sha")
    def short_sha(self, obj: DownloadJob) -> str:
        return obj.commit_sha[:8]

    @admin.display(description="Progress")
    def progress(self, obj: DownloadJob) -> str:
        if not obj.bytes_total:
            return "—"
        return f"{human(obj.bytes_done)} / {human(obj.bytes_total)} ({obj.percent:.0f}%)"

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        for job in queryset.filter(state__in=DownloadJob.ACTIVE_STATES):
            job = hub.cancel_job(job, by=request.user)
            self.message_user(request, f"Job #{job.id}: {job.state}.", messages.SUCCESS)

    @admin.action(description="Requeue (pull again as a new job)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        for job in queryset.select_related("repository").exclude(state__in=DownloadJob.ACTIVE_STATES):
            try:
                new = hub.retry_job(job)
            except DownloadError as exc:
                self.message_user(request, f"Job #{job.id}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"Job #{job.id}: queued again as #{new.id}.", messages.SUCCESS)


# --- Hub credentials --------------------------------------------------------------------------------------


class HubCredentialForm(forms.ModelForm):
    token = forms.CharField(
        widget=forms.PasswordInput(render_value=False),  # write-only: never sent back to the browser
        required=False,
        strip=True,
        help_text="A Hugging Face access token. Stored encrypted; it is never shown again. "
        "Leave empty to keep the current one.",
    )

    class Meta:
        model = HubCredential
        fields = ["owner", "name"]

    def clean_token(self) -> str:
        token = self.cleaned_data.get("token") or ""
        if not token:
            if not self.instance.pk:
                raise forms.ValidationError("A token is required.")
            return ""
        try:
            return credentials.normalize_token(token)
        except credentials.CredentialError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(HubCredential)
class HubCredentialAdmin(OwnRowsUnlessSuperuser):
    form = HubCredentialForm
    owner_field = "owner"
    list_display = [
        "name",
        "owner",
        "masked",
        "is_default",
        "hub_username",
        "last_verified_at",
        "last_error",
        "created_at",
    ]
    list_filter = [("last_verified_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "owner__username", "hub_username"]
    list_select_related = ["owner"]
    # token_ciphertext is deliberately absent from every list here.
    # is_default is the owner's choice (Settings, or the API): one per owner, so never a bare checkbox here.
    readonly_fields = [
        "masked",
        "is_default",
        "hub_username",
        "whoami",
        "last_verified_at",
        "last_error",
        "created_at",
    ]
    actions = ["check_tokens"]

    def get_fields(self, request: HttpRequest, obj: HubCredential | None = None) -> list[str]:
        return (
            ["owner", "name", "token"] if obj is None else ["owner", "name", "token", *self.readonly_fields]
        )

    def get_readonly_fields(self, request: HttpRequest, obj: HubCredential | None = None) -> list[str]:
        # A token's owner never changes: moving it would hand one user's Hub access to another.
        return self.readonly_fields if obj is None else ["owner", *self.readonly_fields]

    @admin.display(description="Token")
    def masked(self, obj: HubCredential) -> str:
        return obj.masked if obj.pk else "—"

    def save_model(
        self, request: HttpRequest, obj: HubCredential, form: forms.ModelForm, change: bool
    ) -> None:
        self.check_owner(request, obj, form)
        token = form.cleaned_data.get("token")  # validated by the form
        if not change:
            created = credentials.create_credential(owner=obj.owner, name=obj.name, token=token)
            # The admin redirects after this; point obj at the new row so its links and log entry are right.
            obj.pk, obj.token_ciphertext, obj.token_last4 = (
                created.pk,
                created.token_ciphertext,
                created.token_last4,
            )
            obj.created_at = created.created_at
            obj._state.adding = False
            return
        super().save_model(request, obj, form, change)
        if token:
            credentials.set_credential_token(obj, token=token)

    @admin.action(description="Check with the Hub (whoami)")
    def check_tokens(self, request: HttpRequest, queryset: QuerySet[HubCredential]) -> None:
        for credential in queryset:
            result = credentials.check_credential(credential)
            if result["ok"]:
                self.message_user(request, f"{credential.name}: {result['username']}", messages.SUCCESS)
            else:
                self.message_user(request, f"{credential.name}: {result['error']}", messages.ERROR)
