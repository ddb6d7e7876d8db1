"""Pulling models from the Hub into the HF cache (DESIGN.md, "Downloads").

Web side: `download_model` validates, creates or joins the one active job for (repo, revision, node) and
enqueues its task after commit. Worker side: `run_download` claims the job, resolves the revision to a
commit, checks disk space and that mlx-lm can load the repo, fetches the small files together (hub_batch) and
the rest with snapshot_download, with a progress hook, verifies every file, and only then marks the snapshot ready and moves the ref. The job row ends in exactly
one final state; the plaintext token lives only inside `run_download`."""

from __future__ import annotations

import glob
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from models_app.models import DownloadJob, HubCredential, Repository, Snapshot
from models_app.services import (
    hub_batch,
    hub_checks,
    hub_guard,
    hub_resume,
    hub_tree,
    jobs,
    mirrors,
    model_markers,
    nodes,
    shared_store,
    visibility,
    workers,
)
from models_app.services.cache_layout import FileRecord, context_length, repo_path
from models_app.services.errors import (
    AUTH_REQUIRED,
    INTEGRITY,
    INTERNAL,
    INVALID_REQUEST,
    NETWORK,
    NO_NODE_WITH_ROOM,
    NOT_FOUND,
    PULL_IN_PROGRESS,
    UNKNOWN_NODE,
    DownloadCancelled,
    DownloadError,
    classify,
)
from models_app.services.hub_progress import JobLost, JobMonitor, install_http_guard, progress_bar_class
from models_app.services.validation import (
    no_match_error,
    repo_and_revision,
    unmatched_patterns,
    validate_allow_patterns,
)
from models_app.services.xet import install_xet_guard

log = logging.getLogger(__name__)

MAX_WORKERS = 8  # parallel files, as snapshot_download's default
BACKOFF_MAX = 30.0

State = DownloadJob.State


# --- Web side ---------------------------------------------------------------------------------------------


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
    raises DownloadError. `node="any"`: the live machine with room for it (one metadata call to plan it); the
    returned job's `node_choice` then says which and why (empty otherwise)."""
    repo_id, revision = repo_and_revision(repo_id, revision)
    cache = _check_cache(cache or "default")
    patterns = validate_allow_patterns(allow_patterns)
    credential = _credential_for(credential, user)
    repo = _hub_repository(repo_id, user)
    node_choice = ""
    if node == nodes.ANY_NODE:
        node, node_choice = _pick_node(
            repo_id, revision, credential=credential, cache=cache, patterns=patterns
        )
    node = _check_node(node)
    job, created = _join_or_create(
        repo,
        revision=revision,
        node=node,
        cache=cache,
        credential=credential,
        user=user,
        force=force,
        patterns=patterns,
    )
    if created:
        jobs.publish_state(job)
        job_id = job.id
        transaction.on_commit(lambda: jobs.enqueue_or_fail(job_id))
    job.node_choice = node_choice
    return job


def _check_cache(cache: str) -> str:
    if cache not in settings.CACHE_ROOTS:
        known = ", ".join(sorted(settings.CACHE_ROOTS))
        raise DownloadError(INVALID_REQUEST, f"Unknown cache root {cache!r}.", action=f"Use one of: {known}.")
    return cache


def _credential_for(credential: HubCredential | None, user: Any) -> HubCredential | None:
    """The credential a pull uses: the one named, if the user may use it; else the user's default."""
    if credential is not None and user is not None and credential.owner_id != user.pk and not user.is_staff:
        raise PermissionDenied("That Hub credential belongs to someone else.")
    if credential is None:
        from models_app.services.credentials import default_credential

        # A pull that names no token uses the one its user marked default (their first, unless changed).
        credential = default_credential(user)
    return credential


