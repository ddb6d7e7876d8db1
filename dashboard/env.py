"""Typed readers for settings from the environment.

Each helper fails loudly (ImproperlyConfigured) on a value it does not understand: a typo in a
deployment should stop start-up, not be silently read as a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def env_str(name: str, default: str = "") -> str:
    """A string, also read from `NAME_FILE` (Docker/Kubernetes secrets) when set."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_size(text: str) -> int:
    """'50GB', '1.5 GiB', '200M', '1024' -> bytes. Raises ValueError on anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 500MB, 50GB, 1.5GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '45s', '2w', '3600' -> seconds. Raises ValueError on anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30d, 12h, 90m)")
    return int(float(match.group(1)) * _DURATION_UNITS.get(match.group(2) or "s", 1))


def env_size(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


def env_duration(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


def env_named_paths(name: str) -> dict[str, Path]:
    """'external=/Volumes/ssd/hf,scratch=/data/hf' -> {'external': Path(...), ...}."""
    raw = os.environ.get(name, "")
    result: dict[str, Path] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        label, sep, path = item.partition("=")
        label = label.strip()
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", label) or not path.strip():
            raise ImproperlyConfigured(f"{name}: {item!r} is not NAME=/absolute/path (lower-case name)")
        resolved = Path(path.strip()).expanduser()
        if not resolved.is_absolute():
            raise ImproperlyConfigured(f"{name}: {path!r} must be an absolute path")
        result[label] = resolved
    return result
