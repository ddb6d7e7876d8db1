"""The Celery app. Its configuration is the CELERY_* names in dashboard/settings.py (beat schedule included)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutdown
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

QUEUES = ("downloads", "maintenance", "inference")

# tasks/ is not a Django app, so autodiscovery would not see it: list the modules.
app = Celery("dashboard", include=["tasks.downloads", "tasks.maintenance", "tasks.inference"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in QUEUES]


@worker_ready.connect
def _announce_worker(sender, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    # Imported late: this module loads before Django's apps are ready.
    from models_app.services import workers

    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    workers.start_presence(hostname=sender.hostname, queues=queues)


@worker_shutdown.connect
def _retire_worker(sender, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import workers

    workers.stop_presence()


@task_prerun.connect
@task_postrun.connect
def _tidy_database_connections(sender=None, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    # As Django does around a request: close this thread's connections that are past DATABASE_CONN_MAX_AGE or
    # fail their health check (a restarted database), keep the others (CELERY_DB_REUSE_MAX in settings). Not
    # for a task run eagerly: it runs inside its caller's transaction (as Celery's own fixup skips it).
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
