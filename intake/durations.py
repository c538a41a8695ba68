"""Durations as people type them on the command line: `90s`, `30m`, `24h`, `2d`, `1h30m`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class InvalidDurationError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    """`24h` → 24 hours; one or more whole numbers each with a unit s, m, h or d."""
    cleaned = text.strip().lower()
    parts = _PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise InvalidDurationError(
            f"not a duration: {text!r}; use a number and a unit, like 90s, 30m, 24h or 2d"
        )
    try:
        return sum((timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())
    except OverflowError:
        raise InvalidDurationError(f"duration too long: {text!r}") from None
