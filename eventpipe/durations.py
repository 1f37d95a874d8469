"""Durations as people type them on the command line: ``30s``, ``15m``, ``24h``, ``7d``, ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhd])")
MAX_SECONDS = 366 * 86400  # a year: past it, a typo more likely than a wish


def parse_duration(text: str) -> float:
    """Seconds in ``text``: number-unit pairs (s, m, h, d), or ``0``. ValueError, in words, otherwise."""
    if text.strip() == "0":
        return 0.0
    parts = _PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"{text!r} is not a duration: use a number and a unit (s, m, h, d), e.g. 30s, 15m, 24h, 7d")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than a year")
    return seconds