def _hub_repository(repo_id: str, user: Any) -> Repository:
    # Private to whoever asks first (staff-only without a user) until the Hub shows it to an anonymous caller:
    # the pull may fail, and files of this repo may still arrive by another tool (visibility.py).
    repo, _ = Repository.objects.get_or_create(
        repo_id=repo_id, defaults={"private": True, "owner": user if getattr(user, "pk", None) else None}
    )
    if repo.kind != Repository.Kind.HUB:
        raise DownloadError(
            INVALID_REQUEST, f"{repo_id} is a locally registered model, not a Hub repository."
        )
    return repo


def _join_or_create(
    repo: Repository,
    *,
    revision: str,
    node: str,
    cache: str,
    credential: HubCredential | None,
    user: Any,
    force: bool,
    patterns: list[str] | None,
) -> tuple[DownloadJob, bool]:
    """The active job of (repo, revision, node), which the user may join, or a new one; and whether it is
    new. Raises DownloadError(PULL_IN_PROGRESS) when another user's pull holds it."""
    while True:
        active = DownloadJob.objects.active().filter(repository=repo, revision=revision, node=node).first()
        if active is not None:
            if not _may_join(active, user):
                raise DownloadError(
                    PULL_IN_PROGRESS,
                    f"{repo.repo_id}@{revision} is being downloaded for another user right now.",
                )
            return active, False
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
        return job, True


def _pick_node(
    repo_id: str, revision: str, *, credential: HubCredential | None, cache: str, patterns: list[str] | None
) -> tuple[str, str]:
    """A pull to "any" machine: the plan (one metadata call to the Hub) picks the live machine whose cache
    root has room, and says why. Raises DownloadError (no_node_with_room, or the Hub's own refusal)."""
    from models_app.services import plan

    chosen = plan.plan_pull(
        repo_id, revision, credential=credential, cache=cache, allow_patterns=patterns, node=nodes.ANY_NODE
    )
    if not chosen.node:
        raise DownloadError(NO_NODE_WITH_ROOM, chosen.node_reason, repo_id=repo_id)
    return chosen.node, chosen.node_reason


def _may_join(job: DownloadJob, user: Any) -> bool:
    """Joining shows the job's commit, files and progress, and hands over its files. Allowed to staff (and
    the system: no user), to the job's requester, to anyone for a job without a token (it fetches only what
    anyone can), and to whoever may see the repo (public, or theirs). Not to another user while the owner of
    a private or gated repo pulls it with a token."""
    if user is None or user.is_staff or job.credential_id is None:
        return True
    if job.requested_by_id is not None and job.requested_by_id == user.pk:
        return True
    return Repository.objects.visible_to(user).filter(id=job.repository_id).exists()


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
    hub_resume.install()
    hub_tree.install()
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
        return shared_store.present(repo_path(_cache_root(job), job.repository.repo_id))
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
            _cleanup_partial(job)
            _discard_failed_pull(job, before)
            # Stop the watcher first: no progress message may follow the final state message.
            monitor.stop()
            jobs.fail(job.id, task_id=task_id, error=error)
            log.info("download job %s ended %s: %s", job.id, error.code, error.message)
            return
        monitor.stop()
        jobs.succeed(job.id, task_id=task_id, snapshot_id=snapshot.id)
        _cleanup_partial(job)  # what no transfer resumed (a file the new revision no longer has)
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
    error = classify(
        exc, job.repository.repo_id, has_token=job.credential_id is not None, revision=job.revision
    )
    if error.code in (AUTH_REQUIRED, NOT_FOUND) and job.credential_id is not None:
        from models_app.services.credentials import label

        credential = HubCredential.objects.filter(id=job.credential_id).first()
        if credential is not None:  # which token was refused, by name and masked form
            used = f" The pull used the token {label(credential)}."
            return DownloadError(error.code, error.message + used, repo_id=job.repository.repo_id)
    return error


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
    """Once the job has ended: remove this repo's *.incomplete files unless another active job may write or
    resume them. huggingface_hub deletes its temp file on an exception; this catches what a crash left
    behind. Not between attempts: the next one resumes those files (hub_resume)."""
    try:
        root = _cache_root(job)
    except DownloadError:
        return
    repo_dir = repo_path(root, job.repository.repo_id)
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
        repo_dir = repo_path(_cache_root(job), job.repository.repo_id)
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


