"""register_local_model: staff register a directory under LOCAL_MODEL_ROOTS, never anything outside it."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from models_app.models import Repository, Snapshot
from models_app.selectors.snapshots import model_list
from models_app.services.cache import ModelNotFound, delete_model, get_model_path, has_model
from models_app.services.cleanup import clean_cache
from models_app.services.local_models import LocalModelError, register_local_model
from models_app.services.reconcile import reconcile_cache
from models_app.services.verify import verify_model
from tests.cache.conftest import model_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def roots(tmp_path: Path, settings, cache_root) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path / "converted"
    outside = tmp_path / "elsewhere"
    for base in (root, outside):
        base.mkdir()
    settings.LOCAL_MODEL_ROOTS = {"converted": root}
    return {"root": root, "outside": outside}


def _model_dir(parent: Path, name: str = "my-model", files: dict[str, bytes] | None = None) -> Path:
    directory = parent / name
    directory.mkdir(parents=True)
    for rel, data in (files or model_files(name)).items():
        (directory / rel).write_bytes(data)
    return directory


def test_staff_register_a_directory_under_a_configured_root(roots, staff) -> None:
    directory = _model_dir(roots["root"])

    snapshot = register_local_model("my-model", directory, user=staff)

    assert snapshot.status == Snapshot.Status.READY
    assert snapshot.repository.kind == Repository.Kind.LOCAL
    assert snapshot.repository.repo_id == "my-model"
    assert snapshot.path == str(directory.resolve())
    assert snapshot.cache_root == "converted"
    assert len(snapshot.commit_sha) == 40 and snapshot.model_type == "llama"
    assert sorted(f["path"] for f in snapshot.files) == sorted(model_files("my-model"))
    assert all(len(f["sha256"]) == 64 for f in snapshot.files)
    assert get_model_path("my-model") == directory.resolve()
    assert [(m.repo_id, m.kind) for m in model_list(user=None)] == [("my-model", "local")]
    assert verify_model(snapshot).ok
    # The same contents registered again are the same snapshot.
    assert register_local_model("my-model", directory, user=staff).id == snapshot.id


def test_new_contents_under_the_same_name_replace_the_old_registration(roots, staff) -> None:
    directory = _model_dir(roots["root"])
    first = register_local_model("my-model", directory, user=staff)
    (directory / "config.json").write_text('{"model_type": "llama", "retrained": true}')

    second = register_local_model("my-model", directory, user=staff)

    assert second.commit_sha != first.commit_sha
    first.refresh_from_db()
    assert first.status == Snapshot.Status.DELETED
    assert get_model_path("my-model") == directory.resolve()


def test_a_directory_in_a_subfolder_of_the_root_is_accepted(roots, staff) -> None:
    directory = _model_dir(roots["root"] / "team" / "v2", "m")

    assert register_local_model("team-m", directory, user=staff).path == str(directory.resolve())


@pytest.mark.parametrize("how", ["outside", "symlink", "dotdot", "symlink-root-file"])
def test_it_refuses_anything_that_resolves_outside_the_roots(roots, staff, how) -> None:
    target = _model_dir(roots["outside"])
    if how == "outside":
        path: Path | str = target
    elif how == "symlink":
        path = roots["root"] / "link"
        path.symlink_to(target, target_is_directory=True)
    elif how == "dotdot":
        path = f"{roots['root']}/../elsewhere/my-model"
    else:
        # A directory inside the root whose weights are a symlink to a file outside it.
        inside = _model_dir(roots["root"], "sneaky")
        (inside / "model.safetensors").unlink()
        (inside / "model.safetensors").symlink_to(target / "model.safetensors")
        path = inside

    with pytest.raises(LocalModelError, match="not inside a local model root"):
        register_local_model("evil", path, user=staff)
    assert not Repository.objects.filter(repo_id="evil").exists()


def test_it_refuses_when_no_root_is_configured(roots, staff, settings) -> None:
    settings.LOCAL_MODEL_ROOTS = {}
    with pytest.raises(LocalModelError, match="No local model roots"):
        register_local_model("my-model", _model_dir(roots["root"]), user=staff)


def test_it_refuses_what_mlx_lm_cannot_load(roots, staff) -> None:
    files = model_files("x")
    del files["model.safetensors"]
    directory = _model_dir(roots["root"], files=files)
    with pytest.raises(LocalModelError, match="safetensors"):
        register_local_model("my-model", directory, user=staff)

    files = model_files("y", **{"config.json": b'{"model_type": "no_such_arch"}'})
    directory = _model_dir(roots["root"], "other", files=files)
    with pytest.raises(LocalModelError, match="no_such_arch"):
        register_local_model("other", directory, user=staff)


@pytest.mark.parametrize("name", ["org/name", "", "../x", ".hidden", "a b", "x" * 97])
def test_it_refuses_bad_names(roots, staff, name) -> None:
    with pytest.raises(LocalModelError, match="not a valid local model name"):
        register_local_model(name, _model_dir(roots["root"]), user=staff)


def test_only_staff_may_register(roots, alice) -> None:
    with pytest.raises(LocalModelError, match="Only staff"):
        register_local_model("my-model", _model_dir(roots["root"]), user=alice)


def test_a_name_taken_by_a_hub_repo_is_refused(roots, staff) -> None:
    Repository.objects.create(repo_id="gpt2")
    with pytest.raises(LocalModelError, match="already a Hub repository"):
        register_local_model("gpt2", _model_dir(roots["root"]), user=staff)


def test_cleanup_never_touches_a_local_model_and_rm_only_unregisters_it(roots, staff) -> None:
    directory = _model_dir(roots["root"])
    snapshot = register_local_model("my-model", directory, user=staff)
    Snapshot.objects.filter(id=snapshot.id).update(
        downloaded_at=timezone.now() - timedelta(days=400), last_used_at=timezone.now() - timedelta(days=400)
    )

    plan = clean_cache(max_age=1, max_size=0, keep_revisions=1, dry_run=False)

    assert plan.items == []
    assert (directory / "model.safetensors").is_file()
    removed = delete_model("my-model")
    assert removed.files_kept and removed.bytes_freed == 0
    assert (directory / "model.safetensors").is_file()


def test_reconcile_flags_a_local_model_whose_directory_went_away(roots, staff) -> None:
    directory = _model_dir(roots["root"])
    register_local_model("my-model", directory, user=staff)
    shutil.rmtree(directory)

    report = reconcile_cache()

    assert len(report.marked_missing) == 1 and report.marked_missing[0].startswith("my-model@")


def test_a_root_removed_from_the_settings_no_longer_serves_the_model(roots, staff, settings) -> None:
    register_local_model("my-model", _model_dir(roots["root"]), user=staff)
    settings.LOCAL_MODEL_ROOTS = {}
    with pytest.raises(ModelNotFound, match="cannot be served: No local model roots"):
        get_model_path("my-model")
    assert not has_model("my-model")


def test_the_root_itself_may_be_a_symlink(tmp_path, settings, staff, cache_root) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "link-root").symlink_to(real, target_is_directory=True)
    settings.LOCAL_MODEL_ROOTS = {"converted": tmp_path / "link-root"}
    directory = _model_dir(tmp_path / "link-root")

    assert register_local_model("my-model", directory, user=staff).path == str(real / "my-model")
    assert os.path.realpath(get_model_path("my-model")) == str(real / "my-model")
