"""`alerter demo`: the simulator and the service on loopback, notifications printed to the console.

The simulator's actions open, change and resolve every few seconds; the service polls every
5 s, groups for 2 s and prints each notification. Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from pathlib import Path

from alerter import leapwebhooks, logs
from alerter.config import load_config
from alerter.errors import AlerterError
from alerter.runtime import Runtime
from alerter.sim import Portfolio, SimServer

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
source:
  base_url: {url}
  api_key: demo-key
  webhooks: {{secrets: [demo-webhook-secret]}}
poll:
  interval: 5s
  overlap: 1m
  reconcile_interval: 2m
  initial_sync: digest
state:
  url: {state}
http:
  listen: 127.0.0.1:0
rules: rules.yaml
log:
  format: console
  level: warning
"""


async def _churn(portfolio: Portfolio, stop: asyncio.Event) -> None:
    rng = random.Random(7)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(4, 9))
        if not stop.is_set():
            portfolio.random_churn(rng.randint(1, 4))


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
    async with SimServer(portfolio, api_key="demo-key", port=port) as sim:
        (workdir / "rules.yaml").write_text(RULES)
        state_url = state or f"sqlite:///{workdir / 'alerter-demo.db'}"
        (workdir / "config.yaml").write_text(CONFIG.format(url=sim.url, state=state_url))
        config = load_config(workdir / "config.yaml")
        logs.configure("console", "warning")
        print(
            f"alerter demo: Leap simulator at {sim.url} with {meters} meters; the service polls every 5s.\n"
            "The first notification is the initial-sync digest; then actions open, change and resolve.\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        runtime = Runtime(config)
        churn = asyncio.create_task(_churn(portfolio, runtime.stop))
        push = asyncio.create_task(_subscribe(runtime))  # the simulator pushes each change to the service
        try:
            return await runtime.run()
        finally:
            runtime.stop.set()
            await churn
            await push


def main(meters: int = 3000, port: int = 0, state: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="alerter-demo-") as tmp:
        return asyncio.run(_main(meters, port, state, Path(tmp)))
