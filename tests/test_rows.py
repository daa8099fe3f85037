"""A stored row that cannot be read is skipped and named instead of stopping the others: an
obligation by the open-obligation walk (the reminders go on with the others), an event by
routing and by delivery (the rest of its notification is sent)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import msgspec
from structlog.testing import capture_logs

from alerter.models import Notification
from alerter.sim import Portfolio, SimServer
from alerter.store.sqlite import SqliteStore
from tests.support.channels import webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config
from tests.test_rules import NOW, make_event


async def test_open_obligations_skip_an_unreadable_row_and_name_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        store.set_fence(1)
        first, bad, last = (make_event(meter_id=f"M-{i}").obligation for i in (1, 2, 3))
        await store.commit_page([first, bad, last], [])
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE obligations SET meter = '{\"nope\": 1}' WHERE meter_id = 'M-2'")
        ordered = sorted([first, bad, last], key=lambda o: o.key_id)  # the order pages read them in
        assert await store.open_obligations() == [o for o in ordered if o is not bad]
        [problem] = store.unreadable
        assert problem.startswith("M-2/") and "meter_id" in problem
        # keyset pages step over it too
        assert await store.open_obligations("", 2) == [o for o in ordered[:2] if o is not bad]
        assert await store.open_obligations(ordered[0].key_id, 2) == [o for o in ordered[1:] if o is not bad]
    finally:
        await store.close()


async def test_a_cycle_goes_on_past_an_unreadable_obligation_and_logs_it(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=3)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:3]
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"),
            rules_yaml(hook.url(), remind="{every: 1h}"),
        )
        async with running(load(cfg)) as service:
            await service.run_cycle(flush_all=True)
            with sqlite3.connect(tmp_path / "s.db") as raw:
                raw.execute("UPDATE obligations SET meter = '{}' WHERE meter_id = ?", (meters[1],))
            with capture_logs() as logs:
                later = service.clock() + timedelta(hours=2)
                await service.run_cycle(later, flush_all=True)
            [entry] = [e for e in logs if e["event"] == "obligation_unreadable"]
            assert entry["obligation"].startswith(meters[1])
            for m in (meters[0], meters[2]):  # the others' reminders went on
                assert [h.event.detail for h in await service.store.history(m) if h.event.kind == "reminder"] == [
                    "every:2"
                ]


async def test_a_notification_stored_with_its_events_copied_is_still_delivered_whole(tmp_path: Path) -> None:
    """Notifications written before events were linked carry them in their payload."""
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        evs = (make_event(meter_id="M-1"), make_event(meter_id="M-2"))
        old = Notification(id="old-1", rule="r", receiver="ops", events=evs, created_at=NOW)
        with sqlite3.connect(path) as raw:
            raw.execute(
                "INSERT INTO notifications (id, kind, rule, receiver, created_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                ("old-1", "notification", "r", "ops", NOW.isoformat(), msgspec.json.encode(old).decode()),
            )
            raw.execute(
                "INSERT INTO deliveries (notification_id, receiver, status, attempts, next_attempt_at, updated_at) "
                "VALUES ('old-1', 'ops', 'pending', 0, ?, ?)",
                (NOW.isoformat(), NOW.isoformat()),
            )
        [d] = await store.claim_deliveries(NOW, "w", 10, 60)
        assert d.notification == old
    finally:
        await store.close()


def _open_actions(p: Portfolio, meters: list[str]) -> None:
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")


def _damage(path: Path, meter_id: str) -> str:
    """The id of the meter's latest event, whose stored payload is now damaged."""
    with sqlite3.connect(path) as raw:
        [(event_id,)] = raw.execute("SELECT id FROM events WHERE meter_id = ? ORDER BY seq DESC LIMIT 1", (meter_id,))
        raw.execute("UPDATE events SET payload = x'02deadbeef' WHERE id = ?", (event_id,))
    return str(event_id)


