"""Delivery workers on a real SQLite ledger and loopback receivers: one per receiver, woken by
new rows, following reloads, stopping with the sends in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerter.delivery import Deliverer, DeliveryStats, RetryPolicy
from alerter.models import Notification, RoutingWrite
from alerter.notifiers.base import Notifier
from alerter.notifiers.webhook import WebhookNotifier
from alerter.receivers import WebhookConfig
from alerter.store import open_store
from alerter.store.base import Store
from alerter.workers import DeliveryWorkers
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.notifications import event, notification

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await s.open()
    yield s
    await s.close()


def now() -> datetime:
    return datetime.now(UTC)


def note(nid: str, receiver: str) -> Notification:
    """A notification about an obligation of its own (notifications about one obligation go out
    one after another: `Deliverer._in_order`)."""
    return notification(nid, [event(sum(map(ord, nid)))], receiver=receiver, created_at=now())


def hook_notifier(hook: WebhookCollector, name: str, timeout: str = "15s") -> WebhookNotifier:
    return WebhookNotifier(
        name, WebhookConfig.model_validate({"url": hook.url(), "secret": SECRET, "timeout": timeout})
    )


async def enqueue(store: Store, *notes: Notification) -> None:
    await store.commit_routing(RoutingWrite(consumed=[], notifications=list(notes)))


async def wait_until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def ids(hook: WebhookCollector) -> list[str]:
    return [r.headers["webhook-id"] for r in hook.delivered()]


async def test_a_stalled_receiver_blocks_only_itself_and_stopping_releases_its_rows(store: Store) -> None:
    async with webhook_collector([SECRET]) as slow, webhook_collector([SECRET]) as fast:
        slow.script.extend(["timeout"] * 10)
        slow.stall = 30
        notifiers: dict[str, Notifier] = {"slow": hook_notifier(slow, "slow"), "fast": hook_notifier(fast, "fast")}
        one_at_a_time = {"webhook": RetryPolicy(base=10, cap=3600, max_attempts=20, budget=43200, in_flight=1)}
        deliverer = Deliverer(store, notifiers, "w1", one_at_a_time)
        reports: list[DeliveryStats] = []
        workers = DeliveryWorkers(deliverer, now, reports.append, idle=30)  # only a wake gets a new row out soon
        await enqueue(store, *(note(f"s{i}", "slow") for i in range(3)), note("f0", "fast"))
        workers.start()
        try:
            await wait_until(lambda: ids(fast) == ["f0"] and len(slow.received) == 1)
            await enqueue(store, note("f1", "fast"))
            workers.wake(["fast"])
            await wait_until(lambda: ids(fast) == ["f0", "f1"])
            assert len(slow.received) == 1 and not slow.delivered()  # still stuck on its first send
        finally:
            await workers.stop(grace=0.2)
            for n in notifiers.values():
                await n.close()
        assert workers.receivers == ["fast", "slow"]
        assert sum(sum(r.sent.values()) for r in reports) == 2
        # the cancelled send's row and the two waiting behind it are leased to w1 until it lets go
        assert await store.claim_deliveries(now(), "w2", 10, 60) == []
        assert await store.stop_instance("w1") == 3
        assert sorted(d.notification.id for d in await store.claim_deliveries(now(), "w2", 10, 60)) == [
            "s0",
            "s1",
            "s2",
        ]


async def test_workers_follow_the_receivers_a_reload_names(store: Store) -> None:
    async with webhook_collector([SECRET]) as a, webhook_collector([SECRET]) as b:
        to_a, to_b = hook_notifier(a, "a"), hook_notifier(b, "b")
        deliverer = Deliverer(store, {"a": to_a}, "w1")
        workers = DeliveryWorkers(deliverer, now, lambda _: None, idle=0.1)
        workers.start()
        try:
            assert workers.receivers == ["a"]
            deliverer.notifiers = {"a": to_a, "b": to_b}  # what Service.reload does
            await enqueue(store, note("b0", "b"))
            workers.wake(["b"])
            await wait_until(lambda: ids(b) == ["b0"])
            deliverer.notifiers = {"b": to_b}
            await wait_until(lambda: workers.receivers == ["b"])
        finally:
            await workers.stop(grace=5)
            await to_a.close()
            await to_b.close()


async def test_only_the_leader_dead_letters_the_rows_of_a_receiver_its_rules_do_not_name(store: Store) -> None:
    # a follower that has not reloaded yet does not know the receiver the leader's new rules
    # route to: its rows wait for a replica that knows it, not in the dead letters
    leader = False
    reports: list[DeliveryStats] = []
    workers = DeliveryWorkers(Deliverer(store, {}, "w1"), now, reports.append, idle=0.05, sweeps=lambda: leader)
    await enqueue(store, note("n-new", "added"))
    workers.start()
    try:
        await asyncio.sleep(0.3)
        assert await store.dead_letters() == [] and not any(r.dead for r in reports)
        leader = True  # its rules route: a receiver they do not name is gone
        await wait_until(lambda: any(r.dead for r in reports))
    finally:
        await workers.stop(grace=1)
    [dead] = await store.dead_letters()
    assert (dead.receiver, dead.last_error) == ("added", "receiver not configured")
