"""Fault isolation: a receiver that fails does not hold back polling, readiness or the other
receivers; it shows in its own metrics and self-alert, and the operations receiver failing
does not feed on itself."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from alerter.service import Service
from alerter.sim import Portfolio, SimServer
from alerter.store.base import Delivery
from tests.support.channels import WebhookCollector, fake_slack, webhook_collector
from tests.support.proc import Service as Process
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, write_config

pytestmark = pytest.mark.timeout(180)

RULES = """\
receivers:
  - name: ops-slack
    slack: {{token: xoxb-test-token, channel: "#leap-actions", api_url: "{slack}"}}
  - name: crm
    webhook: {{url: "{hook}", secret: {secret}}}
defaults:
  group_by: [meter_id]
  group_wait: 0s
  group_interval: 0s
rules:
  - name: everything
    receivers: [ops-slack, crm]
"""


def unarchived(p: Portfolio) -> list[str]:
    return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]


def opened_meters(hook: WebhookCollector) -> set[str]:
    return {
        e["meter"]["meter_id"]
        for r in hook.delivered()
        if r.body.get("type") == "alerter.notification"
        for e in r.body["data"]["events"]
    }


def alerts(hook: WebhookCollector) -> list[dict[str, str]]:
    return [r.body["data"]["group"] for r in hook.delivered() if r.body.get("type") == "alerter.alert"]


async def test_slack_down_with_a_backlog_holds_back_neither_webhooks_nor_readiness(tmp_path: Path) -> None:
    p = Portfolio(60, action_rate=0.0, seed=17)
    meters = unarchived(p)
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        fake_slack() as slack,
        webhook_collector([WEBHOOK_SECRET]) as hook,
    ):
        slack.fail("500", times=100_000)
        rules = RULES.format(slack=slack.api_url, hook=hook.url(), secret=WEBHOOK_SECRET)
        config = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="2s")
        cfg = write_config(tmp_path, config + "operations_receiver: crm\n", rules)
        svc = await Process.start(str(cfg))
        readiness: list[int] = []

        async def probe() -> None:
            while True:
                readiness.append((await svc.get("/readyz"))[0])
                await asyncio.sleep(0.25)

        prober: asyncio.Task[None] | None = None
        try:
            await svc.wait_for_log("cycle_done", timeout=30)
            backlog = set(meters[:20])
            for m in backlog:  # twenty notifications for a Slack that answers 500 to everything
                p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            await wait_until(lambda: opened_meters(hook) >= backlog, timeout=30)
            await wait_until(lambda: len(slack.calls) >= 20, timeout=60)
            prober = asyncio.create_task(probe())
            await asyncio.sleep(1)  # readiness is probed while Slack's backlog is being retried
            late = meters[20]
            p.open_action(late, action_type="DOCUMENTS_SIGNED", action_code="DOCS_0001")
            await wait_until(lambda: late in opened_meters(hook), timeout=12)  # a few 2 s polls, not ~30 s
            await asyncio.sleep(2)
            prober.cancel()
            assert readiness and set(readiness) == {200}
            assert not slack.posted()  # Slack failed throughout
            _, metrics = await svc.get("/metrics")
            assert 'alerter_receiver_healthy{receiver="ops-slack"} 0.0' in metrics
            assert 'alerter_receiver_healthy{receiver="crm"} 1.0' in metrics
            # its own self-alert, to the operations receiver (gauges and self-alerts run every 15 s)
            await wait_until(lambda: any(a["alert"] == "receiver_failing" for a in alerts(hook)), timeout=40)
        finally:
            if prober is not None:
                prober.cancel()
            assert await svc.stop(signal.SIGTERM) == 0
    [failing] = [a for a in alerts(hook) if a["alert"] == "receiver_failing"]
    assert failing["status"] == "firing" and "ops-slack" in failing["message"]


async def test_an_operations_receiver_that_fails_hears_of_others_and_does_not_feed_on_itself(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=4)
    meters = unarchived(p)
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        fake_slack() as slack,
        webhook_collector([WEBHOOK_SECRET]) as hook,
    ):
        slack.fail("500", times=100_000)
        hook.script.extend([503] * 100_000)
        rules = RULES.format(slack=slack.api_url, hook=hook.url(), secret=WEBHOOK_SECRET)
        config = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db") + "operations_receiver: ops-slack\n"
        service = Service(load(write_config(tmp_path, config, rules)))
        await service.start()
        try:
            await service.run_cycle(flush_all=True)
            for m in meters[:3]:
                p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            await service.run_cycle(flush_all=True)
            await service.drain(2)  # three notifications each: three failures in a row for both
            for _ in range(3):
                await service.refresh_gauges()
                await service.drain(1)
            assert {"receiver_failing:ops-slack", "receiver_failing:crm"} <= set(service.alerts.active)
            queued = [d for d in await dead_and_pending(service) if d.notification.rule == "alerter-self"]
        finally:
            await service.close()
    # one alert, about crm, to the operations receiver; none about itself, however often it fails
    assert [(d.receiver, d.notification.group["alert"]) for d in queued] == [("ops-slack", "receiver_failing")]
    assert "crm" in queued[0].notification.group["message"]


async def dead_and_pending(service: Service) -> list[Delivery]:
    far = service.clock() + timedelta(days=30)
    return await service.store.claim_deliveries(far, "inspect", 1000, 1) + await service.store.dead_letters()


async def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")