async def test_routing_and_delivery_go_on_past_a_stored_event_that_cannot_be_read(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=3)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:6]
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        async with running(load(cfg)) as service:
            await service.run_cycle(flush_all=True)
            metric = service.metrics.registry.get_sample_value
            # a pending event damaged before routing reads it: the others are routed and sent
            _open_actions(p, meters[:3])
            now = service.clock()
            await service.poller.run_cycle(now, force_reconcile=True)
            pending = _damage(tmp_path / "s.db", meters[1])
            with capture_logs() as logs:
                await service.run_cycle(now, flush_all=True)
                await service.run_cycle(now, flush_all=True)  # consumed: not read, nor named, again
                await service.drain(5)
            [entry] = [e for e in logs if e["event"] == "event_unreadable"]
            assert entry["event_id"] == pending and entry["skipped_by"] == "routing"
            assert metric("alerter_events_unreadable_total", {"step": "routing"}) == 1
            [body] = [r.body for r in hook.delivered()]
            assert sorted(e["meter"]["meter_id"] for e in body["data"]["events"]) == sorted([meters[0], meters[2]])
            # an event damaged after routing linked it, while its receiver was down: the rest is sent
            hook.script.append(503)
            _open_actions(p, meters[3:])
            await service.run_cycle(now, flush_all=True, force_reconcile=True)
            await service.deliver_step(now)  # refused: retried later
            linked = _damage(tmp_path / "s.db", meters[4])
            with capture_logs() as logs:
                await service.deliver_step(now + timedelta(hours=1))
            [entry] = [e for e in logs if e["event"] == "stored_part_unreadable"]
            assert entry["error"].startswith(f"{linked}: stored payload cannot be unpacked")
            assert metric("alerter_events_unreadable_total", {"step": "delivery"}) == 1
            _, last = hook.delivered()
            assert sorted(e["meter"]["meter_id"] for e in last.body["data"]["events"]) == sorted([meters[3], meters[5]])
            # a notification whose own row is damaged: set apart as a dead letter, named
            hook.script.append(503)
            p.open_action(meters[0], action_type="IS_AUTHORIZED", action_code="AUTH_0002")
            await service.run_cycle(now, flush_all=True, force_reconcile=True)
            await service.deliver_step(now)
            with sqlite3.connect(tmp_path / "s.db") as raw:
                raw.execute(
                    "UPDATE notifications SET payload = '{' WHERE id NOT IN (SELECT notification_id "
                    "FROM deliveries WHERE status = 'sent')"
                )
            await service.deliver_step(now + timedelta(hours=1))
            [dead] = await service.store.dead_letters()
            assert dead.last_error is not None and dead.last_error.startswith(
                "nothing of it can be read: notification:"
            )
            assert len(hook.delivered()) == 2


async def test_an_initial_digest_goes_on_past_a_stored_event_that_cannot_be_read(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=3)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:3]
    _open_actions(p, meters)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        state = f"sqlite:///{tmp_path}/s.db"
        cfg = write_config(tmp_path, config_yaml(sim.url, state, initial_sync="digest"), rules_yaml(hook.url()))
        async with running(load(cfg)) as service:
            now = service.clock()
            await service.poller.run_cycle(now)  # the initial sync's events, not yet routed
            damaged = _damage(tmp_path / "s.db", meters[1])
            with capture_logs() as logs:
                await service.run_cycle(now, flush_all=True)
                await service.drain(5)
            [entry] = [e for e in logs if e["event"] == "event_unreadable"]
            assert entry["event_id"] == damaged and entry["skipped_by"] == "digest"
            [digest] = [r.body for r in hook.delivered()]
            assert digest["type"] == "alerter.digest"
            assert sorted(e["meter"]["meter_id"] for e in digest["data"]["events"]) == sorted([meters[0], meters[2]])
            assert await service.store.pending_events() == []  # consumed with the rest
