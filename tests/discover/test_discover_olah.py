"""Discover through olah, the open-source Hub mirror (a dev dependency), offline (serving git repos) and online
(proxying our local Hub). olah serves no model listing: its `/api/models` is an empty 200 offline and a 401
RepoNotFound online (it takes "api/models" for a repo). Search says so plainly (never "your token was
refused"); a repo known by name is still checked through it (model info by revision, safetensors headers)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.processes import ManagedProcess, wait_for
from devkit.redis_server import free_port
from models_app.services import discover, discover_details
from models_app.services.credentials import create_credential
from models_app.services.discover import DiscoverError

pytestmark = pytest.mark.django_db


def weights(n: int) -> bytes:
    header = json.dumps({"w": {"dtype": "U32", "shape": [n], "data_offsets": [0, n * 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (n * 4)


FILES = {
    "config.json": json.dumps(
        {"model_type": "llama", "quantization": {"bits": 4, "group_size": 64}}
    ).encode(),
    "model.safetensors": weights(300),
}


def start_olah(root: Path, log_dir: Path, *, upstream: str = "", mirrored: str = "") -> ManagedProcess:
    """olah on a free port: offline serving `mirrored` from a git repo, or online in front of `upstream`."""
    port = free_port()
    lines = [
        "[basic]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'mirror-netloc = "127.0.0.1:{port}"',
        f'mirror-lfs-netloc = "127.0.0.1:{port}"',
        f'repos-path = "{root / "repos"}"',
    ]
    if mirrored:
        folder = root / "mirrors" / "models" / mirrored
        folder.mkdir(parents=True)
        for name, content in FILES.items():
            (folder / name).write_bytes(content)
        git = ["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "import"], check=True)
        lines.append(f'mirrors-path = ["{root / "mirrors"}"]')
    else:
        netloc = upstream.split("://", 1)[1]
        lines += ['hf-scheme = "http"', f'hf-netloc = "{netloc}"', f'hf-lfs-netloc = "{netloc}"']
    lines += ["", "[accessibility]", f"offline = {'true' if mirrored else 'false'}"]
    (root / "olah.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "olah.toml").write_text("\n".join(lines) + "\n")
    argv = [
        sys.executable,
        "-m",
        "olah.server",
        "-c",
        str(root / "olah.toml"),
        "--log-path",
        str(root / "logs"),
    ]
    process = ManagedProcess(argv, {}, log_dir / f"olah-discover-{port}.log")
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return process


def wait_ready(process: ManagedProcess, repo_id: str) -> None:
    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"olah exited:\n{process.log()[-3000:]}")
        try:
            url = f"{process.url}/api/models/{repo_id}/revision/main"  # type: ignore[attr-defined]
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except OSError:
            return False

    wait_for(ready, 60, f"olah not ready:\n{process.log()[-3000:]}", interval=0.2)


@pytest.fixture(params=["offline", "online"])
def through_olah(request, hub, tmp_path, process_log_dir, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The repo id of a 4-bit MLX model served through olah; settings.HF_ENDPOINT is olah."""
    repo_id = f"mlx-test/Olah{uuid.uuid4().hex[:8]}-4bit"
    if request.param == "online":
        hub.create_repo(repo_id, FILES, info={"tags": ["mlx"]})
        process = start_olah(tmp_path / "olah", process_log_dir, upstream=hub.url)
    else:
        process = start_olah(tmp_path / "olah", process_log_dir, mirrored=repo_id)
    try:
        wait_ready(process, repo_id)
        settings.HF_ENDPOINT = process.url  # type: ignore[attr-defined]
        settings.DISCOVER_TIMEOUT = 20
        yield repo_id
    finally:
        process.stop()


def test_search_through_olah_says_it_serves_no_listing(through_olah, alice, hub) -> None:
    word = through_olah.split("/")[1][:12]
    with pytest.raises(DiscoverError) as caught:
        discover.search(word)
    assert caught.value.code == "unavailable" and "serves no model listing" in caught.value.message
    # With a token too: olah's 401 is its "no such repo", not the Hub refusing the token.
    hub.add_token("hf_olahtoken", "alice")
    discover.cache.delete(discover._outage_key())
    with pytest.raises(DiscoverError) as caught:
        discover.search(word, credentials=[create_credential(owner=alice, name="o", token="hf_olahtoken")])
    assert caught.value.code == "unavailable" and "olah" in caught.value.message


def test_a_repo_known_by_name_is_checked_through_olah(through_olah) -> None:
    result = discover_details.details(through_olah)
    # 300 U32 elements: 1200 bytes of weights; 4-bit packs 8 values in each.
    assert result.hub.weights_bytes == 1200 and result.hub.parameters == 2400
    assert result.hub.quantization == "4-bit" and result.verdict == "green"
