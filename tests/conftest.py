"""Shared fixtures: users, the local Hub, the tiny model, and real worker/server processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_var_dir() -> Path:
    return Path(settings.VAR_DIR)


# --- Markers -----------------------------------------------------------------------------------------------

# Every fixture that starts a worker, a server or a mirror builds on one of these (the subprocesses' environment
# and their log directory), so a test that uses them, however indirectly, starts processes. A test that starts
# one in its own body says so with @pytest.mark.processes (or a module's pytestmark).
PROCESS_FIXTURES = {"stack_env", "process_log_dir"}


RELIABILITY_DIR = ROOT / "tests" / "reliability"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `processes` every test that starts real processes, so `make test-fast` can leave them out, and
    `reliability` every test under tests/reliability (the rule pytest_ignore_collect relies on)."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)
        if RELIABILITY_DIR in item.path.parents:
            item.add_marker(pytest.mark.reliability)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not even import tests/reliability when -m leaves every reliability test out (CI's PostgreSQL run,
    `make test-fast`): its schemathesis modules build their examples at import, about half a minute per
    process, for tests that would all be deselected."""
    if collection_path == RELIABILITY_DIR and not _selects_reliability(config.option.markexpr):
        return True
    return None


def _selects_reliability(markexpr: str) -> bool:
    """Whether the -m expression can select a test marked `reliability`, whatever its other markers."""
    if not markexpr:
        return True
    from itertools import product

    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    others = ("browser", "processes", "django_db")
    for values in product((False, True), repeat=len(others)):
        marked = {"reliability", *(name for name, on in zip(others, values, strict=True) if on)}
        if expression.evaluate(marked.__contains__):
            return True
    return False


# --- Redis -------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_prefix(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Keys of this test's own in the shared Redis (presence, catalog version, slots), deleted after it."""
    import uuid

    from models_app.services import redis as app_redis

    settings.REDIS_PREFIX = f"mlxcr-test-{uuid.uuid4().hex[:8]}"
    yield settings.REDIS_PREFIX
    client = app_redis.client()
    keys = list(client.scan_iter(f"{settings.REDIS_PREFIX}:*"))
    if keys:
        client.delete(*keys)


# --- Users -------------------------------------------------------------------------------------------------


@pytest.fixture
def alice(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-password")


@pytest.fixture
def bob(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-password")


@pytest.fixture
def staff(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def alice_client(client, alice):  # type: ignore[no-untyped-def]
    client.force_login(alice)
    return client


# --- The local Hub and the tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from devkit.localhub import LocalHub

    hub = LocalHub(tmp_path_factory.mktemp("hub-storage")).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(local_hub, settings):  # type: ignore[no-untyped-def]
    """The local Hub, with this process's services pointed at it and its faults cleared after the test."""
    settings.HF_ENDPOINT = local_hub.url
    yield local_hub
    local_hub.faults.clear()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from devkit.tinymodel import tiny_model_dir

    return tiny_model_dir(ROOT / "var" / "test" / "models")


# --- Real processes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def process_log_dir(test_var_dir: Path) -> Path:
    path = test_var_dir / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def stack_env(django_db_setup, local_hub) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for subprocesses: the test database, the private Redis, the local Hub."""
    from devkit.processes import child_env

    return child_env(HF_ENDPOINT=local_hub.url)


@pytest.fixture(scope="session")
def download_worker(stack_env, process_log_dir) -> Iterator:  # type: ignore[no-untyped-def]
    """A real Celery worker on the downloads and maintenance queues (prefork, like `make run`)."""
    from devkit.processes import start_worker

    worker = start_worker(
        name=f"dl-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}",
        queues="downloads,maintenance",
        concurrency=2,
        env=stack_env,
        log_dir=process_log_dir,
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def inference_worker(stack_env, process_log_dir) -> Iterator:  # type: ignore[no-untyped-def]
    """A real Celery worker on the inference queue (a threads pool feeding the engine's batch loop, like
    `make run`)."""
    from django.conf import settings

    from devkit.processes import start_worker

    worker = start_worker(
        name=f"inf-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}",
        queues="inference",
        pool="threads",
        concurrency=settings.INFERENCE_SLOTS,
        env=stack_env,
        log_dir=process_log_dir,
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def asgi_server(stack_env, process_log_dir) -> Iterator:  # type: ignore[no-untyped-def]
    """The real ASGI app under uvicorn, on a free port."""
    from devkit.processes import AsgiServer

    server = AsgiServer(env=stack_env, log_dir=process_log_dir).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _end_stray_postgres_sessions(django_db_setup, django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses to drop a test database while anything is connected to it, and the connections that
    database_sync_to_async threads (consumers, async views) opened in this process outlive their tests. Set up
    after the database, this is torn down just before pytest-django drops it: end those sessions first."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _unguarded_hub_client() -> Iterator[None]:
    """A product Hub call installs the HTTP guard process-wide (hub_progress.install_http_guard): it refuses
    every origin but HF_ENDPOINT's. Tests that drive huggingface_hub against a Hub of their own get the
    library's own client back after each test."""
    yield
    from models_app.services.hub_progress import uninstall_http_guard

    uninstall_http_guard()


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Iterator[None]:
    """Channels keeps one layer object per process, and channels_redis binds that object's receive lock to the
    event loop that receives first. Every test runs its own loop (asyncio.run, the test client's async views),
    so a receive that an earlier test's loop abandoned mid-flight leaves the next test's consumers a lock that
    belongs to a dead loop ("bound to a different event loop"), and they hang. Each test gets a new layer."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _no_requests_in_flight() -> None:
    """Leases of requests in flight live in Redis for up to inflight.LEASE_SECONDS, and user and key ids repeat
    between tests (each test's database starts empty): an earlier test's leases must not count here, nor its
    requests still waiting in an inference queue's line (a place in line counts them)."""
    import redis

    from models_app.services import redis as app_redis

    try:
        client = app_redis.client()
        stale = [
            *client.scan_iter(app_redis.key("inflight", "*")),
            *client.scan_iter(app_redis.key("inference", "queued", "*")),
        ]
        if stale:
            client.delete(*stale)
    except redis.RedisError:
        pass  # a test that stopped Redis: nothing to clear
