"""`manage.py pull` end to end: the real download worker, the local Hub, then mlx-lm on the result."""

from __future__ import annotations

import re
from io import StringIO

import mlx_lm
import pytest
from django.core.management import CommandError, call_command

from devkit.processes import wait_for
from devkit.tinymodel import tiny_model_files
from models_app.models import DownloadJob
from models_app.services.cache import delete_model, get_model_path
from tests.downloads.conftest import wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]


def test_pull_waits_for_the_worker_with_a_progress_bar(hub, new_repo_id, tiny_model_path) -> None:
    repo_id = new_repo_id("pulled")
    sha = hub.create_repo(repo_id, tiny_model_files(tiny_model_path))
    out = StringIO()

    call_command("pull", repo_id, "--timeout", "120", stdout=out)

    text = out.getvalue()
    job = DownloadJob.objects.get(repository__repo_id=repo_id)
    assert text.startswith(f"Job {job.id}: {repo_id}@main (queued)")
    assert "[##############################] 100.0%" in text
    assert f"Pulled {repo_id}@main ({sha[:8]}) into " in text
    path = get_model_path(repo_id)
    assert path.name == sha
    _model, tokenizer = mlx_lm.load(str(path))
    assert tokenizer.encode("hi")
    delete_model(repo_id)  # the session cache is shared: leave it as found


def test_pull_exits_non_zero_with_the_code_message_and_action(hub, new_repo_id) -> None:
    with pytest.raises(CommandError) as info:
        call_command("pull", new_repo_id("absent"), "--timeout", "60", stdout=StringIO())

    assert info.value.returncode == 2
    message = str(info.value)
    assert message.startswith("not_found: ") and "was not found" in message
    assert "\n  -> Check the repository id" in message


def test_pull_refuses_bad_input_before_queueing(hub) -> None:
    with pytest.raises(CommandError, match="invalid_repo_id"):
        call_command("pull", "not a repo", stdout=StringIO())
    with pytest.raises(CommandError, match="credential_not_found"):
        call_command("pull", "org/name", "--credential", "nope", stdout=StringIO())
    assert not DownloadJob.objects.exists()


def test_pull_no_wait_only_queues(hub, new_repo_id, tiny_model_path) -> None:
    repo_id = new_repo_id("queued")
    hub.create_repo(repo_id, tiny_model_files(tiny_model_path))
    out = StringIO()

    call_command("pull", repo_id, "--no-wait", stdout=out)

    job = DownloadJob.objects.get(repository__repo_id=repo_id)
    assert out.getvalue() == f"Job {job.id}: {repo_id}@main (queued)\n"
    assert wait_job(job, timeout=60).state == DownloadJob.State.SUCCEEDED
    delete_model(repo_id)


def test_the_maintenance_worker_reconciled_the_cache_when_it_started(download_worker) -> None:
    def reconciled() -> bool:
        return (
            re.search(r"Task maintenance\.reconcile_cache\[[0-9a-f-]+\] succeeded", download_worker.log())
            is not None
        )

    wait_for(reconciled, 30, "the worker did not run maintenance.reconcile_cache at start")
