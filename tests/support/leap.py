"""Leap test helpers: Leap's enrollment definition, validation against it, a simulator with a client."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor

from alerter.config import SourceConfig
from alerter.sim import Portfolio, SimServer
from alerter.source import LeapClient

DEFINITION = Path(__file__).resolve().parents[1] / "data" / "leap-enrollments-openapi.yml"
"""Leap's published Enrollments v2 definition, byte for byte."""
HOST = "https://api.leap.energy"
API_KEY = "test-key-3f9a1c0e"
FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.005, "retry_after_max": 0.005}
"""LeapClient keyword arguments that make retries nearly instant."""


@functools.cache
def definition() -> dict[str, Any]:
    yaml = YAML(typ="safe", pure=True)
    # Keep timestamps in examples as strings, as JSON would carry them.
    yaml.constructor.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)
    spec: dict[str, Any] = yaml.load(DEFINITION.read_text(encoding="utf-8"))
    return spec


@functools.cache
def openapi() -> OpenAPI:
    return OpenAPI.from_dict(definition())


def _request(method: str, path: str, body: Any) -> MockRequest:
    data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    return MockRequest(
        HOST,
        method.lower(),
        path,
        data=data,
        content_type="application/json",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )


def _explain(err: Exception) -> str:
    cause = err.__cause__
    errors = getattr(cause, "schema_errors", None) or []
    lines = [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"[:300] for e in errors]
    return f"{type(err).__name__}: " + ("; ".join(lines) or str(err)[:500])


def check_request(method: str, path: str, body: Any = None) -> None:
    """Raises AssertionError unless the request is valid by Leap's definition."""
    try:
        openapi().validate_request(_request(method, path, body))
    except Exception as err:  # openapi-core raises several unrelated types
        raise AssertionError(_explain(err)) from None


def check_response(
    method: str,
    path: str,
    status: int,
    body: bytes,
    *,
    request_body: Any = None,
    content_type: str = "application/json",
) -> None:
    """Raises AssertionError unless the response is what the definition allows for that request."""
    response = MockResponse(body, status_code=status, content_type=content_type)
    try:
        openapi().validate_response(_request(method, path, request_body), response)
    except Exception as err:
        raise AssertionError(_explain(err)) from None


def source_config(url: str, *, api_key: str = API_KEY, **overrides: Any) -> SourceConfig:
    return SourceConfig.model_validate({"base_url": url, "api_key": api_key, **overrides})


@asynccontextmanager
async def leap(
    portfolio: Portfolio | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    **client: Any,
) -> AsyncIterator[tuple[SimServer, LeapClient]]:
    """A simulator on loopback and a client for it (fast retries unless overridden)."""
    async with SimServer(portfolio or Portfolio(200, seed=11), api_key=API_KEY) as server:
        client_config = source_config(server.url, **(config or {}))
        async with LeapClient(client_config, **{**FAST, **client}) as source:
            yield server, source


def rfc3339(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def matches(meter: Mapping[str, Any], f: Mapping[str, Any]) -> bool:
    """A reference reading of MeterFilterRequest, written against raw meters (not the sim's columns)."""

    def after(value: str, bound: str) -> bool:
        return _instant(value) > _instant(bound)

    partner = meter["required_actions"]["partner"]
    checks: dict[str, Callable[[Any], bool]] = {
        "transmission_region": lambda v: meter["transmission_region"] == v,
        "customer_classification": lambda v: meter["customer_classification"] == v,
        "meter_ids": lambda v: not v or meter["meter_id"] in v,
        "partner_references": lambda v: meter["partner_reference"] in v,
        "global_enrollment_statuses": lambda v: meter["global_enrollment_status"] in v,
        "meter_types": lambda v: meter["meter_type"] in v,
        "load_types": lambda v: bool(set(meter["load_types"]) & set(v)),
        "customer_groups": lambda v: meter["customer_group"] in v,
        "tags": lambda v: bool(set(meter["tags"]) & set(v)),
        "connection_reference_ids": lambda v: bool(set(meter["connection_references"]) & set(v)),
        "last_modified_date_time": lambda v: after(meter["audit"]["updated_at"], v),
        "created_after_date_time": lambda v: after(meter["audit"]["created_at"], v),
        "created_before_date_time": lambda v: after(v, meter["audit"]["created_at"]),
        "partner_action_required": lambda v: not v or bool(partner),
        "exclude_archived": lambda v: not v or not meter["is_archived"],
        "action_type": lambda v: any(a["action_type"] in v for a in partner),
    }
    return all(checks[name](value) for name, value in f.items())


_TIME = re.compile(r"^(.+?)(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


def _instant(value: str) -> tuple[datetime, int]:
    """An RFC 3339 time as (second, nanoseconds), so nine-digit fractions compare exactly."""
    m = _TIME.match(value)
    assert m, value
    head, fraction, zone = m.groups()
    second = datetime.fromisoformat(head + ("+00:00" if zone == "Z" else zone))
    return second.astimezone(UTC), int((fraction or "0").ljust(9, "0")[:9])