@dataclass(frozen=True)
class _Pull:
    """What every step of one attempt needs: the job, its watcher, where its files go, how to ask the Hub."""

    job: DownloadJob
    monitor: JobMonitor
    root: Path
    repo_dir: Path
    token: str | None
    stall: float  # seconds: huggingface_hub's metadata timeouts

    @property
    def repo_id(self) -> str:
        return self.job.repository.repo_id

    @property
    def hub_token(self) -> str | bool:
        """As huggingface_hub takes it: False, not None, so it never falls back to a token of its own."""
        return self.token or False


def _attempt(job: DownloadJob, monitor: JobMonitor) -> Snapshot:
    """One try at the whole pull: plan, check, fetch config.json, transfer, verify, save the snapshot."""
    root = _cache_root(job)
    pull = _Pull(
        job=job,
        monitor=monitor,
        root=root,
        repo_dir=repo_path(root, job.repository.repo_id),
        token=_token(job),
        stall=float(settings.DOWNLOAD_STALL_TIMEOUT),
    )
    sha, all_files = _repo_files(pull)
    files, wanted = _wanted_files(pull, all_files)
    config_spec = [f for f in all_files if f.path == "config.json"]
    checked_ok = _drop_known_bad(job, sha, pull.repo_dir, all_files, wanted | {"config.json"}, monitor)
    needed = _check_room(pull, sha, files)
    # Listed before config.json is fetched: hf_hub_download then takes its metadata from the listing (hub_tree).
    entries = hub_batch.listing(_hub_api(), pull.repo_id, sha, pull.repo_dir, token=pull.hub_token)
    config = _fetch_config(pull, sha, config_spec)
    transferred = _transfer(pull, sha, files, needed, entries)
    _verify_transfer(pull, sha, files, checked_ok, transferred=transferred)
    monitor.check()
    # config.json was fetched and verified first whatever the patterns: the snapshot holds it.
    held = files + [f for f in config_spec if f.path not in wanted]
    snapshot = _save_snapshot(job, sha, held, config, [f.path for f in all_files])
    hub_checks.write_ref(pull.repo_dir, job.revision, sha)
    if snapshot.status == Snapshot.Status.READY:
        # The update the last check found is now here: no "update available" until the Hub moves again.
        Repository.objects.filter(id=job.repository.id, remote_sha=sha, update_available=True).update(
            update_available=False, update_summary={}, updated_at=timezone.now()
        )
    return snapshot


def _hub_api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.HF_ENDPOINT)


def _repo_files(pull: _Pull) -> tuple[str, list[FileRecord]]:
    """The commit the job's revision names, and every file of the repo at that commit: from the model info, or
    from the tree listing when a mirror's model info has no file metadata."""
    job, repo_id = pull.job, pull.repo_id
    api = _hub_api()
    info = api.model_info(
        repo_id, revision=job.revision, files_metadata=True, token=pull.hub_token, timeout=pull.stall
    )
    sha = hub_guard.check_commit(info.sha, repo_id=repo_id)  # it names folders and is stored: checked first
    pull.monitor.check()
    _record_visibility(job.repository, info, token_used=bool(pull.token), user_id=job.requested_by_id)
    all_files = hub_checks.plan_files(info.siblings or [])
    if sha and mirrors.lacks_file_metadata(info.siblings or []):
        all_files = mirrors.files_from_tree(
            api, repo_id, revision=sha, token=pull.hub_token, check=pull.monitor.check
        )
    return sha, all_files


def _wanted_files(pull: _Pull, all_files: list[FileRecord]) -> tuple[list[FileRecord], set[str]]:
    """The files the job's patterns select, and their paths. Refuses patterns that match nothing and a repo
    mlx-lm cannot load (judged on all its files)."""
    from huggingface_hub.utils import filter_repo_objects

    paths = [f.path for f in all_files]
    wanted = set(filter_repo_objects(paths, allow_patterns=pull.job.allow_patterns))
    if unmatched := unmatched_patterns(pull.job.allow_patterns, paths):
        raise no_match_error(pull.repo_id, unmatched, paths)
    if problem := hub_checks.mlx_file_problem(paths):
        raise hub_checks.not_mlx(pull.repo_id, problem)
    return [f for f in all_files if f.path in wanted], wanted


