"""Human units in the config file: sizes like ``2G`` and durations like ``2h``.

Sizes follow JupyterHub's ``ByteSpecification`` convention (K, M, G, T are powers of
1024), which is what operators coming from JupyterHub or Kubernetes-style limits expect;
pydantic's ``ByteSize`` reads ``2G`` as 2*10**9, so it is not used here.
Durations accept ``90s``, ``30m``, ``2h``, ``1d``, combinations (``1h30m``) and plain
seconds.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)


def _whole(value: object, number: float) -> int:
    """``int(number)``, refusing the infinity that a number too long for a float becomes."""
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is too large")
    return int(number)


def parse_size(value: object) -> int:
    """Return a size in bytes from ``2G``, ``512M``, ``1.5G`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; use a number with K, M, G or T, e.g. 2G")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive size")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; use a number with K, M, G or T, e.g. 2G")
    number, unit = match.groups()
    size = _whole(value, float(number) * _SIZE_UNITS[unit.upper()])
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return size


def format_size(size: int) -> str:
    """Render bytes in the largest unit that divides them evenly (``2147483648`` -> ``2G``)."""
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def human_size(size: int) -> str:
    """Bytes as a person reads them: the largest unit that is at least 1, one decimal at
    most (``1.5 GB``); ``format_size`` is the exact form the config takes (``1536M``)."""
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit]
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}B"
    return f"{size} B"


def parse_duration(value: object) -> int:
    """Return seconds from ``2h``, ``30m``, ``1h30m``, ``90s`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 30m, 2h or 1d")
    if isinstance(value, int | float):
        seconds = int(value)
    else:
        text = str(value).strip()
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _DURATION_RE.findall(text)
            if not parts or _DURATION_RE.sub("", text).strip():
                raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 30m, 2h or 1d")
            seconds = _whole(value, sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def format_duration(seconds: int) -> str:
    """Render seconds compactly (``7200`` -> ``2h``, ``5400`` -> ``1h30m``)."""
    out = []
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor:
            out.append(f"{seconds // factor}{unit}")
            seconds %= factor
    return "".join(out) or "0s"


Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
Duration = Annotated[
    int, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


def slurm_time(seconds: int) -> str:
    """Slurm's ``[D-]H:MM:SS``, as sbatch takes it and squeue shows it (``1-02:00:00``)."""
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02}:{mins:02}:{secs:02}"
    return f"{hours}:{mins:02}:{secs:02}"
