"""Download jobs: a state machine whose row is the truth the pages render."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class DownloadJobQuerySet(models.QuerySet["DownloadJob"]):
    def active(self) -> DownloadJobQuerySet:
        return self.filter(state__in=DownloadJob.ACTIVE_STATES)

    def visible_to(self, user) -> DownloadJobQuerySet:  # type: ignore[no-untyped-def]
        return self if user.is_staff else self.filter(requested_by=user)


class DownloadJob(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)
    FINAL_STATES = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    repository = models.ForeignKey("Repository", on_delete=models.CASCADE, related_name="jobs")
    revision = models.CharField(max_length=200, default="main")
    node = models.CharField(max_length=200)
    cache_root = models.CharField(max_length=32, default="default")
    credential = models.ForeignKey(
        "HubCredential", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="download_jobs",
    )
    force = models.BooleanField(default=False)
    allow_patterns = models.JSONField(null=True, blank=True)

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    commit_sha = models.CharField(max_length=40, blank=True)
    snapshot = models.ForeignKey(
        "Snapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_done = models.IntegerField(default=0)
    files_total = models.IntegerField(default=0)
    current_file = models.CharField(max_length=500, blank=True)
    speed_bps = models.FloatField(default=0)
    attempts = models.IntegerField(default=0)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # When the current task message was sent: the reaper re-sends a queued job's task only after a long
    # silence (a Redis restart without persistence loses queued messages; duplicates are harmless no-ops).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(
        max_length=200, blank=True, help_text="Celery hostname of the worker running it"
    )
    # The process running the job (set by the claim): on the same machine, a pid that is gone proves the owner
    # dead at once, without waiting DOWNLOAD_HEARTBEAT_TIMEOUT for its heartbeat to go stale.
    owner_host = models.CharField(max_length=255, blank=True)
    owner_pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DownloadJobQuerySet.as_manager()
    # Not stored: set by hub.download_model on a pull to "any" machine, which it picked and why.
    node_choice = ""

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Concurrent pulls of one (repo, revision, node) attach to the same job: the database decides.
            models.UniqueConstraint(
                fields=["repository", "revision", "node"],
                condition=Q(state__in=["queued", "running"]),
                name="one_active_job_per_repo_revision_node",
            )
        ]

    def __str__(self) -> str:
        return f"{self.repository.repo_id}@{self.revision} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.state != self.State.RUNNING or self.speed_bps <= 0 or not self.bytes_total:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.speed_bps)
