"""Forms of the dashboard pages. They validate input and put every error next to its field; the work is done
by the services the views call."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from models_app.models import HubCredential, Snapshot
from models_app.services import credentials, errors, workers
from models_app.services.cleanup import configured_policy
from models_app.services.errors import DownloadError
from models_app.services.inference import DEFAULT_GENERATION
from models_app.services.nodes import ANY_NODE
from models_app.services.validation import parse_hub_url, repo_and_revision, validate_allow_patterns

GB = 10**9
DAY = 86400
MAX_PATTERNS = 20


@dataclass(frozen=True)
class Action:
    """What to do about an error, shown under it: a sentence and, when there is one, a link."""

    text: str
    url: str = ""
    link: str = ""


def error_action(err: DownloadError, repo_id: str = "") -> Action:
    url, link = errors.link_for(err.code, repo_id)
    return Action(err.action, url, link)


class PagesForm(forms.Form):
    """Errors may carry an Action (set by add_download_error), rendered by templates/dashboard/_field.html."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actions: dict[str | None, Action] = {}
        for field in self.fields.values():
            # The shared field template reads the action off the field it renders.
            field.action = None  # type: ignore[attr-defined]

    def add_download_error(self, err: DownloadError, repo_id: str = "") -> None:
        spec = errors.CODES.get(err.code)
        name = spec.field if spec is not None and spec.field else None
        if name not in self.fields:
            name = None
        self.add_error(name, err.message)
        action = error_action(err, repo_id)
        self.actions[name] = action
        if name is not None:
            self.fields[name].action = action  # type: ignore[attr-defined]

    @property
    def non_field_action(self) -> Action | None:
        return self.actions.get(None)


class PullForm(PagesForm):
    repo = forms.CharField(
        label="Repository",
        max_length=2048,
        help_text="org/name, or paste the model's Hub URL (a …/tree/<revision> URL sets the revision).",
        widget=forms.TextInput(
            attrs={
                "placeholder": "mlx-community/SmolLM2-135M-Instruct-8bit",
                "autocomplete": "off",
                "spellcheck": "false",
                "autocapitalize": "off",
            }
        ),
    )
    revision = forms.CharField(
        max_length=200,
        required=False,
        initial="main",
        help_text="Branch, tag or commit SHA.",
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocapitalize": "off"}),
    )
    credential = forms.ModelChoiceField(
        label="Hub token",
        queryset=HubCredential.objects.none(),
        required=False,
        empty_label="None (public models)",
        help_text="Needed for private and gated models. Tokens are added in Settings.",
    )
    allow_patterns = forms.CharField(
        label="Only these files",
        required=False,
        max_length=2000,
        widget=forms.Textarea(
            attrs={"rows": 2, "placeholder": "*.safetensors\n*.json", "spellcheck": "false"}
        ),
        help_text="Optional glob patterns, one per line. Empty: every file.",
    )
    force = forms.BooleanField(label="Download again even if the files are cached", required=False)
    node = forms.ChoiceField(
        label="Machine",
        required=False,
        help_text="Where the model is stored and run. Only machines whose workers are running are listed.",
    )

    def __init__(self, *args: Any, user, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        # Only the user's own tokens: a credential id from another user is "not a valid choice".
        self.fields["credential"].queryset = HubCredential.objects.filter(owner=user).order_by("name")
        default = credentials.default_credential(user)
        if default is not None:
            # Left empty, the pull uses this one (download_model's rule): the choice says so.
            self.fields["credential"].empty_label = f"Your default: {credentials.label(default)}"
        # This machine first, then every other one with a live download worker (the page shows the choice
        # only when there is one to make).
        others = [n for n in workers.node_names("downloads") if n != settings.NODE_NAME]
        choices = [(settings.NODE_NAME, f"{settings.NODE_NAME} (this one)")] + [(n, n) for n in others]
        if others:
            choices.append((ANY_NODE, "Any machine with room (picked for you)"))
        self.fields["node"].choices = choices
        self.fields["node"].initial = settings.NODE_NAME

    @property
    def several_nodes(self) -> bool:
        return len(self.fields["node"].choices) > 1

    def clean_allow_patterns(self) -> list[str] | None:
        text = self.cleaned_data.get("allow_patterns") or ""
        patterns = [p.strip() for p in text.replace(",", "\n").splitlines() if p.strip()]
        if len(patterns) > MAX_PATTERNS:
            raise forms.ValidationError(f"At most {MAX_PATTERNS} patterns.")
        try:
            return validate_allow_patterns(patterns)
        except DownloadError as err:
            raise forms.ValidationError(err.message) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        repo_text = data.get("repo")
        if repo_text is None:
            return data
        try:
            repo_id, _ = parse_hub_url(repo_text)
        except DownloadError as err:
            self.add_download_error(err)
            return data
        data["repo_id"] = repo_id
        try:
            # A revision in the pasted URL wins over the untouched default.
            _, data["revision"] = repo_and_revision(repo_text, (data.get("revision") or "").strip() or None)
        except DownloadError as err:
            self.add_download_error(err, repo_id)
        return data


class ModelFilterForm(forms.Form):
    SORTS = {
        "name": ("repository__repo_id", "-created_at"),
        "size": ("-size_bytes", "repository__repo_id"),
        "used": ("-last_used_at", "repository__repo_id"),
        "downloaded": ("-downloaded_at", "-created_at"),
    }
    q = forms.CharField(label="Search", required=False, max_length=200)
    status = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Any status"),
            *[c for c in Snapshot.Status.choices if c[0] != Snapshot.Status.DELETED],
        ],
    )
    sort = forms.ChoiceField(
        required=False,
        choices=[("name", "Name"), ("size", "Size"), ("used", "Last used"), ("downloaded", "Downloaded")],
    )
    updates = forms.BooleanField(label="Updates only", required=False)

    def order_by(self) -> tuple[str, ...]:
        sort = self.cleaned_data.get("sort") if self.is_valid() else ""
        return self.SORTS.get(sort or "name", self.SORTS["name"])


