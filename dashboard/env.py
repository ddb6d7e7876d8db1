"""Typed readers for settings from the environment.

Each helper fails loudly (ImproperlyConfigured) on a value it does not understand: a typo in a
deployment should stop start-up, not be silently read as a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from models_app.units import parse_duration, parse_size

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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
