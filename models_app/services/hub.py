"""Pulling models from the Hub into the HF cache (DESIGN.md, "Downloads").

Web side: `download_model` validates, creates or joins the one active job for (repo, revision, node) and
enqueues its task after commit. Worker side: `run_download` claims the job, resolves the revision to a
commit, checks disk space and that mlx-lm can load the repo, runs snapshot_download with a progress hook,
verifies every file, and only then marks the snapshot ready and moves the ref. The job row ends in exactly
one final state; the plaintext token lives only inside `run_download`."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone

from models_app.models import DownloadJob, HubCredential, Repository, Snapshot
from models_app.services import hub_checks, jobs, mirrors, shared_store, workers
from models_app.services.errors import (
    AUTH_REQUIRED,
    INTERNAL,
    INVALID_REQUEST,
    NETWORK,
    UNKNOWN_NODE,
    DownloadCancelled,
    DownloadError,
    classify,
)
from models_app.services.hub_checks import FileSpec, repo_dir_path
from models_app.services.hub_progress import JobLost, JobMonitor, install_http_guard, progress_bar_class
from models_app.services.validation import validate_repo_id, validate_revision
from models_app.services.xet import install_xet_guard

log = logging.getLogger(__name__)

MAX_WORKERS = 8  # parallel files, as snapshot_download's default
MAX_PATTERNS = 50
BACKOFF_MAX = 30.0

State = DownloadJob.State


# --- Web side ---------------------------------------------------------------------------------------------


def _check_patterns(allow_patterns: list[str] | str | None) -> list[str] | None:
    if allow_patterns is None or allow_patterns == []:
        return None
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
    if (
        not isinstance(patterns, list | tuple)
        or len(patterns) > MAX_PATTERNS
        or not all(
            isinstance(p, str) and 0 < len(p) <= 200 and p.isascii() and p.isprintable() for p in patterns
        )
    ):
        raise DownloadError(
            INVALID_REQUEST, f"allow_patterns must be up to {MAX_PATTERNS} short ASCII glob patterns."
        )
    return list(patterns)


def _check_node(node: str | None) -> str:
    """This machine, or another one whose download worker is running (it reads `node.<name>`)."""
    if node in (None, "", settings.NODE_NAME):
        return settings.NODE_NAME
    known = workers.node_names("downloads")
    if node not in known:
        names = ", ".join(known) or settings.NODE_NAME
        raise DownloadError(
            UNKNOWN_NODE,
            f"No download worker is running on node {node!r}.",
            action=f"Start the workers on that machine (make run there), or pick one of: {names}.",
        )
    return node


def download_model(
    repo_id: str,
    revision: str = "main",
    *,
    credential: HubCredential | None = None,
    cache: str | None = None,
    force: bool = False,
    allow_patterns: list[str] | None = None,
    user: Any = None,
    node: str | None = None,
) -> DownloadJob:
    """Queue a pull of repo_id@revision into the cache root named `cache` of machine `node` (default: this
    one), or join the active job for the same (repo, revision, node). Validates everything before any I/O;
    raises DownloadError."""
    repo_id = validate_repo_id(repo_id)
    revision = validate_revision(revision)
    cache = cache or "default"
    if cache not in settings.CACHE_ROOTS:
        known = ", ".join(sorted(settings.CACHE_ROOTS))
        raise DownloadError(INVALID_REQUEST, f"Unknown cache root {cache!r}.", action=f"Use one of: {known}.")
    patterns = _check_patterns(allow_patterns)
    if credential is not None and user is not None and credential.owner_id != user.pk and not user.is_staff:
        raise PermissionDenied("That Hub credential belongs to someone else.")

    repo, _ = Repository.objects.get_or_create(repo_id=repo_id)
    if repo.kind != Repository.Kind.HUB:
        raise DownloadError(
            INVALID_REQUEST, f"{repo_id} is a locally registered model, not a Hub repository."
        )
    node = _check_node(node)
    while True:
        active = DownloadJob.objects.active().filter(repository=repo, revision=revision, node=node).first()
        if active is not None:
            return active
        try:
            # The partial unique constraint decides between concurrent callers; the savepoint keeps an outer
            # transaction usable after the loser's IntegrityError.
            with transaction.atomic():
                job = DownloadJob.objects.create(
                    repository=repo,
                    revision=revision,
                    node=node,
                    cache_root=cache,
                    credential=credential,
                    requested_by=user if getattr(user, "pk", None) else None,
                    force=force,
                    allow_patterns=patterns,
                )
        except IntegrityError:
            continue  # someone else created it a moment ago: join theirs (loop, in case it already ended)
        break
    jobs.publish_state(job)
    job_id = job.id
    transaction.on_commit(lambda: jobs.enqueue_or_fail(job_id))
    return job


def cancel_job(job: DownloadJob, *, by: Any = None) -> DownloadJob:
    """Cancel a queued or running job; a finished job is returned unchanged."""
    if job.state in DownloadJob.FINAL_STATES:
        return job
    who = getattr(by, "get_username", lambda: "")()
    jobs.request_cancel(job.id, message=f"Cancelled by {who}." if who else "Cancelled.")
    job.refresh_from_db()
    return job


def retry_job(job: DownloadJob) -> DownloadJob:
    """Pull a failed, cancelled (or finished) job again as a new job; an active job is returned as is."""
    if job.is_active:
        return job
    return download_model(
        job.repository.repo_id,
        job.revision,
        credential=job.credential,
        cache=job.cache_root,
        force=job.force,
        allow_patterns=job.allow_patterns,
        user=job.requested_by,
    )


# --- Worker side ------------------------------------------------------------------------------------------


def run_download(job_id: int, *, task_id: str, worker_name: str) -> None:
    """Run one delivery of the download task. A duplicate delivery, a finished job, or a job a live worker
    holds is a no-op."""
    close_old_connections()
    job = jobs.claim(job_id, task_id=task_id, worker_name=worker_name)
    if job is None:
        return
    install_http_guard()
    install_xet_guard()
    monitor = JobMonitor(
        job_id=job.id,
        task_id=task_id,
        repo_id=job.repository.repo_id,
        revision=job.revision,
        owner_id=job.requested_by_id,
    ).start()
    try:
        _run_attempts(job, monitor, task_id, before=_cache_before(job))
    finally:
        monitor.stop()


def _cache_before(job: DownloadJob) -> frozenset[str]:
    """What the repo folder holds before this delivery writes anything: a failed pull leaves it alone."""
    try:
        return shared_store.present(repo_dir_path(_cache_root(job), job.repository.repo_id))
    except DownloadError:
        return frozenset()


def _run_attempts(
    job: DownloadJob, monitor: JobMonitor, task_id: str, *, before: frozenset[str] = frozenset()
) -> None:
    attempts = job.attempts
    while True:
        try:
            snapshot = _attempt(job, monitor)
        except JobLost:
            log.warning("download job %s was taken over by another worker; stopping", job.id)
            return
        except BaseException as exc:
            if not isinstance(exc, Exception) and not _is_soft_time_limit(exc):
                raise  # worker shutdown: the reaper requeues the job
            error = _error_for(exc, job, monitor)
            if isinstance(error, JobLost):
                return  # its partial files now belong to the job's new owner
            _cleanup_partial(job)
            if error.code == INTERNAL:
                log.error("download job %s failed unexpectedly", job.id, exc_info=exc)
            if error.retryable and attempts < settings.DOWNLOAD_MAX_ATTEMPTS:
                delay = min(BACKOFF_MAX, 2.0 ** (attempts - 1)) + random.uniform(0, 0.5)
                log.info("download job %s: %s; retrying in %.1f s", job.id, error.message, delay)
                if not jobs.note_retry(job.id, task_id=task_id, error=error, delay=delay):
                    return
                attempts += 1
                monitor.clear_abort()  # a stall abort ended that attempt, not the job
                try:
                    monitor.sleep(delay)
                except JobLost:
                    return
                except DownloadCancelled as cancelled:
                    error = cancelled
                else:
                    continue
            _discard_failed_pull(job, before)
            # Stop the watcher first: no progress message may follow the final state message.
            monitor.stop()
            jobs.fail(job.id, task_id=task_id, error=error)
            log.info("download job %s ended %s: %s", job.id, error.code, error.message)
            return
        monitor.stop()
        jobs.succeed(job.id, task_id=task_id, snapshot_id=snapshot.id)
        log.info("download job %s succeeded: %s@%s", job.id, job.repository.repo_id, snapshot.short_sha)
        return


def _is_soft_time_limit(exc: BaseException) -> bool:
    return type(exc).__name__ == "SoftTimeLimitExceeded"


def _error_for(exc: BaseException, job: DownloadJob, monitor: JobMonitor) -> DownloadError | JobLost:
    """The error to record. A cancel or a lost job wins over whatever the abort surfaced as."""
    aborted = monitor.aborted
    if isinstance(aborted, JobLost | DownloadCancelled):
        return aborted
    if _is_soft_time_limit(exc):
        return DownloadError(
            NETWORK,
            f"The download took longer than DOWNLOAD_TIME_LIMIT ({settings.DOWNLOAD_TIME_LIMIT:.0f} s).",
            retryable=False,
        )
    return classify(exc, job.repository.repo_id, has_token=job.credential_id is not None)


def _cache_root(job: DownloadJob) -> Path:
    try:
        return Path(settings.CACHE_ROOTS[job.cache_root])
    except KeyError:
        raise DownloadError(
            INVALID_REQUEST, f"The cache root {job.cache_root!r} is not configured on this node."
        ) from None


def _token(job: DownloadJob) -> str | None:
    if job.credential_id is None:
        return None
    from models_app.services.credentials import CredentialError, credential_token

    credential = HubCredential.objects.filter(id=job.credential_id).first()
    if credential is None:
        raise DownloadError(AUTH_REQUIRED, "The Hub credential of this job was deleted.")
    try:
        return credential_token(credential)
    except CredentialError:
        raise DownloadError(
            AUTH_REQUIRED,
            "The stored Hub token cannot be decrypted (CREDENTIALS_KEY changed): enter it again.",
        ) from None


def _cleanup_partial(job: DownloadJob) -> None:
    """Remove this repo's *.incomplete files unless another live job writes to the same repo folder.
    huggingface_hub deletes its temp file on an exception; this catches what a crash left behind."""
    try:
        root = _cache_root(job)
    except DownloadError:
        return
    repo_dir = repo_dir_path(root, job.repository.repo_id)
    if repo_dir.name not in jobs.busy_repo_dirs(exclude_job=job.id):
        jobs.remove_incomplete(repo_dir)


def _discard_failed_pull(job: DownloadJob, before: frozenset[str]) -> None:
    """A pull that ends cancelled or failed leaves nothing behind: files it finished, their shared Xet store
    entries, its snapshot folder (which reconcile would otherwise import, and which takes space nobody sees).
    Files another snapshot of the repo uses stay; so does everything while another live job writes there or
    when this commit is already a ready snapshot (a forced re-pull that failed), and what the folder held before
    this delivery began (another tool's download of the same commit; after a worker crash, what the earlier
    delivery fetched)."""
    sha = DownloadJob.objects.filter(id=job.id).values_list("commit_sha", flat=True).first() or ""
    try:
        repo_dir = repo_dir_path(_cache_root(job), job.repository.repo_id)
    except DownloadError:
        return
    if not sha or not repo_dir.is_dir() or repo_dir.name in jobs.busy_repo_dirs(exclude_job=job.id):
        return
    ready = Snapshot.objects.filter(
        repository=job.repository,
        commit_sha=sha,
        node=job.node,
        cache_root=job.cache_root,
        status=Snapshot.Status.READY,
    )
    if ready.exists():
        return
    try:
        discarded = shared_store.discard_pull(repo_dir, sha, keep=before)
    except OSError as exc:  # never let the cleanup hide the job's own error
        log.warning("download job %s: could not remove its files: %s", job.id, exc)
        return
    if discarded.files:
        log.info("download job %s: removed %d B it had written", job.id, discarded.freed)


def _attempt(job: DownloadJob, monitor: JobMonitor) -> Snapshot:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    repo = job.repository
    repo_id = repo.repo_id
    root = _cache_root(job)
    repo_dir = repo_dir_path(root, repo_id)
    token = _token(job)
    stall = float(settings.DOWNLOAD_STALL_TIMEOUT)
    _cleanup_partial(job)  # a killed worker's partial files of this repo

    api = HfApi(endpoint=settings.HF_ENDPOINT)
    info = api.model_info(
        repo_id, revision=job.revision, files_metadata=True, token=token or False, timeout=stall
    )
    sha = info.sha or ""
    monitor.check()
    _record_visibility(repo, private=bool(info.private), gated=bool(info.gated), user_id=job.requested_by_id)
    all_files = hub_checks.plan_files(info.siblings or [])
    if sha and mirrors.lacks_file_metadata(info.siblings or []):
        all_files = mirrors.files_from_tree(
            api, repo_id, revision=sha, token=token or False, check=monitor.check
        )
    wanted = set(filter_repo_objects([f.path for f in all_files], allow_patterns=job.allow_patterns))
    files = [f for f in all_files if f.path in wanted]
    if problem := hub_checks.mlx_file_problem([f.path for f in all_files]):
        raise hub_checks.not_mlx(repo_id, problem)

    needed = sum(f.size for f in files if job.force or not (repo_dir / "blobs" / f.etag).is_file())
    hub_checks.check_disk(root, needed=needed, reserve=int(settings.DOWNLOAD_DISK_RESERVE))
    jobs.update_running(
        job.id,
        task_id=monitor.task_id,
        commit_sha=sha,
        bytes_total=needed,
        files_total=len(files),
        bytes_done=0,
        files_done=0,
    )

    # config.json first (a few kB) so a repo mlx-lm cannot load is refused before the weights come down.
    config_path = hf_hub_download(
        repo_id,
        "config.json",
        revision=sha,
        cache_dir=root,
        token=token or False,
        endpoint=settings.HF_ENDPOINT,
        etag_timeout=stall,
    )
    # Checked before it is parsed: corrupted bytes are an integrity error (and their blob is deleted so the
    # next pull fetches it again), not a repo that "is not MLX" for as long as the bad blob stays cached.
    config_spec = [f for f in all_files if f.path == "config.json"]
    if problems := hub_checks.verify_files(repo_dir, sha, config_spec, check=monitor.check):
        raise hub_checks.integrity_error(repo_id, problems)
    try:
        config = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        config = None
    if problem := hub_checks.mlx_config_problem(config):
        raise hub_checks.not_mlx(repo_id, problem)

    monitor.etag_names = {f.etag: f.path for f in files}
    monitor.begin_download(bytes_total=needed, files_total=len(files))
    snapshot_download(
        repo_id,
        revision=sha,
        cache_dir=root,
        token=token or False,
        endpoint=settings.HF_ENDPOINT,
        force_download=job.force,
        allow_patterns=job.allow_patterns,
        tqdm_class=progress_bar_class(monitor),
        max_workers=MAX_WORKERS,
        etag_timeout=stall,
    )
    monitor.end_download()
    jobs.update_running(job.id, task_id=monitor.task_id, bytes_done=needed, files_done=len(files))

    skip = hub_checks.verified_before(job.repository_id, node=job.node, cache_root=job.cache_root)
    problems = hub_checks.verify_files(repo_dir, sha, files, skip=skip, check=monitor.check)
    if problems:
        Snapshot.objects.filter(
            repository=repo, commit_sha=sha, node=job.node, cache_root=job.cache_root
        ).update(status=Snapshot.Status.INVALID, verified_at=timezone.now())
        raise hub_checks.integrity_error(repo_id, problems)
    monitor.check()
    snapshot = _save_snapshot(job, sha, files, config)
    hub_checks.write_ref(repo_dir, job.revision, sha)
    return snapshot


def _record_visibility(repo: Repository, *, private: bool, gated: bool, user_id: int | None) -> None:
    """As seen on the Hub. The first user to pull a private or gated repo owns its row: the cache is shared
    and huggingface_hub serves cached files to anyone, so the app enforces who may see it."""
    fields: dict[str, Any] = {"private": private, "gated": gated}
    Repository.objects.filter(id=repo.id).update(**fields, updated_at=timezone.now())
    if (private or gated) and user_id is not None:
        Repository.objects.filter(id=repo.id, owner__isnull=True).update(owner_id=user_id)


def _context_length(config: dict[str, Any]) -> int | None:
    for source in (config, config.get("text_config") or {}):
        value = source.get("max_position_embeddings") if isinstance(source, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _save_snapshot(job: DownloadJob, sha: str, files: list[FileSpec], config: dict[str, Any]) -> Snapshot:
    now = timezone.now()
    path = repo_dir_path(_cache_root(job), job.repository.repo_id) / "snapshots" / sha
    values = {
        "ref": "" if job.revision == sha else job.revision,
        "path": str(path),
        "size_bytes": sum(f.size for f in files),
        "files": [f.as_json() for f in files],
        "status": Snapshot.Status.READY,
        "model_type": str(config.get("model_type") or "")[:64],
        "context_length": _context_length(config),
        "downloaded_at": now,
        "verified_at": now,
    }
    snapshot, _ = Snapshot.objects.update_or_create(
        repository=job.repository, commit_sha=sha, node=job.node, cache_root=job.cache_root, defaults=values
    )
    return snapshot