def _check_room(pull: _Pull, sha: str, files: list[FileRecord]) -> int:
    """The bytes still to fetch, checked against the free disk, and recorded on the job with its commit."""
    job = pull.job
    needed = sum(f.size for f in files if job.force or not (pull.repo_dir / "blobs" / f.etag).is_file())
    hub_checks.check_disk(pull.root, needed=needed, reserve=int(settings.DOWNLOAD_DISK_RESERVE))
    jobs.update_running(
        job.id,
        task_id=pull.monitor.task_id,
        commit_sha=sha,
        bytes_total=needed,
        files_total=len(files),
        bytes_done=0,
        files_done=0,
    )
    return needed


def _fetch_config(pull: _Pull, sha: str, config_spec: list[FileRecord]) -> dict[str, Any] | None:
    """config.json first (a few kB), verified and read, so a repo mlx-lm cannot load is refused before the
    weights come down."""
    from huggingface_hub import hf_hub_download

    repo_id = pull.repo_id
    try:
        hub_guard.check_metadata_size("config.json", config_spec[0].size if config_spec else None)
        with hub_guard.metadata_download("config.json"):
            config_path = hf_hub_download(
                repo_id,
                "config.json",
                revision=sha,
                cache_dir=pull.root,
                token=pull.hub_token,
                endpoint=settings.HF_ENDPOINT,
                etag_timeout=pull.stall,
            )
    except hub_guard.MetadataError as exc:
        raise hub_checks.not_mlx(repo_id, exc.reason) from None
    _check_inside(pull.repo_dir, [Path(config_path)], repo_id)
    # Checked before it is parsed: corrupted bytes are an integrity error (and their blob is deleted so the
    # next pull fetches it again), not a repo that "is not MLX" for as long as the bad blob stays cached.
    if problems := hub_checks.verify_files(
        pull.repo_dir, sha, config_spec, check=pull.monitor.check, just_written=True
    ):
        raise hub_checks.integrity_error(repo_id, problems)
    try:
        config = hub_guard.read_metadata(Path(config_path), "config.json")
    except hub_guard.MetadataError as exc:
        raise hub_checks.not_mlx(repo_id, exc.reason) from None
    except (OSError, ValueError):
        config = None
    if problem := hub_checks.mlx_config_problem(config):
        raise hub_checks.not_mlx(repo_id, problem)
    return config


def _transfer(pull: _Pull, sha: str, files: list[FileRecord], needed: int, entries: dict[str, Any]) -> float:
    """The wanted files, their progress reported through the monitor: the small ones fetched together
    (hub_batch), the rest (big, Xet, or a blob another process is writing) by snapshot_download. Returns when
    the bytes were in (time.perf_counter)."""
    job, monitor = pull.job, pull.monitor
    monitor.etag_names = {f.etag: f.path for f in files}
    monitor.begin_download(bytes_total=needed, files_total=len(files))
    batch = hub_batch.Batch(
        repo_id=pull.repo_id,
        sha=sha,
        root=pull.root,
        repo_dir=pull.repo_dir,
        token=pull.hub_token,
        endpoint=settings.HF_ENDPOINT,
        monitor=monitor,
        force=job.force,
    )
    done = hub_batch.fetch(batch, hub_batch.small_files(files, entries))
    if rest := [f for f in files if f.path not in done]:
        _snapshot_download(pull, sha, rest)
    monitor.end_download()
    transferred = time.perf_counter()
    _check_inside(pull.repo_dir, [pull.repo_dir / "snapshots" / sha], pull.repo_id)
    jobs.update_running(job.id, task_id=monitor.task_id, bytes_done=needed, files_done=len(files))
    return transferred


