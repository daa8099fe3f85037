"""The service config: one strict pydantic tree loaded from YAML with `${VAR}` expansion.

`load_config(path)` returns a Config or raises ConfigError listing every problem as
`FILE:LINE:COL: message`. `alerter check` runs exactly this loader.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """`30s`, `5m`, `24h`, `7d` (also `ms`, `w`; a bare number is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 24h, 7d)")


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

STRICT = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(BaseModel):
    model_config = STRICT

    base_url: str = "https://api.leap.energy"
    api_key: SecretStr
    page_size: int = Field(500, ge=1, le=500)
    timeout: Duration = timedelta(seconds=30)
    filters: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = Field(5, ge=0, le=20)


class PollConfig(BaseModel):
    model_config = STRICT

    interval: Duration = timedelta(minutes=5)
    overlap: Duration = timedelta(minutes=10)
    reconcile_interval: Duration = timedelta(hours=24)
    initial_sync: Literal["digest", "notify", "silent"] = "digest"


class StateConfig(BaseModel):
    model_config = STRICT

    url: str = "sqlite:///./alerter.db"


class HttpConfig(BaseModel):
    model_config = STRICT

    listen: str = "127.0.0.1:8080"


class LogConfig(BaseModel):
    model_config = STRICT

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(BaseModel):
    model_config = STRICT

    source: SourceConfig
    poll: PollConfig = PollConfig()
    state: StateConfig = StateConfig()
    http: HttpConfig = HttpConfig()
    rules: str | list[str] = Field(default_factory=list)
    log: LogConfig = LogConfig()
    operations_receiver: str | None = None
    """A receiver of the rules files that hears the service's own alerts."""
