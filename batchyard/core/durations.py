"""Durations as people write them in a job file or ``batchyard.toml``: ``"90s"``, ``"1h30m"``, ``"2d"``."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                          r"(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(value)
        if not value.strip() or not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration (use e.g. '90s', '10m', '1h30m', '2d')")
        d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds
