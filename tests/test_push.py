"""Leap's webhooks in, through the wire: the simulator pushes, the endpoint stores, the worker re-reads
Leap and the webhook receiver hears about it, with a 5-minute poll interval that never gets to run.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from alerter.store.inbox import Inbox, InboxEvent
from alerter.store.sql import SqlStore
from tests.support.push import LEAP_SECRET, OLD_SECRET, REQUIRED, envelope, push_world, wait_until

BACKENDS = ["sqlite", "postgres"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_push_reaches_the_receiver_within_seconds(tmp_path: Path, backend: str) -> None:
    async with push_world(tmp_path, backend, loop=True) as w:
        await w.subscribe()
        m = w.meters[3]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: ("action.opened", m, "AUTH_0001") in w.events())
        w.portfolio.resolve_action(m)
        await wait_until(lambda: ("action.resolved", m, "AUTH_0001") in w.events())
        assert w.events() == [("action.opened", m, "AUTH_0001"), ("action.resolved", m, "AUTH_0001")]
        assert w.metric('alerter_push_received_total{outcome="accepted"}') == 2
        assert w.metric("alerter_push_meter_rereads_total") == 2


async def test_the_same_event_twice_makes_one_notification(tmp_path: Path) -> None:
    async with push_world(tmp_path, loop=True) as w:
        await w.subscribe()
        w.sim.push.add_fault("duplicate")
        m = w.meters[0]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: w.metric('alerter_push_received_total{outcome="duplicate"}') == 1)
        await wait_until(lambda: w.events() == [("action.opened", m, "AUTH_0001")])
        # and posted by hand, long after: acknowledged, dropped
        event_id = str(uuid.uuid4())
        assert await w.post(envelope(event_id, m)) == (200, {"status": "accepted"})
        assert await w.post(envelope(event_id, m)) == (200, {"status": "duplicate"})
        assert w.metric('alerter_push_received_total{outcome="duplicate"}') == 2


async def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        inbox = Inbox(w.service.store)
        m = w.meters[0]
        for secret in (None, "", "not-the-secret", LEAP_SECRET + "x", LEAP_SECRET[:-1]):
            status, body = await w.post(envelope(str(uuid.uuid4()), m), secret=secret)
            assert status == 401
            assert LEAP_SECRET not in str(body)
        status, _ = await w.post(envelope(str(uuid.uuid4()), m), secret=LEAP_SECRET, header="x-other-header")
        assert status == 401
        assert await inbox.backlog() == (0, None)
        assert w.metric('alerter_push_received_total{outcome="unauthorized"}') == 6
        # either secret (rotation), the header name in any case
        assert (await w.post(envelope(str(uuid.uuid4()), m), secret=OLD_SECRET))[0] == 200
        assert (await w.post(envelope(str(uuid.uuid4()), m), header="X-API-KEY"))[0] == 200
        assert (await inbox.backlog())[0] == 2


async def test_a_header_that_is_not_utf8_is_refused_as_any_wrong_secret(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        body = orjson.dumps(envelope(str(uuid.uuid4()), w.meters[0]))
        host, port = w.url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /leap/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"x-api-key: \xff\xfe\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert w.metric('alerter_push_received_total{outcome="unauthorized"}') == 1
        assert await Inbox(w.service.store).backlog() == (0, None)


async def test_an_event_the_store_refuses_fails_no_other_sent_with_it(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        m = w.meters[0]
        refused = str(uuid.uuid4())
        store = w.service.store
        assert isinstance(store, SqlStore)
        async with store._write() as tx:  # the store refuses this one event
            await tx.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON webhook_inbox "
                f"WHEN NEW.event_id = '{refused}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        ids = [str(uuid.uuid4()) for _ in range(20)]
        ids.insert(10, refused)
        answers = await asyncio.gather(*(w.post(envelope(i, m)) for i in ids))
        statuses = {i: status for i, (status, _) in zip(ids, answers, strict=True)}
        assert statuses.pop(refused) == 503
        assert set(statuses.values()) == {200}
        assert (await Inbox(w.service.store).backlog())[0] == 20
        assert w.metric('alerter_push_received_total{outcome="accepted"}') == 20
        assert w.metric('alerter_push_received_total{outcome="error"}') == 1


async def test_bodies_that_are_too_large_not_an_envelope_or_of_an_unused_type(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        inbox = Inbox(w.service.store)
        m = w.meters[0]
        big = envelope(str(uuid.uuid4()), m, partner_reference="x" * (1 << 20))
        assert (await w.post(big))[0] == 413
        for bad in (b"not json", b"[1, 2]", {"payload": {"webhook_event_type": REQUIRED}}, {"webhook_event_id": "a"}):
            assert (await w.post(bad))[0] == 400, bad
        assert (await w.post(envelope(str(uuid.uuid4()), "not-a-uuid")))[0] == 400
        # a UUID and a line break is not a UUID (Leap would refuse to search for it, 400)
        assert (await w.post(envelope(str(uuid.uuid4()), m + "\n")))[0] == 400
        # Leap's definition: webhook_event_id is a UUID (a NUL in it failed PostgreSQL's batch)
        for event_id in (str(uuid.uuid4()) + "\n", "bad\u0000id"):
            assert (await w.post(envelope(event_id, m)))[0] == 400, event_id
        other = {"webhook_event_id": str(uuid.uuid4()), "payload": {"webhook_event_type": "meter.created"}}
        assert await w.post(other) == (200, {"status": "ignored", "webhook_event_type": "meter.created"})
        assert await inbox.backlog() == (0, None)
        assert w.metric('alerter_push_received_total{outcome="too_large"}') == 1
        assert w.metric('alerter_push_received_total{outcome="invalid"}') == 8
        assert w.metric('alerter_push_received_total{outcome="ignored"}') == 1


async def test_a_stale_event_opens_nothing_leap_has_cleared(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        m = w.meters[1]
        action = w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        w.portfolio.resolve_action(m)
        # the push of the opening arrives last, listing an action Leap no longer shows
        assert (await w.post(envelope(str(uuid.uuid4()), m, [action])))[0] == 200
        assert await w.service.push.step() == 1  # type: ignore[union-attr]
        await w.service.drain(10)
        assert w.events() == []
        assert (await Inbox(w.service.store).backlog())[0] == 0


async def test_empty_required_actions_resolve_only_once_the_reread_confirms(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        push = w.service.push
        assert push is not None
        m = w.meters[2]
        w.portfolio.open_action(m, action_type="DOCUMENTS_SIGNED", action_code="DOCS_0001")
        assert (await w.post(envelope(str(uuid.uuid4()), m, [{"action_code": "DOCS_0001"}])))[0] == 200
        assert await push.step() == 1
        await w.service.drain(10)
        assert w.events() == [("action.opened", m, "DOCS_0001")]
        # the push says nothing is left, Leap still lists the action: nothing resolves
        assert (await w.post(envelope(str(uuid.uuid4()), m, [])))[0] == 200
        assert await push.step() == 1
        await w.service.drain(10)
        assert w.events() == [("action.opened", m, "DOCS_0001")]
        # Leap clears it; the same news again now resolves
        w.portfolio.resolve_action(m)
        assert (await w.post(envelope(str(uuid.uuid4()), m, [])))[0] == 200
        assert await push.step() == 1
        await w.service.drain(10)
        assert w.events() == [("action.opened", m, "DOCS_0001"), ("action.resolved", m, "DOCS_0001")]


async def test_a_failed_reread_is_retried_and_events_coalesce_per_meter(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        push = w.service.push
        assert push is not None
        inbox = Inbox(w.service.store)
        meters = w.meters[:5]
        for m in meters:
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        for i in range(40):
            assert (await w.post(envelope(str(uuid.uuid4()), meters[i % 5])))[0] == 200
        w.sim.faults.add("503", times=10)
        assert await push.step() == 40
        assert (await inbox.backlog())[0] == 40  # kept, due again after a backoff
        assert await push.step() == 0
        w.sim.faults.clear()
        before = len(w.sim.requests)
        later = w.service.clock() + timedelta(seconds=5)
        assert await push.step(later) == 40
        searches = [r for r in list(w.sim.requests)[before:] if r.path.endswith("/search")]
        assert len(searches) == 1 and sorted(searches[0].body["meter_ids"]) == sorted(meters)
        await w.service.drain(10)
        assert sorted(w.events()) == sorted(("action.opened", m, "AUTH_0001") for m in meters)
        assert w.metric('alerter_push_processed_total{outcome="retry"}') == 40
        assert (await inbox.backlog())[0] == 0


async def test_a_dropped_push_is_found_by_the_next_poll_and_counted_missed(tmp_path: Path) -> None:
    async with push_world(tmp_path, loop=True, action_rate=0.05) as w:
        await w.subscribe()
        free = [m for m in w.meters if not w.portfolio.meter(m)["required_actions"]["partner"]]
        announced, dropped = free[0], free[1]
        w.portfolio.open_action(announced, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: ("action.opened", announced, "AUTH_0001") in w.events())
        w.sim.push.add_fault("drop")
        w.portfolio.open_action(dropped, action_type="HAS_AMI", action_code="AMI_0001")
        await wait_until(lambda: w.sim.push.stats["dropped"] == 1)
        await w.service.run_cycle(flush_all=True)  # the next poll
        await w.service.drain(10)
        assert [e for e in w.events() if e[1] == dropped] == [("action.opened", dropped, "AMI_0001")]
        assert w.metric("alerter_push_missed_total") == 1


async def test_an_event_naming_no_meter_by_uuid_is_given_up_and_the_others_go_on(tmp_path: Path) -> None:
    """Stored by an older version, whose check let a UUID and a line break in: Leap refuses to
    search for it, and re-read with the others it held them all back for a day."""
    async with push_world(tmp_path) as w:
        push = w.service.push
        assert push is not None
        inbox = Inbox(w.service.store)
        m = w.meters[0]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        now = w.service.clock()
        legacy = InboxEvent(str(uuid.uuid4()), m + "\n", REQUIRED, now, "{}")
        assert await inbox.add([legacy]) == [True]
        assert (await w.post(envelope(str(uuid.uuid4()), m)))[0] == 200
        assert await push.step() == 1
        await w.service.drain(10)
        assert w.events() == [("action.opened", m, "AUTH_0001")]
        assert (await inbox.backlog())[0] == 0
        assert w.metric('alerter_push_processed_total{outcome="given_up"}') == 1
        assert w.metric('alerter_push_processed_total{outcome="done"}') == 1


async def test_processed_events_are_forgotten_after_two_days_though_none_waits(tmp_path: Path) -> None:
    async with push_world(tmp_path) as w:
        push = w.service.push
        assert push is not None
        store = w.service.store
        assert isinstance(store, SqlStore)

        async def stored() -> int:
            async with store._read() as tx:
                return int(await tx.fetchval("SELECT COUNT(*) FROM webhook_inbox"))

        assert (await w.post(envelope(str(uuid.uuid4()), w.meters[0])))[0] == 200
        assert await push.step() == 1
        assert await stored() == 1
        # nothing waits from now on: the steps that follow still forget what is old enough
        later = w.service.clock()
        for hours in (1, 25, 49):
            assert await push.step(later + timedelta(hours=hours)) == 0
        assert await stored() == 0


async def test_a_large_inbox_of_an_earlier_version_is_purged_a_batch_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alerter.store import inbox as inbox_module

    async with push_world(tmp_path) as w:
        inbox = Inbox(w.service.store)
        now = w.service.clock()
        old = now - timedelta(days=10)
        events = [InboxEvent(str(uuid.uuid4()), w.meters[0], REQUIRED, old, "{}") for _ in range(7)]
        await inbox.add(events)
        await inbox.done([e.event_id for e in events], old)
        monkeypatch.setattr(inbox_module, "PURGE_BATCH", 3)
        assert await inbox.purge(now - timedelta(days=2)) == 7
        assert await inbox.purge(now - timedelta(days=2)) == 0


async def test_a_store_failing_the_push_steps_is_said_in_one_line_each_and_waited_out(tmp_path: Path) -> None:
    """The inbox unreadable (its table renamed away, as an outage would fail it): a warning line
    each time, 1 s, 2 s, 4 s apart, not a traceback every second; once it reads, pushes go on."""
    import sqlite3

    from structlog.testing import capture_logs

    async with push_world(tmp_path, loop=True) as w:
        await w.subscribe()
        with sqlite3.connect(tmp_path / "state.db") as c:
            c.execute("ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away")
        with capture_logs() as logs:
            await asyncio.sleep(5)
        said = [e for e in logs if str(e["event"]).startswith("push_step")]
        assert 2 <= len(said) <= 3 and {e["event"] for e in said} == {"push_step_failed"}, said
        assert [e["retry_in_s"] for e in said][:2] == [1.0, 2.0] and "exc_info" not in said[0]
        with sqlite3.connect(tmp_path / "state.db") as c:
            c.execute("ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox")
        m = w.meters[2]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await wait_until(lambda: ("action.opened", m, "AUTH_0001") in w.events(), timeout=30)
