"""Durations as users write them (`30s`, `5m`, `24h`, `7d`), parsed and formatted back."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_BARE = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
LONGEST = timedelta(days=36500)
"""The longest duration taken (about a century): a longer one would overflow the instants it is
added to (a silence's end, a deadline window)."""


def parse_duration(value: Any) -> timedelta:
    """`30s`, `5m`, `24h`, `7d` (also `ms`, `w`). A number without a unit is an error, but for 0:
    `retention: 90` or `timeout: 30` could mean seconds or days, and a wrong guess goes unnoticed."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str) and _BARE.match(value):
        value = float(value)
    if isinstance(value, int | float):
        if value == 0:
            return timedelta()
        raise ValueError(f"{value:g} has no unit: write {value:g}s, {value:g}m, {value:g}h or {value:g}d")
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
            if seconds > LONGEST.total_seconds():
                longest = format_duration(LONGEST)
                raise ValueError(f"{value.strip()} is longer than {longest}, the longest duration taken")
            return timedelta(seconds=seconds)
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 24h, 7d)")


def format_duration(value: timedelta) -> str:
    """The largest exact unit up to days: 7d, 36h, 90s (the inverse of parse_duration)."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0s, got {format_duration(value)}")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be longer than zero (an interval, a timeout)."""
