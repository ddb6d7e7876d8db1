"""Sizes and durations as people write them ("50GB", "30d"): one parser for settings (dashboard/env.py), the
CLI and request options, in the domain package so it never imports the project package for them."""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
