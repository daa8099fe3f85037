"""`alerter demo`: the simulator and the service on loopback, notifications printed to the console.

How this works: a simulated portfolio is served on a loopback port; the demo writes a config and
a rules file (one console receiver, short group waits) into a temporary directory, prints where
the simulator, the service's HTTP server, the config and the state are, and runs the service on
that config as `alerter run` does. The simulator opens, reschedules and resolves partner actions
about once every two seconds (`Portfolio.partner_churn`), so the initial-sync digest is followed
within a minute by new, changed and resolved actions. Ctrl-C stops both and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import tempfile
from pathlib import Path

from alerter import leapwebhooks, logs
from alerter.config import load_config
from alerter.errors import AlerterError
from alerter.runtime import Runtime
from alerter.sim import Portfolio, SimServer
from alerter.sim.churn import meter_with_actions, run_churn

API_KEY = "demo-key"
CHURN = 0.5
"""Partner changes a second in the simulator."""
POLL = "5s"

RULES = """\
receivers:
  - name: console
    console: {}
defaults:
  group_by: [action_type]
  group_wait: 2s
  group_interval: 10s
  remind: {before_deadline: [7d, 2d, 1d], overdue: true}
  send_resolved: true
rules:
  - name: all-actions
    receivers: [console]
"""

CONFIG = """\
# Written by `alerter demo` for its own run; removed when the demo stops.
source:
  base_url: {url}
  api_key: {api_key}
  webhooks: {{secrets: [demo-webhook-secret]}}
poll:
  interval: {poll}
  overlap: 1m
  reconcile_interval: 2m
  initial_sync: digest
state:
  url: {state}
http:
  listen: 127.0.0.1:0
  auth: {{users: [{{username: demo, password: "{password}"}}]}}
rules: rules.yaml
log:
  format: console
  level: warning
"""


def _redact(url: str) -> str:
    from alerter.store.postgres import redact

    return redact(url)


def _banner(sim: SimServer, portfolio: Portfolio, port: int, config: Path, state_url: str, password: str) -> str:
    needing = portfolio.columns.has_partner.count(1)
    index = meter_with_actions(portfolio, random.Random(0))
    reference = portfolio.record(index)["partner_reference"] if index is not None else "site-0000001"
    service = f"http://127.0.0.1:{port}"
    state = state_url.removeprefix("sqlite:///") if state_url.startswith("sqlite:///") else _redact(state_url)
    return (
        "alerter demo: the Leap simulator and the service on loopback; notifications print below.\n"
        f"  Leap simulator at {sim.url} ({portfolio.size} meters, {needing} need partner action;"
        f" API key {API_KEY})\n"
        f'    change it yourself: curl -X POST {sim.url}/_sim/churn -d \'{{"n": 3, "partner": true}}\'\n'
        f"  console: {service}/  (log in as demo, password {password})\n"
        f"  service: {service}/metrics  {service}/healthz  {service}/readyz\n"
        f"  config: {config} (rules: {config.with_name('rules.yaml')})\n"
        f"  state: {state}\n"
        f"  try beside it: alerter history -c {config} --meter {reference}\n"
        f"The service polls the simulator every {POLL}. First comes the initial-sync digest of the actions\n"
        "already open; then actions open, change their deadline and resolve (about one change every\n"
        f"{1 / CHURN:g} seconds). Press Ctrl-C to stop.\n"
    )


async def _subscribe(runtime: Runtime) -> None:
    """Once the service listens, subscribe its endpoint to the simulator's webhooks."""
    while runtime.port is None and not runtime.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stop.wait(), 0.05)
    if runtime.port is not None:
        url = f"http://127.0.0.1:{runtime.port}/leap/webhooks"
        try:
            await leapwebhooks.register(runtime.service.config.source, url)
        except AlerterError as err:
            print(f"alerter demo: webhooks not registered ({err}); polling alone", flush=True)


async def _main(meters: int, port: int, state: str | None, workdir: Path) -> int:
    portfolio = Portfolio(meters, action_rate=0.02, seed=42)
    async with SimServer(portfolio, api_key=API_KEY, port=port) as sim:
        config_path = workdir / "config.yaml"
        (workdir / "rules.yaml").write_text(RULES)
        state_url = state or f"sqlite:///{workdir / 'alerter-demo.db'}"
        password = secrets.token_urlsafe(9)  # a fresh console login for each run
        config_path.write_text(
            CONFIG.format(url=sim.url, api_key=API_KEY, poll=POLL, state=state_url, password=password)
        )
        config = load_config(config_path)
        logs.configure("console", "warning")
        runtime = Runtime(config)
        served = asyncio.create_task(runtime.run())
        churn = asyncio.create_task(run_churn(portfolio, CHURN, runtime.stop))
        push = asyncio.create_task(_subscribe(runtime))  # the simulator pushes each change to the service
        try:
            # The runtime binds its port inside run(); the banner waits for it (a few milliseconds).
            while runtime.port is None and not served.done():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if runtime.port is not None:
                print(_banner(sim, portfolio, runtime.port, config_path, state_url, password), flush=True)
            return await served
        finally:
            runtime.stop.set()
            await churn
            await push


def main(meters: int = 3000, port: int = 0, state: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="alerter-demo-") as tmp:
        try:
            code = asyncio.run(_main(meters, port, state, Path(tmp)))
        except KeyboardInterrupt:  # Ctrl-C before the service took over the signal
            code = 0
    print(f"alerter demo stopped (removed {tmp})", flush=True)
    return code
