"""1. Downloads: the same bytes from the same local hub, through the whole product and through plain readers.

Product: `POST /api/v1/pulls` with an API key, then `GET /api/v1/pulls/{id}` every 50 ms until the job has
succeeded (the worker resolves the revision, plans, checks disk and the MLX config, downloads with
snapshot_download and verifies every file before the snapshot is ready). Its time runs from the POST to the
first poll that sees `succeeded`. The poll that first sees bytes_done == bytes_total marks the end of the
transfer, so the rest is (mostly) verification; hashing the same bytes with hashlib is measured too.

Baselines, each in its own process as the product's worker is: a plain Python reader (urllib, 1 MiB
copies to disk, one file after another) and curl (one process, one connection, the same URLs). A Xet case
(the repo's weights served through the local Hub's Xet CAS, as the real Hub serves them) has no URL to curl:
its baseline is huggingface_hub's own snapshot_download, which hands the file to hf_xet as the product does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Row, Section
from bench.stack import Product

TIMEOUT = 600.0


@dataclass
class Case:
    label: str
    repo_id: str
    sha: str
    files: dict[str, Path]  # repo path -> local source file
    xet: bool = False  # served through the local Hub's Xet CAS

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())

    def urls(self, hub_url: str) -> list[tuple[str, str]]:
        return [(path, f"{hub_url}/{self.repo_id}/resolve/{self.sha}/{path}") for path in sorted(self.files)]


def start_hub(storage: Path) -> Any:
    """The local hub, serving files in place (no copy of the 1 GB file).
    Nagle's algorithm is off on its handler (devkit.localhub), as on the real Hub."""
    from devkit import localhub

    return localhub.LocalHub(storage, copy_files=False).start()


def publish(hub: Any, label: str, repo_id: str, model_dir: Path, *, xet: bool = False) -> Case:
    from bench.models import model_files

    files = model_files(model_dir)
    sha = hub.create_repo(repo_id, files, xet=xet)
    return Case(label, repo_id, sha, files, xet=xet)


# ----------------------------------------------------------------------------- baselines


