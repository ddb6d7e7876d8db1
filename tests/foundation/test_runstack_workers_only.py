"""`manage.py runstack --workers-only`: a further machine of a cluster runs its own two workers, no web server and
no beat (one beat per cluster), and only against the cluster's Redis. The two-node proof starts its workers with
these same queues (tests/reliability/test_two_nodes.py)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from dashboard.stack import plan


def test_a_further_machine_runs_only_its_two_workers_on_the_shared_and_its_own_queues() -> None:
    services = plan(host="0.0.0.0", port=8000, node="mini-2", workers_only=True)

    assert [s.name for s in services] == ["downloads", "inference"]
    queues = {s.name: s.argv[s.argv.index("-Q") + 1] for s in services}
    assert queues == {
        "downloads": "downloads,maintenance,node.mini-2",
        "inference": "inference,inference.mini-2",
    }
    assert {s.name for s in plan(host="0.0.0.0", port=8000, node="studio")} == {
        "web",
        "downloads",
        "inference",
        "beat",
    }


def test_it_refuses_to_start_without_the_clusters_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)

    with pytest.raises(SystemExit) as refused:
        call_command("runstack", "--workers-only")

    assert "REDIS_URL" in str(refused.value.code)
