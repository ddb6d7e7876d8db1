"""Repositories and their snapshots: the index of what lies in the Hugging Face cache."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from models_app.services.catalog import CatalogQuerySet


class RepositoryQuerySet(CatalogQuerySet["Repository"]):
    def visible_to(self, user) -> RepositoryQuerySet:  # type: ignore[no-untyped-def]
        """The cache is shared and huggingface_hub serves cached files to anyone, so access is ours to
        enforce: a private or gated repo is visible to its owner and to staff only."""
        if user.is_staff:
            return self
        return self.filter(Q(private=False, gated=False) | Q(owner=user))


class Repository(models.Model):
    class Kind(models.TextChoices):
        HUB = "hub", "Hugging Face Hub"
        LOCAL = "local", "Local directory"

    repo_id = models.CharField(
        max_length=200, unique=True, help_text="org/name on the Hub, or a local model name"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.HUB)
    private = models.BooleanField(default=False, help_text="As last seen on the Hub")
    gated = models.BooleanField(default=False, help_text="As last seen on the Hub")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="repositories",
    )
    # Update check: the remote head of the tracked revision, and what changed versus the newest local snapshot.
    remote_sha = models.CharField(max_length=40, blank=True)
    remote_checked_at = models.DateTimeField(null=True, blank=True)
    update_available = models.BooleanField(default=False)
    update_summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RepositoryQuerySet.as_manager()

    class Meta:
        ordering = ["repo_id"]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return self.repo_id

    @property
    def hub_url(self) -> str:
        from huggingface_hub import constants

        return f"{constants.ENDPOINT}/{self.repo_id}"


class SnapshotQuerySet(CatalogQuerySet["Snapshot"]):
    def ready(self) -> SnapshotQuerySet:
        return self.filter(status=Snapshot.Status.READY)

    def on_up_nodes(self) -> SnapshotQuerySet:
        """Without the snapshots of machines that are down (their workers stopped heartbeating): those are
        not offered for chat, the API or pulls until the machine is back (nodes.py)."""
        from models_app.services.nodes import down_nodes

        down = down_nodes()
        return self.exclude(node__in=down) if down else self

    def visible_to(self, user) -> SnapshotQuerySet:  # type: ignore[no-untyped-def]
        if user.is_staff:
            return self
        return self.filter(Q(repository__private=False, repository__gated=False) | Q(repository__owner=user))


class Snapshot(models.Model):
    """One commit of a repo in one cache root on one node. `path` is always computed by the app from the
    cache layout, never taken from user input."""

    class Status(models.TextChoices):
        DOWNLOADING = "downloading", "Downloading"
        READY = "ready", "Ready"
        # Holds some files (a filtered pull) but not everything mlx-lm needs: listed in missing_files.
        PARTIAL = "partial", "Partial"
        INVALID = "invalid", "Failed verification"
        MISSING = "missing", "Files missing"
        DELETED = "deleted", "Deleted"

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="snapshots")
    commit_sha = models.CharField(max_length=40)
    ref = models.CharField(
        max_length=200, blank=True, help_text="The revision it was pulled as (main, a tag...)"
    )
    node = models.CharField(max_length=200)
    cache_root = models.CharField(max_length=32, default="default")
    path = models.CharField(max_length=1024, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    files = models.JSONField(default=list, blank=True, help_text="[{path, size, blob_id, sha256?}]")
    missing_files = models.JSONField(
        default=list, blank=True, help_text="What mlx-lm needs that a partial snapshot does not hold"
    )
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.DOWNLOADING, db_index=True
    )
    model_type = models.CharField(max_length=64, blank=True)
    context_length = models.IntegerField(null=True, blank=True)
    # What the OpenAI API needs to split a reply into content, reasoning and tool calls (the chat template's
    # markers, `models_app.openai.parsing.Markers`), computed by the worker that has the files when the snapshot
    # becomes ready: the web server may run on another machine. Null: not computed yet (answers are plain text).
    markers = models.JSONField(null=True, blank=True)
    downloaded_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["repository__repo_id", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "commit_sha", "node", "cache_root"],
                name="one_snapshot_per_commit_node_root",
            )
        ]

    def __str__(self) -> str:
        return f"{self.repository.repo_id}@{self.commit_sha[:8]}"

    @property
    def short_sha(self) -> str:
        return self.commit_sha[:8]