class CleanupForm(PagesForm):
    keep_revisions = forms.IntegerField(
        label="Revisions to keep per model",
        min_value=1,
        max_value=100,
        required=False,
        help_text="Older revisions of the same model are removed. Empty: keep them all.",
    )
    max_age_days = forms.DecimalField(
        label="Remove models unused for (days)",
        min_value=Decimal("0.01"),
        max_digits=7,
        decimal_places=2,
        required=False,
        help_text="Empty: no age limit.",
    )
    max_size_gb = forms.DecimalField(
        label="Size budget per cache (GB)",
        min_value=Decimal("0.001"),
        max_digits=9,
        decimal_places=3,
        required=False,
        help_text="Least recently used models go first until the cache fits. Empty: no budget.",
    )
    confirm = forms.BooleanField(label="Yes, delete these files", required=False)

    @classmethod
    def initial_from_settings(cls) -> dict[str, Any]:
        policy = configured_policy()
        return {
            "keep_revisions": policy.keep_revisions,
            "max_age_days": round(Decimal(policy.max_age) / DAY, 2) if policy.max_age else None,
            "max_size_gb": round(Decimal(policy.max_size) / GB, 3) if policy.max_size else None,
        }

    def policy(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "keep_revisions": data.get("keep_revisions"),
            "max_age": float(data["max_age_days"]) * DAY if data.get("max_age_days") else None,
            "max_size": int(data["max_size_gb"] * GB) if data.get("max_size_gb") else None,
        }


class CredentialForm(PagesForm):
    name = forms.CharField(max_length=100, help_text="A name for you, e.g. “personal” or “work org”.")
    token = forms.CharField(
        label="Hugging Face token",
        max_length=500,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="A read token from huggingface.co/settings/tokens. Stored encrypted; shown only as hf_****abcd.",
    )

    def __init__(self, *args: Any, owner, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        # Its own ids: the settings page also holds the API key form, which has a `name` field too.
        kwargs.setdefault("auto_id", "credential_%s")
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if HubCredential.objects.filter(owner=self.owner, name=name).exists():
            raise forms.ValidationError("You already have a token with this name.")
        return name


class ApiKeyForm(PagesForm):
    name = forms.CharField(max_length=100, help_text="The tool or machine that will use it, e.g. “laptop”.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "key_%s")
        super().__init__(*args, **kwargs)


class GenerationDefaultsForm(PagesForm):
    """What a new chat starts with; blank top p and max tokens mean off and the rest of the context."""

    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=DEFAULT_GENERATION["temperature"])
    top_p = forms.FloatField(
        label="Top p",
        min_value=0.0,
        max_value=1.0,
        required=False,
        initial=DEFAULT_GENERATION["top_p"],
        widget=forms.NumberInput(attrs={"placeholder": "off", "step": "0.01"}),
    )
    max_tokens = forms.IntegerField(
        label="Max new tokens",
        min_value=1,
        max_value=10_000_000,
        required=False,
        initial=DEFAULT_GENERATION["max_tokens"],
        widget=forms.NumberInput(attrs={"placeholder": "rest of the context"}),
    )
    system_prompt = forms.CharField(
        label="System prompt", required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 3})
    )
