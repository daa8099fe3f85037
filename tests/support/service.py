"""Config files and a running Service for scenario tests: the simulator, a store, real receivers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alerter.config import Config, load_config
from alerter.service import Service
from alerter.sim import Portfolio
from tests.support.stores import postgres_schema

WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="
API_KEY = "test-key"


def rules_yaml(
    webhook_url: str, *, group_wait: str = "0s", extra: str = "", remind: str = "{}", max_events: int = 500
) -> str:
    return f"""\
receivers:
  - name: crm
    webhook:
      url: {webhook_url}
      secret: {WEBHOOK_SECRET}
      max_events: {max_events}
{extra}
defaults:
  group_by: [action_type]
  group_wait: {group_wait}
  group_interval: 0s
  remind: {remind}
  send_resolved: true
rules:
  - name: everything
    receivers: [crm]
"""


def config_yaml(
    sim_url: str,
    state_url: str,
    *,
    initial_sync: str = "notify",
    log_format: str = "console",
    api_key: str = API_KEY,
    listen: str = "127.0.0.1:0",
    **poll: str,
) -> str:
    interval = poll.get("interval", "5m")
    overlap = poll.get("overlap", "10m")
    reconcile = poll.get("reconcile_interval", "24h")
    return f"""\
source:
  base_url: {sim_url}
  api_key: {api_key}
  page_size: {poll.get("page_size", "500")}
  max_retries: 2
poll:
  interval: {interval}
  overlap: {overlap}
  reconcile_interval: {reconcile}
  initial_sync: {initial_sync}
  resolution_check: {poll.get("resolution_check", "meter_ids")}
state:
  url: {state_url}
http:
  listen: {listen}
rules: rules.yaml
log:
  format: {log_format}
  level: info
"""


def write_config(directory: Path, config: str, rules: str) -> Path:
    (directory / "rules.yaml").write_text(rules)
    path = directory / "config.yaml"
    path.write_text(config)
    return path


@asynccontextmanager
async def state_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A state URL for `backend`; a PostgreSQL schema is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    async with postgres_schema() as (url, schema):
        yield f"{url}?schema={schema}"


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Service]:
    service = Service(config)
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def load(path: Path) -> Config:
    return load_config(path, env=dict(os.environ))


def resolve_quietly(portfolio: Portfolio, meter_id: str) -> None:
    """Clear a meter's partner actions without moving its `audit.updated_at`: a change only a
    full sweep can see (Leap does not document that clearing an action bumps the timestamp)."""
    index = portfolio.index_of(meter_id)
    assert index is not None
    before_us = portfolio.columns.updated[index]
    before: Any = portfolio.record(index)["audit"]["updated_at"]
    portfolio.resolve_action(meter_id)
    portfolio.columns.updated[index] = before_us
    portfolio.overrides[index]["audit"]["updated_at"] = before
