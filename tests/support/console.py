"""A running service with its console on 127.0.0.1, for API, page and browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

from alerter.service import Service
from alerter.web import make_app, start_server
from tests.support.service import WEBHOOK_SECRET, load, state_url, write_config

TOKEN = "test-token-0123456789abcdef"
PASSWORD = "correct horse battery"
AUTH = f"""\
  auth:
    users:
      - username: alice
        password: {PASSWORD}
    api_tokens: [{TOKEN}]
    trusted_user_header: X-Forwarded-User
"""
HOOK_SECRET_URL_TOKEN = "hook-url-token-s3cr3t"
HOOK_SECRET_PATH_TOKEN = "hook-path-token-s3cr3t"


def rules(webhook_url: str, remind: str = "{}") -> str:
    return f"""\
receivers:
  - name: crm
    webhook:
      url: {webhook_url}/{HOOK_SECRET_PATH_TOKEN}?token={HOOK_SECRET_URL_TOKEN}
      secret: {WEBHOOK_SECRET}
      headers: {{X-Api-Key: header-secret-value}}
  - name: ops
    console: {{}}
defaults:
  group_by: [action_type]
  group_wait: 0s
  group_interval: 0s
  remind: {remind}
rules:
  - name: caiso
    match: {{transmission_region: CAISO}}
    receivers: [crm]
  - name: everything-else
    receivers: [ops]
"""


def config(sim_url: str, state: str, *, auth: str = "", listen: str = "127.0.0.1:0", interval: str = "5m") -> str:
    return f"""\
source:
  base_url: {sim_url}
  api_key: test-key
  max_retries: 0
poll:
  interval: {interval}
  initial_sync: notify
state:
  url: {state}
http:
  listen: {listen}
{auth}rules: rules.yaml
log:
  format: console
  level: warning
"""


@dataclass
class Console:
    service: Service
    url: str

    def session(self, **headers: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(self.url, headers=headers, cookie_jar=aiohttp.CookieJar(unsafe=True))


@asynccontextmanager
async def console(
    tmp_path: Path,
    backend: str = "sqlite",
    *,
    auth: str = AUTH,
    listen: str = "127.0.0.1:0",
    sim_url: str = "http://127.0.0.1:9",
    webhook_url: str = "http://127.0.0.1:9/hook",
    remind: str = "{}",
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Console]:
    """The service (not polling: call `run_cycle` yourself) and its HTTP server on 127.0.0.1.

    `listen` is what the config says (it decides the console's mode); the test server binds
    127.0.0.1 whatever it says."""
    async with state_url(backend, tmp_path) as state:
        path = write_config(tmp_path, config(sim_url, state, auth=auth, listen=listen), rules(webhook_url, remind))
        service = Service(load(path), clock=clock) if clock else Service(load(path))
        await service.start()
        runner = None
        try:
            app = make_app(service.health, service.metrics, service.clock, console=service)
            runner, port = await start_server(app, "127.0.0.1:0")
            yield Console(service, f"http://127.0.0.1:{port}")
        finally:
            if runner is not None:
                await runner.cleanup()
            await service.close()
