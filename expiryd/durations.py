"""Durations written the way people say them: 90s, 30m, 2h, 10d, 1h30m."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> int:
    """Whole seconds; a bare number counts as seconds. ValueError when it is not a duration."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    elif text and _PART.sub("", text) == "":
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 30m, 2h, 10d")
    if seconds <= 0:
        raise ValueError("a duration must be at least 1s")
    return seconds
