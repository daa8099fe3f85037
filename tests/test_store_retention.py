"""Retention on both stores: what is done with and old is forgotten; open obligations' events,
pending deliveries, dead letters and obligations themselves stay."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from alerter.models import Event, GroupState, RoutingWrite, Silence
from alerter.store import retention
from alerter.store.sqlite import _sqlite_sql
from tests.support.stores import BACKENDS, T0, event, notification, obligation, outbox, store_for

DAY = timedelta(days=1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_forgets_only_what_is_done_with(tmp_path: Path, backend: str) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        gone = obligation("m1", "AUTH_1")
        gone_done = replace(gone, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        still_open = obligation("m2", "AUTH_2")
        dead = obligation("m3", "AUTH_3")
        dead_done = replace(dead, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        opened = [event(gone), event(still_open), event(dead)]
        resolved = [event(gone_done, "resolved", T0 + DAY), event(dead_done, "resolved", T0 + DAY)]
        await store.commit_page([gone_done, still_open, dead_done], [*opened, *resolved])
        await store.commit_routing(RoutingWrite(consumed=[e.id for e in [*opened, *resolved]]))
        await outbox(
            store,
            notification("n-gone", [opened[0], resolved[0]]),
            notification("n-open", [opened[1]]),
            notification("n-dead", [opened[2], resolved[1]]),
        )
        for nid in ("n-gone", "n-open"):
            await store.mark_sent(nid, "ops", T0, None)
        await store.mark_failed("n-dead", "ops", "410 Gone", None, T0)

        removed = await store.purge(T0 + 90 * DAY)

        assert removed["notifications"] == 1
        assert removed["events"] == 2  # the gone obligation's opened+resolved; the dead letter's stay with it
        if backend == "sqlite":  # the forgotten notification's links went with its events
            with sqlite3.connect(tmp_path / "state.db") as raw:
                orphans = (
                    "SELECT COUNT(*) FROM notification_links "
                    "WHERE notification_seq NOT IN (SELECT seq FROM notifications)"
                )
                assert raw.execute(orphans).fetchone() == (0,)
                assert raw.execute("SELECT COUNT(*) FROM notification_links").fetchone() == (3,)  # n-open's, n-dead's
            raw.close()
        assert [(d.notification.id, len(d.notification.events)) for d in await store.dead_letters()] == [("n-dead", 2)]
        assert await store.history("m1") == []
        assert [h.event.kind for h in await store.history("m2")] == ["opened"]  # open: kept
        kept = await store.load_obligations(["m1", "m2", "m3"])
        assert {o.meter_id: o.version for o in kept.values()} == {"m1": 2, "m2": 1, "m3": 2}
        assert await store.purge(T0 + 90 * DAY) == {"events": 0, "notifications": 0, "deliveries": 0, "silences": 0}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_keeps_recent_history(tmp_path: Path, backend: str) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        ob = obligation("m1", "AUTH_1")
        done = replace(ob, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        await store.commit_page([done], [event(ob), event(done, "resolved", T0 + DAY)])
        await store.commit_routing(RoutingWrite(consumed=[event(ob).id, event(done, "resolved").id]))
        assert (await store.purge(T0))["events"] == 0  # resolved after the cutoff: kept
        assert len(await store.history("m1")) == 2


def _old_resolved(meter_id: str, code: str) -> list[Event]:
    ob = obligation(meter_id, code)
    done = replace(ob, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
    return [event(ob), event(done, "resolved", T0 + DAY)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_keeps_events_still_waiting_in_a_group_or_a_pending_delivery(tmp_path: Path, backend: str) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        grouped, pending, done = _old_resolved("m1", "A_1"), _old_resolved("m2", "A_2"), _old_resolved("m3", "A_3")
        every = [*grouped, *pending, *done]
        await store.commit_page([e.obligation for e in every[1::2]], every)
        group = GroupState(key="g", rule="r", receiver="ops", values={}, flush_at=T0 + 200 * DAY)
        await store.commit_routing(
            RoutingWrite(consumed=[e.id for e in every], groups=[group], appended=[("g", grouped[1].id)])
        )
        await outbox(store, notification("n-pending", pending[:1]), notification("n-sent", done))
        await store.mark_sent("n-sent", "ops", T0, None)

        removed = await store.purge(T0 + 90 * DAY)

        # m1's resolution waits in a group, m2's opening in a delivery not yet made: both kept
        assert removed["events"] == 4
        assert [h.event.id for h in await store.history("m1")] == [grouped[1].id]
        assert [h.event.id for h in await store.history("m2")] == [pending[0].id]
        assert await store.history("m3") == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_keeps_a_silence_a_kept_history_names_and_the_thread_a_dead_letter_answers_in(
    tmp_path: Path, backend: str
) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        # an open obligation whose reminder a silence, long expired, muted
        ob = obligation("m1", "AUTH_1")
        opened, reminder = event(ob), event(ob, "reminder", T0 + DAY, detail="every:1")
        await store.commit_page([ob], [opened, reminder])
        await store.add_silence(Silence("s1", {"meter_id": "m1"}, T0, T0 + 2 * DAY, "site visit"))
        await store.commit_routing(RoutingWrite(consumed=[opened.id, reminder.id], silenced=[(reminder.id, "s1")]))
        # a resolved obligation whose resolution is a dead letter to a receiver with its thread
        gone = _old_resolved("m2", "A_2")
        await store.commit_page([gone[1].obligation], gone)
        await store.commit_routing(RoutingWrite(consumed=[e.id for e in gone]))
        await store.set_thread("ops", gone[0].obligation.key_id, "C1:1.0")
        await outbox(store, notification("n-resolved", gone[1:]))
        await store.mark_failed("n-resolved", "ops", "HTTP 500", None, T0)
        # another resolved obligation of the same receiver, nothing of it left to send: its thread goes
        other = _old_resolved("m3", "A_3")
        await store.commit_page([other[1].obligation], other)
        await store.commit_routing(RoutingWrite(consumed=[e.id for e in other]))
        await store.set_thread("ops", other[0].obligation.key_id, "C1:3.0")

        removed = await store.purge(T0 + 90 * DAY)

        assert removed["silences"] == 0
        assert [h.outcomes for h in await store.history("m1")][-1] == ("silenced s1",)
        assert await store.get_thread("ops", gone[0].obligation.key_id) == "C1:1.0"
        assert await store.get_thread("ops", other[0].obligation.key_id) is None
        await store.replay_dead_letters(T0 + 91 * DAY)
        await store.mark_sent("n-resolved", "ops", T0 + 91 * DAY, None)
        await store.purge(T0 + 90 * DAY)  # nothing left to send: the thread goes
        assert await store.get_thread("ops", gone[0].obligation.key_id) is None


async def test_sqlite_purge_reads_members_and_pending_deliveries_once_whatever_the_statistics(
    tmp_path: Path,
) -> None:
    # members have no index by event: searched per old event (without the planner's statistics,
    # a file never closed cleanly), a purge scans every member for each one, inside the write lock
    async with store_for("sqlite", tmp_path):
        pass
    with sqlite3.connect(tmp_path / "state.db") as raw:
        raw.execute("DROP TABLE IF EXISTS sqlite_stat1")
        plan = raw.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM events WHERE " + _sqlite_sql(retention._OLD_EVENTS_SQLITE), ("x",)
        ).fetchall()
    steps = [detail for *_, detail in plan]
    assert not any(s.startswith("CORRELATED") for s in steps), steps
    assert sum(s.startswith("LIST SUBQUERY") for s in steps) == 3, steps


async def test_sqlite_purge_leaves_the_planner_statistics_behind(tmp_path: Path) -> None:
    # a service killed, never closing its file, never ran `PRAGMA optimize`: the purge refreshes them
    async with store_for("sqlite", tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        await store.commit_page([e.obligation for e in _old_resolved("m1", "A_1")], _old_resolved("m1", "A_1"))
        with sqlite3.connect(tmp_path / "state.db") as raw:
            raw.execute("DROP TABLE IF EXISTS sqlite_stat1")
        await store.purge(T0 + 90 * DAY)
        with sqlite3.connect(tmp_path / "state.db") as raw:
            analyzed = {t for (t,) in raw.execute("SELECT tbl FROM sqlite_stat1")}
    assert {"obligations", "events"} <= analyzed  # the tables holding rows (empty ones have no statistics)


async def test_sqlite_purge_forgets_the_links_of_the_events_it_forgets(tmp_path: Path) -> None:
    # SQLite links an event by its number (schema `_NUMBERED_LINKS`), and numbers the next event
    # after the largest left: forgotten last, their numbers are given again
    async with store_for("sqlite", tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        gone = obligation("m1", "AUTH_1")
        done = replace(gone, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        old = [event(gone), event(done, "resolved", T0 + DAY)]
        await store.commit_page([done], old)
        await store.commit_routing(RoutingWrite(consumed=[e.id for e in old]))
        await outbox(store, notification("n-late", old, at=T0 + 100 * DAY))  # recent: it stays
        await store.mark_sent("n-late", "ops", T0 + 100 * DAY, None)

        removed = await store.purge(T0 + 90 * DAY)

        assert (removed["events"], removed["notifications"]) == (2, 0)
        fresh = event(obligation("m2", "AUTH_2"), at=T0 + 101 * DAY)
        await store.commit_page([fresh.obligation], [fresh])
        assert [h.outcomes for h in await store.history("m2")] == [()]  # not "notified ops in n-late"