def _snapshot_download(pull: _Pull, sha: str, files: list[FileRecord]) -> None:
    """snapshot_download of exactly `files` (already the job's patterns' choice), each path as a pattern
    that matches only itself."""
    from huggingface_hub import snapshot_download

    snapshot_dir = snapshot_download(
        pull.repo_id,
        revision=sha,
        cache_dir=pull.root,
        token=pull.hub_token,
        endpoint=settings.HF_ENDPOINT,
        force_download=pull.job.force,
        allow_patterns=[glob.escape(f.path) for f in files],
        tqdm_class=progress_bar_class(pull.monitor),
        max_workers=MAX_WORKERS,
        etag_timeout=pull.stall,
    )
    _check_inside(pull.repo_dir, [Path(snapshot_dir)], pull.repo_id)


def _verify_transfer(
    pull: _Pull,
    sha: str,
    files: list[FileRecord],
    checked_ok: Callable[[FileRecord, Path], bool],
    *,
    transferred: float,
) -> None:
    """Every file hashed against the Hub's checksums, but those verified before and not rewritten since. A
    failure marks the commit's snapshot invalid."""
    job = pull.job
    before = hub_checks.verified_before(job.repository_id, node=job.node, cache_root=job.cache_root)

    def skip(spec: FileRecord, blob: Path) -> bool:
        return before(spec, blob) or checked_ok(spec, blob)

    problems = hub_checks.verify_files(
        pull.repo_dir, sha, files, skip=skip, check=pull.monitor.check, just_written=True
    )
    if problems:
        Snapshot.objects.filter(
            repository=job.repository, commit_sha=sha, node=job.node, cache_root=job.cache_root
        ).update(status=Snapshot.Status.INVALID, verified_at=timezone.now())
        raise hub_checks.integrity_error(pull.repo_id, problems)
    # Read by make bench (bench/downloads.py): the target is <= 0.1 s per GB once the bytes are in.
    log.info(
        "download job %s: verified %d file(s), %d B, in %.3f s after the transfer",
        job.id,
        len(files),
        sum(f.size for f in files),
        time.perf_counter() - transferred,
    )


def _check_inside(repo_dir: Path, paths: list[Path], repo_id: str) -> None:
    """Defence in depth: the transport refuses answers that would become paths outside the repo folder; if
    one got through anyway, nothing pointing outside is kept or trusted."""
    if outside := hub_guard.outside_paths(repo_dir, paths):
        for entry in outside:
            # Our links go; whatever they point at is not ours to delete.
            if entry.is_symlink() and entry.absolute().is_relative_to(repo_dir.absolute()):
                entry.unlink(missing_ok=True)
        names = ", ".join(repr(e.name[:80]) for e in outside[:3])
        raise DownloadError(
            INTEGRITY,
            f"Refused {repo_id}: the Hub's answers made huggingface_hub link outside the repo's folder ({names}).",
            repo_id=repo_id,
        )


def _drop_known_bad(
    job: DownloadJob,
    sha: str,
    repo_dir: Path,
    files: list[FileRecord],
    fetching: set[str],
    monitor: JobMonitor,
) -> Callable[[FileRecord, Path], bool]:
    """A snapshot that failed verification (invalid or missing) holds files huggingface_hub would trust as
    cached: check them now and delete the bad ones, so this pull fetches them again in one go instead of
    failing `integrity` and leaving the repair to the next pull. Returns a skip rule for the final check:
    the files that passed here and were not rewritten since."""
    known_bad = Snapshot.objects.filter(
        repository=job.repository,
        commit_sha=sha,
        node=job.node,
        cache_root=job.cache_root,
        status__in=[Snapshot.Status.INVALID, Snapshot.Status.MISSING],
    ).exists()
    if not known_bad or job.force:  # force fetches every file anyway
        return lambda spec, blob: False
    started = time.time()
    bad = hub_checks.verify_files(repo_dir, sha, files, check=monitor.check)
    # Every file of the commit is checked, not only the ones this pull selects: a corrupt file outside its
    # patterns is deleted too, so the record (which keeps only files on disk) cannot call it sound.
    refetch = sorted(path for path, why in bad.items() if path in fetching and why != "missing")
    if refetch:
        names = ", ".join(refetch[:5]) + (f" (and {len(refetch) - 5} more)" if len(refetch) > 5 else "")
        note = f"The snapshot failed verification: fetching {len(refetch)} file(s) again: {names}."
        log.info("download job %s: %s", job.id, note)
        jobs.update_running(job.id, task_id=monitor.task_id, error_message=note)
    sound = {f.etag for f in files if f.path not in bad}

    def checked(spec: FileRecord, blob: Path) -> bool:
        return spec.etag in sound and blob.name == spec.etag and blob.stat().st_mtime < started

    return checked


