"""Celery tasks for the maintenance queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, shared_task
from celery.signals import worker_ready
from django.conf import settings

log = logging.getLogger(__name__)

# --- Several machines -----------------------------------------------------------------------------------------


@shared_task(name="maintenance.on_every_node", ignore_result=True)
def on_every_node(task_name: str, kind: str = "maintenance") -> list[str]:
    """Beat runs once for the whole cluster, but a cache reconcile or cleanup works on one machine's disk and
    an idle-model unload on one machine's memory: send the task to every machine's own queue of that kind
    (the shared queue when no worker reads a node queue: one machine, workers started by hand)."""
    from models_app.services import workers

    queues = workers.node_queues(kind) or [workers.SHARED_QUEUE[kind]]
    for queue in queues:
        current_app.send_task(task_name, queue=queue)
    return queues


# --- downloads ------------------------------------------------------------------------------------------------


@shared_task(name="maintenance.reap_jobs")
def reap_jobs() -> list[int]:
    """Requeue or fail download jobs whose worker stopped beating; remove orphaned partial files."""
    from models_app.services.jobs import reap_stalled_jobs

    return reap_stalled_jobs()


# --- Cache maintenance: thin adapters over models_app.services.{reconcile,updates,cleanup} ---------------------


@shared_task(name="maintenance.reconcile_cache")
def reconcile_cache() -> dict[str, Any]:
    from models_app.services.reconcile import reconcile_cache as reconcile

    report = reconcile()
    if report.imported or report.marked_missing or report.restored or report.partials_removed:
        log.info(
            "reconcile: imported %s, marked missing %s, restored %s, partial files removed %s, unchanged %d",
            report.imported, report.marked_missing, report.restored, report.partials_removed, report.unchanged,
        )  # fmt: skip
    if report.imported_repo_ids:
        # Imported repos start private until the Hub says otherwise: ask it now rather than in six hours.
        check_updates.delay(repo_ids=report.imported_repo_ids)
    return report.as_json()


@shared_task(name="maintenance.check_updates")
def check_updates(repo_ids: list[str] | None = None) -> dict[str, Any]:
    from models_app.services.updates import check_updates as check

    results = check(repo_ids=repo_ids)
    return {
        "checked": len(results),
        "updates": [r.repo_id for r in results if r.update_available],
        "errors": {r.repo_id: r.error_code for r in results if r.error_code},
    }


@shared_task(name="maintenance.clean_cache")
def clean_cache() -> dict[str, Any] | None:
    """The retention policy from settings; nothing at all unless an age or a size limit is configured."""
    from models_app.services.cleanup import clean_cache as clean
    from models_app.services.cleanup import configured_policy

    policy = configured_policy()
    if not policy.limits_anything:
        return None
    plan = clean(**policy.as_kwargs(), dry_run=False)
    if plan.deleted or plan.skipped:
        log.info(
            "cache cleanup: freed %d bytes (%d items), skipped %s",
            plan.bytes_freed, len(plan.deleted), plan.skipped,
        )  # fmt: skip
    return {"freed": plan.bytes_freed, "deleted": len(plan.deleted), "skipped": plan.skipped}


@worker_ready.connect
def reconcile_on_worker_start(sender: Any, **_kwargs: Any) -> None:
    """A worker that maintains the cache starts by requeueing this machine's download jobs whose process
    died with the worker it replaces (their pids are gone: no need to wait DOWNLOAD_HEARTBEAT_TIMEOUT, and
    their partial files are resumed), then by indexing the cache: models pulled by other tools while it was
    down appear, and rows whose files went away are flagged."""
    from models_app.services.workers import node_queue

    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()}
    # With several machines, both must run where the processes and the cache are: on this node's own queue
    # if the worker has one (a worker reading only that queue maintains its machine too).
    own = node_queue("maintenance", settings.NODE_NAME)
    if "maintenance" not in queues and own not in queues:
        return
    queue = own if own in queues else "maintenance"
    reap_jobs.apply_async(queue=queue)
    reconcile_cache.apply_async(queue=queue)
