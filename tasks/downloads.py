"""Celery tasks for the downloads queue."""

from __future__ import annotations

import importlib
import threading

from celery import shared_task
from celery.signals import worker_process_init


# acks_late + reject_on_worker_lost (also the settings' defaults): a worker killed mid-download gives the
# message back; run_download's conditional claim makes the redelivery safe.
@shared_task(name="downloads.download", bind=True, acks_late=True, reject_on_worker_lost=True)
def download(self, job_id: int) -> None:  # type: ignore[no-untyped-def]
    from models_app.services.hub import run_download

    run_download(int(job_id), task_id=self.request.id, worker_name=self.request.hostname or "")


@worker_process_init.connect
def _preload_mlx_lm(**_kwargs: object) -> None:
    # The MLX-model check imports mlx_lm, which imports transformers: ~2.4 s (make bench, py-spy). Pay it when
    # a pool process starts rather than inside a user's first pull; a pull that comes sooner waits on the
    # import lock for what is left.
    threading.Thread(target=importlib.import_module, args=("mlx_lm.utils",), daemon=True).start()
