"""The beat schedule: every entry names a task the workers know, and what works on one machine's disk or
memory is fanned out to every node (beat itself runs once per cluster)."""

from __future__ import annotations

from django.conf import settings

from dashboard.celery import app
from models_app.services import workers

PER_NODE = {"maintenance.reconcile_cache", "maintenance.clean_cache", "inference.expire_idle"}


def test_every_entry_names_a_registered_task_and_per_node_work_is_fanned_out() -> None:
    app.loader.import_default_modules()
    fanned_out = set()
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, name
        if entry["task"] == "maintenance.on_every_node":
            task, *kind = entry["args"]
            assert task in app.tasks, name
            assert (kind or ["maintenance"])[0] in workers.SHARED_QUEUE, name
            fanned_out.add(task)
    assert fanned_out == PER_NODE
    # The idle-model unload is sent out from an inference worker, not queued behind downloads.
    unload = settings.CELERY_BEAT_SCHEDULE["unload-idle-models"]
    assert unload["options"]["queue"] == "inference"
