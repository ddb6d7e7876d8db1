"""Rows, the markdown table and the JSON files under var/bench/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One comparison: the product's figure, the baseline's, and product/baseline."""

    benchmark: str
    metric: str
    product: float | None
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""  # e.g. "≥ 0.90", "≤ +50 ms", "constant"
    met: bool | None = None
    unit: str = ""
    note: str = ""
    unavailable: str = ""  # why the product side could not be measured
    failed: bool = False  # unavailable because it broke while measured (not because it is not built yet)

    @property
    def ratio(self) -> float | None:
        if self.product is None or self.baseline in (None, 0):
            return None
        return self.product / self.baseline  # type: ignore[operator]


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # every figure measured, for the JSON file
    seconds: float = 0.0
    error: str = ""

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def unavailable(self, benchmark: str, reason: str) -> None:
        self.rows.append(Row(benchmark, "", None, unavailable=reason))

    def failed(self, benchmark: str, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        self.rows.append(Row(benchmark, "", None, unavailable=reason, failed=True))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:  # macOS
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    try:
        import mlx.core as mx

        device = str(mx.default_device())
    except Exception as exc:  # mlx missing or broken: still report the rest
        device = f"unavailable ({exc})"
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "mlx_device": device,
        "django": _version("django"),
        "huggingface_hub": _version("huggingface-hub"),
        "curl": curl or "not installed",
        "load_average_at_start": os.getloadavg(),
    }


# ----------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,} {unit}".strip()
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def markdown(sections: list[Section], info: dict[str, Any], *, total_seconds: float) -> str:
    lines = [
        "| Benchmark | Metric | Product | Baseline | Ratio | Target | Met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for section in sections:
        if section.error and not section.rows:
            lines.append(f"| {section.name} | | n/a (failed: {section.error}) | | | | |")
        for row in section.rows:
            if row.unavailable:
                why = "failed" if row.failed else "not available"
                lines.append(f"| {row.benchmark} | {row.metric} | n/a ({why}: {row.unavailable}) | | | | |")
                continue
            baseline = _fmt(row.baseline, row.unit)
            if row.baseline_name:
                baseline = (
                    f"{baseline} ({row.baseline_name})" if row.baseline is not None else row.baseline_name
                )
            ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
            metric = f"{row.metric} ({row.note})" if row.note else row.metric
            lines.append(
                f"| {row.benchmark} | {metric} | {_fmt(row.product, row.unit)} | {baseline} | {ratio} | "
                f"{row.target} | {_verdict(row.met)} |"
            )
    machine_line = (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {info['os']}, "
        f"Python {info['python']}, mlx {info['mlx']} ({info['mlx_device']}), mlx-lm {info['mlx_lm']}, "
        f"curl: {info['curl'].split(' (')[0]}. Load average at start: "
        f"{', '.join(f'{x:.2f}' for x in info['load_average_at_start'])}. Whole run: {total_seconds / 60:.1f} min."
    )
    return "\n".join([*lines, "", machine_line])


def save(
    out_dir: Path,
    sections: list[Section],
    info: dict[str, Any],
    table: str,
    total_seconds: float,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = {
        "created_at": datetime.now(UTC).isoformat(),
        "seconds": round(total_seconds, 1),
        "machine": info,
        "sections": [
            {
                "name": s.name,
                "seconds": round(s.seconds, 1),
                "error": s.error,
                "rows": [{**asdict(r), "ratio": r.ratio} for r in s.rows],
                "raw": s.raw,
            }
            for s in sections
        ],
        "table_markdown": table,
        **(extra or {}),
    }
    text = json.dumps(data, indent=2, default=str) + "\n"
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    # Written then renamed: a reader never sees half a latest.json.
    tmp = out_dir / f".latest-{os.getpid()}-{time.monotonic_ns()}.json"
    tmp.write_text(text)
    os.replace(tmp, out_dir / "latest.json")
    return path
