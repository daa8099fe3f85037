"""Kills and hand-overs: `alerter run` killed with SIGKILL loses nothing and duplicates nothing;
two replicas on one PostgreSQL share the work and hand the polling lease over when the leader dies;
what a killed instance was sending goes out again at once (SQLite) or once its heartbeat lapses
(PostgreSQL), under the same webhook-id.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from alerter.service import Service as InProcess
from alerter.sim import Portfolio, SimServer
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.proc import Service
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, state_url, write_config

pytestmark = pytest.mark.timeout(240)


def unarchived(p: Portfolio) -> list[str]:
    return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]


def delivered_events(hook: WebhookCollector) -> dict[str, set[str]]:
    """event id -> the webhook-ids that carried it (a resend must reuse the same webhook-id)."""
    carriers: dict[str, set[str]] = defaultdict(set)
    for r in hook.delivered():
        for e in r.body["data"]["events"]:
            carriers[e["id"]].add(r.headers["webhook-id"])
    return carriers


def opened_codes(hook: WebhookCollector) -> set[tuple[str, str]]:
    return {
        (e["meter"]["meter_id"], e["action"]["action_code"])
        for r in hook.delivered()
        for e in r.body["data"]["events"]
        if e["type"] == "action.opened"
    }


async def wait_until(predicate: Any, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def open_and_kill(
    cfg: Path,
    p: Portfolio,
    hook: WebhookCollector,
    rng: random.Random,
    expected: set[tuple[str, str]],
    *,
    kills: int,
    rounds: int,
    per_round: int,
    pause: tuple[float, float],
) -> None:
    """`kills` times: start the service, open actions in `rounds` (recorded in `expected`), SIGKILL
    it; then run it once more until the webhook has heard of every opening, and stop it cleanly."""
    meters = unarchived(p)
    for _ in range(kills):
        svc = await Service.start(str(cfg))
        for _ in range(rounds):
            for m in rng.sample(meters, per_round):
                code = f"AUTH_{rng.randrange(10_000):04d}"
                p.open_action(m, action_type="IS_AUTHORIZED", action_code=code)
                expected.add((m, code))
            await asyncio.sleep(rng.uniform(*pause))
        assert await svc.stop(signal.SIGKILL) == -signal.SIGKILL
    svc = await Service.start(str(cfg))
    try:
        await wait_until(lambda: opened_codes(hook) >= expected, timeout=60)
    finally:
        assert await svc.stop() == 0


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    p = Portfolio(400, action_rate=0.0, seed=13)
    expected: set[tuple[str, str]] = set()
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s", page_size="7"),
            rules_yaml(hook.url()),
        )
        await open_and_kill(cfg, p, hook, rng, expected, kills=4, rounds=3, per_round=5, pause=(0.2, 1.5))
    assert opened_codes(hook) == expected
    carriers = delivered_events(hook)
    assert all(len(ids) == 1 for ids in carriers.values()), "an event went out under two webhook-ids"


async def test_sigkill_while_groups_go_out_in_parts_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(5)
    p = Portfolio(300, action_rate=0.0, seed=17)
    expected: set[tuple[str, str]] = set()
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s", page_size="7"),
            rules_yaml(hook.url(), max_events=2),
        )
        await open_and_kill(cfg, p, hook, rng, expected, kills=3, rounds=2, per_round=9, pause=(0.3, 1.5))
    assert opened_codes(hook) == expected
    assert all(len(ids) == 1 for ids in delivered_events(hook).values()), "an event went out under two webhook-ids"
    bodies = {r.headers["webhook-id"]: r.body["data"] for r in hook.delivered()}
    assert all(len(d["events"]) <= 2 for d in bodies.values())
    assert any(d["part"]["count"] > 1 for d in bodies.values())
    for d in bodies.values():  # a part resent after a kill is the same part
        assert d["id"] in bodies and 1 <= d["part"]["index"] <= d["part"]["count"]


async def test_two_replicas_on_postgres_hand_over(tmp_path: Path) -> None:
    p = Portfolio(200, action_rate=0.0, seed=21)
    meters = unarchived(p)
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url("postgres", tmp_path) as url,
    ):
        cfg = write_config(
            tmp_path, config_yaml(sim.url, url, log_format="json", interval="1s"), rules_yaml(hook.url())
        )
        a = await Service.start(str(cfg))
        b = await Service.start(str(cfg))
        try:
            await a.wait_for_log("leadership_acquired")
            await asyncio.sleep(1.5)
            leaders = [s for s in (a, b) if any(e.get("event") == "leadership_acquired" for e in s.logs)]
            assert len(leaders) == 1
            leader, follower = (a, b) if leaders[0] is a else (b, a)
            first = {(m, "AUTH_0001") for m in meters[:10]}
            for m, code in first:
                p.open_action(m, action_type="IS_AUTHORIZED", action_code=code)
            await wait_until(lambda: opened_codes(hook) >= first)
            # the follower is ready too: it reads the leader's last cycle from the shared state
            status, _ = await follower.get("/readyz")
            assert status == 200

            assert await leader.stop(signal.SIGKILL) == -signal.SIGKILL
            await follower.wait_for_log("leadership_acquired", timeout=5)
            later = {(m, "DOCS_0001") for m in meters[10:20]}
            for m, code in later:
                p.open_action(m, action_type="DOCUMENTS_SIGNED", action_code=code)
            await wait_until(lambda: opened_codes(hook) >= first | later)
        finally:
            for s in (a, b):
                await s.stop()
    assert opened_codes(hook) == first | later
    assert all(len(ids) == 1 for ids in delivered_events(hook).values())


async def test_killed_mid_send_on_sqlite_the_restart_resends_at_once_under_the_same_id(tmp_path: Path) -> None:
    p = Portfolio(30, action_rate=0.0, seed=8)
    meter = unarchived(p)[0]
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        hook.script.append("timeout")  # the first request hangs: the process is killed while sending it
        hook.stall = 120
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
            rules_yaml(hook.url()),
        )
        svc = await Service.start(str(cfg))
        p.open_action(meter, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: len(hook.received) == 1)
        in_flight = hook.received[0].headers["webhook-id"]
        assert await svc.stop(signal.SIGKILL) == -signal.SIGKILL
        svc = await Service.start(str(cfg))
        try:
            # at once, not after the 300 s lease: the new instance is the only one on the file
            await wait_until(lambda: [r.headers["webhook-id"] for r in hook.delivered()] == [in_flight], timeout=30)
            released = await svc.wait_for_log("delivery_leases_released")
        finally:
            assert await svc.stop() == 0
    assert released["count"] == 1
    assert opened_codes(hook) == {(meter, "AUTH_0001")}


async def test_a_replica_killed_holding_rows_hands_them_over_when_its_heartbeat_lapses(tmp_path: Path) -> None:
    p = Portfolio(30, action_rate=0.0, seed=8)
    meter = unarchived(p)[0]
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url("postgres", tmp_path) as url,
    ):
        hook.script.append("timeout")
        hook.stall = 120
        cfg = write_config(
            tmp_path, config_yaml(sim.url, url, log_format="json", interval="1s"), rules_yaml(hook.url())
        )
        a = await Service.start(str(cfg))
        p.open_action(meter, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: len(hook.received) == 1)  # a holds the row (a 300 s lease) and is sending
        in_flight = hook.received[0].headers["webhook-id"]
        assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
        # another replica, with a short heartbeat timeout (30 s in production)
        b = InProcess(load(cfg), instance_timeout=2)
        await b.start()
        try:
            stats = await b.drain(60)  # well before the lease would have expired
        finally:
            await b.close()
    assert stats.undelivered == 0 and stats.sent == {"crm": 1}
    assert [r.headers["webhook-id"] for r in hook.delivered()] == [in_flight]