def _record_visibility(repo: Repository, info: Any, *, token_used: bool, user_id: int | None) -> None:
    """As seen on the Hub (a "public" seen through a token is checked again without one). The first user to
    pull a private or gated repo owns its row: the cache is shared and huggingface_hub serves cached files to
    anyone, so the app enforces who may see it. A row that a failed pull left to its requester passes to the
    user whose token now reads it, as long as no files of it are indexed yet."""
    visibility.record(repo, private=info.private, gated=info.gated, token_used=token_used)
    if user_id is None:
        return
    hidden = Repository.objects.filter(Q(private=True) | Q(gated=True), id=repo.id)
    hidden.filter(owner__isnull=True).update(owner_id=user_id)
    if token_used:
        owners_pull = DownloadJob.objects.filter(
            repository_id=OuterRef("id"),
            requested_by_id=OuterRef("owner_id"),
            state__in=[*DownloadJob.ACTIVE_STATES, State.SUCCEEDED],
        )
        hidden.exclude(owner_id=user_id).exclude(Exists(owners_pull)).exclude(snapshots__isnull=False).update(
            owner_id=user_id
        )


def _held_record(
    job: DownloadJob, sha: str, snapshot_dir: Path, files: list[FileRecord]
) -> list[dict[str, Any]]:
    """The snapshot's file list after this pull: what it fetched and verified, plus what an earlier pull of
    the same commit recorded and is still on disk. A filtered pull adds files; it never drops any."""
    record = {f.path: f.as_json() for f in files}
    earlier = (
        Snapshot.objects.filter(
            repository=job.repository, commit_sha=sha, node=job.node, cache_root=job.cache_root
        )
        .values_list("files", flat=True)
        .first()
    )
    for entry in earlier or []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path not in record and (snapshot_dir / path).is_file():
            record[path] = entry
    return [record[path] for path in sorted(record)]


def _save_snapshot(
    job: DownloadJob, sha: str, files: list[FileRecord], config: dict[str, Any], repo_paths: list[str]
) -> Snapshot:
    now = timezone.now()
    path = repo_path(_cache_root(job), job.repository.repo_id) / "snapshots" / sha
    record = _held_record(job, sha, path, files)
    missing = hub_checks.mlx_missing([e["path"] for e in record], repo_paths, path)
    values = {
        "ref": "" if job.revision == sha else job.revision,
        "path": str(path),
        "size_bytes": sum(int(e.get("size") or 0) for e in record),
        "files": record,
        # Chat-able only with everything mlx-lm needs; a filtered pull of part of a model says what is missing.
        "status": Snapshot.Status.PARTIAL if missing else Snapshot.Status.READY,
        "missing_files": missing,
        "model_type": str(config.get("model_type") or "")[:64],
        "context_length": context_length(config),
        # Written here, by the worker that has the files: the API reads them from the row on any machine.
        "markers": model_markers.read_markers(path),
        "downloaded_at": now,
        "verified_at": now,
    }
    snapshot, _ = Snapshot.objects.update_or_create(
        repository=job.repository, commit_sha=sha, node=job.node, cache_root=job.cache_root, defaults=values
    )
    return snapshot