def _fetch_main(argv: list[str]) -> None:
    """`python -m bench.downloads fetch LIST DEST`: the plain reader, run as its own process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("list", type=Path, help="JSON [[path, url], ...]")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    pairs = json.loads(args.list.read_text())
    started = time.perf_counter()
    total = 0
    for path, url in pairs:
        out = args.dest / path
        out.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(out, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
            total += f.tell()
    print(json.dumps({"seconds": time.perf_counter() - started, "bytes": total}))


def _snapshot_main(argv: list[str]) -> None:
    """`python -m bench.downloads snapshot HUB REPO SHA CACHE`: huggingface_hub alone, as its own process."""
    hub_url, repo_id, sha, cache = argv
    from huggingface_hub import snapshot_download

    started = time.perf_counter()
    path = Path(snapshot_download(repo_id, revision=sha, cache_dir=cache, endpoint=hub_url, token=False))
    seconds = time.perf_counter() - started
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(json.dumps({"seconds": seconds, "bytes": total}))


def raw_snapshot_download(case: Case, hub_url: str, work: Path) -> dict[str, float]:
    cache = work / "raw-hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, "-m", "bench.downloads", "snapshot", hub_url, case.repo_id, case.sha, str(cache)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    if result["bytes"] != case.total_bytes:
        raise RuntimeError(f"snapshot_download got {result['bytes']} bytes, expected {case.total_bytes}")
    return result


def plain_reader(case: Case, hub_url: str, work: Path) -> dict[str, float]:
    dest = work / "plain"
    shutil.rmtree(dest, ignore_errors=True)
    listing = work / "plain-urls.json"
    listing.write_text(json.dumps(case.urls(hub_url)))
    out = subprocess.run(
        [sys.executable, "-m", "bench.downloads", "fetch", str(listing), str(dest)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["bytes"] != case.total_bytes:
        raise RuntimeError(f"plain reader got {result['bytes']} bytes, expected {case.total_bytes}")
    shutil.rmtree(dest, ignore_errors=True)
    return result


def curl(case: Case, hub_url: str, work: Path) -> dict[str, float] | None:
    binary = shutil.which("curl")
    if binary is None:
        return None
    dest = work / "curl"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    # One curl process for every file, through a config file: it reuses its connection, as a script would.
    config = work / "curl.cfg"
    lines = []
    for path, url in case.urls(hub_url):
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        lines += [f'url = "{url}"', f'output = "{dest / path}"']
    config.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    subprocess.run([binary, "-sSf", "-K", str(config)], check=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    shutil.rmtree(dest, ignore_errors=True)
    if got != case.total_bytes:
        raise RuntimeError(f"curl got {got} bytes, expected {case.total_bytes}")
    return {"seconds": seconds, "bytes": got}


def hash_seconds(case: Case) -> float:
    """sha256 of every file, as verification does (the files are in the page cache by now, as the product's
    freshly written blobs are)."""
    started = time.perf_counter()
    for path in case.files.values():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- the product


def _request(method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code} {exc.read()[:500]!r}") from None


def forget(product: Product, case: Case) -> None:
    """Remove the pulled snapshot (files and rows), so the next pull downloads everything again."""
    from models_app.models import Repository

    Repository.objects.filter(repo_id=case.repo_id).delete()
    shutil.rmtree(product.hf_cache / f"models--{case.repo_id.replace('/', '--')}", ignore_errors=True)
    if case.xet:  # Xet bytes live once per cache root in the shared store: only the benchmark's are there
        shutil.rmtree(product.hf_cache / "blobs", ignore_errors=True)


def product_pull(product: Product, case: Case) -> dict[str, Any]:
    forget(product, case)
    return asyncio.run(_watched_pull(product, case))


async def _watched_pull(product: Product, case: Case) -> dict[str, Any]:
    """The pull as the Downloads page sees it: its websocket (ws/downloads/) open first, then the POST, then
    the job's live events until its state is final. Polling GET /api/v1/pulls/{id} every 50 ms (before) added
    up to 50 ms to a pull of 0.2 s, the benchmark's own lag rather than the product's."""
    from websockets.asyncio.client import connect

    async with connect(
        f"{product.ws_url}/ws/downloads/",
        origin=product.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={product.session_cookie}"},
        max_size=None,
    ) as ws:
        snapshot = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        assert snapshot.get("type") == "downloads.snapshot", snapshot
        started = time.perf_counter()
        job = await asyncio.to_thread(
            _request,
            "POST",
            f"{product.url}/api/v1/pulls",
            product.headers(),
            {"repo_id": case.repo_id, "revision": "main"},
        )
        transferred_at: float | None = None
        state = job["state"]
        while state != "succeeded":
            if state in ("failed", "cancelled"):
                raise RuntimeError(f"pull {state}: {job.get('error')}")
            remaining = TIMEOUT - (time.perf_counter() - started)
            if remaining <= 0:
                raise TimeoutError(f"pull of {case.repo_id} still {state} after {TIMEOUT:.0f} s")
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout=remaining))
            if event.get("job_id") != job["id"]:
                continue
            now = time.perf_counter()
            if event.get("type") == "download.progress":
                if (
                    transferred_at is None
                    and event["bytes_total"]
                    and event["bytes_done"] >= event["bytes_total"]
                ):
                    transferred_at = now
            elif event.get("type") == "download.state":
                state = event["state"]
                job["error"] = event.get("error_message")
        seconds = time.perf_counter() - started
    # Progress goes out a few times a second: a pull of 0.2 s may end before any event says its bytes are all
    # in. Then the transfer's end is not known, and neither row that needs it is shown.
    job = await asyncio.to_thread(
        _request, "GET", f"{product.url}/api/v1/pulls/{job['id']}", product.headers()
    )
    return {
        "seconds": seconds,
        "verify_seconds": verify_seconds(product, job["id"]),
        "transfer_seconds": None if transferred_at is None else transferred_at - started,
        "after_transfer_seconds": None if transferred_at is None else started + seconds - transferred_at,
        "bytes": job.get("bytes_total"),
        "files": job.get("files_total"),
        "job": {k: job.get(k) for k in ("id", "created_at", "started_at", "finished_at", "attempts")},
    }


def verify_seconds(product: Product, job_id: int) -> float | None:
    """What the worker logged for this job: the time from the end of the transfer to the end of verification
    (hub.py). None when the line is not there (an older product)."""
    log = product.log_dir / "downloads.log"
    pattern = re.compile(
        rf"download job {job_id}: verified \d+ file\(s\), \d+ B, in ([0-9.]+) s after the transfer"
    )
    try:
        found = pattern.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    return float(found[-1]) if found else None


# ----------------------------------------------------------------------------- the benchmark


def run(
    section: Section,
    *,
    product: Product | None,
    unavailable: str,
    hub_url: str,
    cases: list[Case],
    work: Path,
    rounds: int,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for case in cases:
        mb = case.total_bytes / 1e6
        raw: dict[str, Any] = {
            "bytes": case.total_bytes,
            "files": len(case.files),
            "plain": [],
            "curl": [],
            "product": [],
            "snapshot_download": [],
        }
        section.raw[case.label] = raw
        if case.xet:
            _run_xet(
                section,
                case,
                raw,
                product=product,
                unavailable=unavailable,
                hub_url=hub_url,
                work=work,
                rounds=rounds,
            )
            continue
        # Interleaved rounds: a burst of noise from elsewhere on the machine hits every side alike.
        for _ in range(rounds):
            raw["plain"].append(plain_reader(case, hub_url, work))
            if (result := curl(case, hub_url, work)) is not None:
                raw["curl"].append(result)
            if product is not None:
                raw["product"].append(product_pull(product, case))
        raw["hash_seconds"] = hash_seconds(case)

        def best(side: str, raw: dict[str, Any] = raw) -> float | None:
            runs = raw[side]
            return min(r["seconds"] for r in runs) if runs else None

        plain_s, curl_s, product_s = best("plain"), best("curl"), best("product")
        # The first pull after a worker starts pays its imports: worth seeing beside the best round.
        rounds_text = (
            ", ".join(f"{r['seconds']:.2f}" for r in raw["product"]) + " s" if raw["product"] else "-"
        )
        bench = f"Download: {case.label}"
        if product_s is None:
            section.unavailable(bench, unavailable)
        for name, base_s in (("plain Python reader", plain_s), ("curl", curl_s)):
            if base_s is None:
                continue
            section.add(
                Row(
                    bench,
                    "throughput, MB/s",
                    mb / product_s if product_s else None,
                    mb / base_s,
                    name,
                    target="≥ 0.90",
                    met=(base_s / product_s >= 0.90) if product_s else None,
                    unit="MB/s",
                    note=f"best of {rounds}; product rounds: {rounds_text}",
                )
            )
        if raw["product"]:
            fastest = min(raw["product"], key=lambda r: r["seconds"])
            if (after := fastest["after_transfer_seconds"]) is not None:
                section.add(
                    Row(
                        bench,
                        "seconds after the transfer ended (verify, save)",
                        after,
                        raw["hash_seconds"],
                        "hashlib sha256 of the same bytes",
                        unit="s",
                    )
                )
            _verification_row(section, bench, case, raw)
            if fastest["transfer_seconds"]:
                section.add(
                    Row(
                        bench,
                        "transfer-only throughput, MB/s",
                        mb / fastest["transfer_seconds"],
                        mb / plain_s,
                        "plain Python reader",
                        unit="MB/s",
                        note="POST to bytes_done = total",
                    )
                )


# Below this, a pull's fixed costs (the file checks, the database) dominate any per-GB figure.
VERIFY_ROW_MIN_BYTES = 100_000_000


def _verification_row(section: Section, bench: str, case: Case, raw: dict[str, Any]) -> None:
    verified = [r["verify_seconds"] for r in raw["product"] if r.get("verify_seconds") is not None]
    if not verified or case.total_bytes < VERIFY_ROW_MIN_BYTES:
        return
    gb = case.total_bytes / 1e9
    per_gb = min(verified) / gb
    section.add(
        Row(
            bench,
            "verification after the transfer, s per GB",
            per_gb,
            raw["hash_seconds"] / gb,
            "hashlib sha256 of the same bytes, s per GB",
            target="≤ 0.10 s/GB",
            met=per_gb <= 0.10,
            unit="s/GB",
            note="the worker's own timing: end of snapshot_download to end of verification; best round",
        )
    )


def _run_xet(
    section: Section,
    case: Case,
    raw: dict[str, Any],
    *,
    product: Product | None,
    unavailable: str,
    hub_url: str,
    work: Path,
    rounds: int,
) -> None:
    """The product against huggingface_hub + hf_xet alone. Not interleaved: the local CAS admits one process
    at a time, and the product's worker keeps its Xet session once it has one."""
    mb = case.total_bytes / 1e6
    for _ in range(rounds):
        raw["snapshot_download"].append(raw_snapshot_download(case, hub_url, work))
    if product is not None:
        for _ in range(rounds):
            raw["product"].append(product_pull(product, case))
    bench = f"Download: {case.label}"
    base_s = min(r["seconds"] for r in raw["snapshot_download"])
    if not raw["product"]:
        section.unavailable(bench, unavailable)
        return
    product_s = min(r["seconds"] for r in raw["product"])
    raw["hash_seconds"] = hash_seconds(case)
    _verification_row(section, bench, case, raw)
    section.add(
        Row(
            bench,
            "throughput, MB/s",
            mb / product_s,
            mb / base_s,
            "huggingface_hub snapshot_download (hf_xet)",
            target="≥ 0.90",
            met=base_s / product_s >= 0.90,
            unit="MB/s",
            note=f"best of {rounds}; product rounds: "
            + ", ".join(f"{r['seconds']:.2f}" for r in raw["product"])
            + " s",
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["fetch"]:
        _fetch_main(sys.argv[2:])
    elif sys.argv[1:2] == ["snapshot"]:
        _snapshot_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m bench.downloads fetch LIST DEST | snapshot HUB REPO SHA CACHE")
