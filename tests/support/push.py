"""A service with Leap's webhooks on, in process: the simulator pushes to its endpoint on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from alerter.service import Service
from alerter.sim import Portfolio, SimServer
from alerter.web import start_server
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, state_url, write_config

LEAP_SECRET = "leap-push-secret-0123456789"
OLD_SECRET = "leap-push-secret-rotated-out"
PATH = "/leap/webhooks"
REQUIRED = "meter.enrollment.required-actions.updated"


def with_webhooks(config: str, secrets: tuple[str, ...] = (LEAP_SECRET, OLD_SECRET), listen: str = "") -> str:
    """`source.webhooks` added to a config_yaml text."""
    block = f"  webhooks:\n    path: {PATH}\n    header: x-api-key\n    secrets: [{', '.join(secrets)}]\n"
    if listen:
        block += f"    listen: {listen}\n"
    return config.replace("  max_retries: 2\n", "  max_retries: 2\n" + block, 1)


@dataclass
class PushWorld:
    portfolio: Portfolio
    sim: SimServer
    hook: WebhookCollector
    service: Service
    url: str
    """The endpoint's URL."""

    @property
    def meters(self) -> list[str]:
        p = self.portfolio
        return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]

    async def post(self, body: Any, secret: str | None = LEAP_SECRET, header: str = "x-api-key") -> tuple[int, Any]:
        headers = {header: secret} if secret is not None else {}
        data = body if isinstance(body, bytes) else None
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.url, data=data, json=None if data is not None else body, headers=headers) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def subscribe(self, secret: str = LEAP_SECRET) -> str:
        body = {
            "event_types": [REQUIRED],
            "headers": [{"name": "x-api-key", "value": secret}],
            "receiver_url": self.url,
        }
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession() as s, s.post(f"{self.sim.url}/v1.1/webhooks", json=body, headers=auth) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["webhook_id"])

    def metric(self, name: str) -> float:
        """A sample's value from /metrics text (0 when absent)."""
        for line in self.service.metrics.render().decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
        return 0.0

    def events(self) -> list[tuple[str, str, str]]:
        """(type, meter id, action code) of every event the receiver got, in order."""
        return [
            (e["type"], e["meter"]["meter_id"], e["action"]["action_code"])
            for r in self.hook.delivered()
            for e in r.body["data"]["events"]
        ]


async def wait_until(predicate: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@asynccontextmanager
async def push_world(
    tmp_path: Path,
    backend: str = "sqlite",
    *,
    loop: bool = False,
    meters: int = 100,
    action_rate: float = 0.0,
) -> AsyncIterator[PushWorld]:
    """The simulator, a webhook receiver and a Service whose endpoint is served on loopback, after
    its initial sync. With `loop` the processing loop runs; otherwise a test calls `push.step()`."""
    portfolio = Portfolio(meters, action_rate=action_rate, seed=5)
    async with (
        SimServer(portfolio, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url(backend, tmp_path) as url,
    ):
        sim.push.time_scale = 0.001
        cfg = write_config(tmp_path, with_webhooks(config_yaml(sim.url, url, interval="5m")), rules_yaml(hook.url()))
        service = Service(load(cfg))
        await service.start()
        app = web.Application()
        push = service.push
        assert push is not None
        running = None
        push.mount(app)
        if loop:
            running = await push.start()
        runner, port = await start_server(app, "127.0.0.1:0")
        try:
            await service.run_cycle(flush_all=True)
            await service.drain(10)
            yield PushWorld(portfolio, sim, hook, service, f"http://127.0.0.1:{port}{PATH}")
        finally:
            if running is not None:
                await running.stop()
            await runner.cleanup()
            await service.close()


def envelope(event_id: str, meter_id: str, partner: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "webhook_event_type": REQUIRED,
        "meter_id": meter_id,
        "transmission_region": "CAISO",
        "global_enrollment_status": "ACTIVE",
        "required_actions": {"partner": partner} if partner else {},
    }
    payload.update(over)
    return {"webhook_event_id": event_id, "payload": payload}
