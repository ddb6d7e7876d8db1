"""Celery tasks for the downloads queue."""

from __future__ import annotations

from celery import shared_task


# acks_late + reject_on_worker_lost (also the settings' defaults): a worker killed mid-download gives the
# message back; run_download's conditional claim makes the redelivery safe.
@shared_task(name="downloads.download", bind=True, acks_late=True, reject_on_worker_lost=True)
def download(self, job_id: int) -> None:  # type: ignore[no-untyped-def]
    from models_app.services.hub import run_download

    run_download(int(job_id), task_id=self.request.id, worker_name=self.request.hostname or "")
