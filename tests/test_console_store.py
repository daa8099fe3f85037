"""The console's queries, one suite on SQLite and PostgreSQL: filters, keyset pages, a meter's
timeline, silences, replays, receivers and sessions, each mutation with its author."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from alerter.console.core import ObligationQuery, parse_obligation_query
from alerter.models import Meter, Obligation, RoutingWrite, Silence
from alerter.store.base import Store
from alerter.store.console import ConsoleStore
from tests.support.stores import BACKENDS, T0, event, notification, obligation, outbox, store_for

NOW = T0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_for(request.param, tmp_path) as opened:
        opened.set_fence(await opened.try_acquire_leadership("test"))
        yield opened


def ob(
    i: int, *, region: str = "CAISO", deadline_days: float | None = 1.0, tags: tuple[str, ...] = (), **over: object
) -> Obligation:
    meter = Meter(meter_id=f"m{i:03}", partner_reference=f"REF-{i:03}", transmission_region=region, tags=tags)
    deadline = None if deadline_days is None else NOW + timedelta(days=deadline_days)
    return replace(obligation(f"m{i:03}", "AUTH_1", deadline=deadline, **over), meter=meter)


async def test_pages_walk_every_obligation_once_in_deadline_order(store: Store) -> None:
    dated = [ob(i, deadline_days=(i % 7) - 2) for i in range(23)]
    undated = [ob(100 + i, deadline_days=None) for i in range(6)]
    resolved = [ob(200, status="resolved", resolution="cleared", resolved_at=NOW)]
    await store.commit_page(dated + undated + resolved, [])
    cs = ConsoleStore(store)
    seen: list[Obligation] = []
    q = ObligationQuery(limit=5)
    while True:
        page = await cs.obligations(q, NOW)
        assert page.total == 29
        seen += page.obligations
        if page.next_cursor is None:
            break
        q = parse_obligation_query({"limit": "5", "cursor": page.next_cursor})
    expected = sorted(dated, key=lambda o: (o.deadline, o.key_id)) + sorted(undated, key=lambda o: o.key_id)
    assert seen == expected
    resolved_page = await cs.obligations(ObligationQuery(state="resolved"), NOW)
    assert [o.meter_id for o in resolved_page.obligations] == ["m200"] and resolved_page.total == 1


async def test_filters_select_what_they_name(store: Store) -> None:
    rows = [
        ob(1, region="CAISO", deadline_days=-1, tags=("vip",)),
        ob(2, region="NYISO", deadline_days=0.5),
        ob(3, region="NYISO", deadline_days=3, action_type="ENROLL"),
        ob(4, region="CAISO", deadline_days=30),
        ob(5, deadline_days=None),
    ]
    await store.commit_page(rows, [])
    cs = ConsoleStore(store)

    async def ids(**params: str) -> list[str]:
        page = await cs.obligations(parse_obligation_query(params), NOW)
        assert page.total == len(page.obligations)
        return [o.meter_id for o in page.obligations]

    assert await ids(transmission_region="NYISO") == ["m002", "m003"]
    assert await ids(action_type="ENROLL") == ["m003"]
    assert await ids(tag="vip") == ["m001"]
    assert await ids(q="REF-004") == ["m004"]
    assert await ids(q="m004") == ["m004"]
    assert await ids(deadline_within="7d") == ["m001", "m002", "m003"]
    assert await ids(deadline="overdue") == ["m001"]
    assert await ids(deadline="24h") == ["m002"]
    assert await ids(deadline="7d") == ["m003"]
    assert await ids(deadline="later") == ["m004"]
    assert await ids(deadline="none") == ["m005"]
    assert await ids(program_identifier="CCA", delivery_period="CAISO-CCA_2026_DEC", transmission_region="CAISO") == [
        "m001",
        "m004",
        "m005",
    ]
    # receiver: obligations whose opening was told to it
    e = event(rows[3])
    await store.commit_page([], [e])
    await outbox(store, notification("n1", [e], receiver="crm"))
    assert await ids(receiver="crm") == ["m004"]
    summary = await cs.open_summary(NOW)
    assert summary["bucket"] == {"24h": 1, "7d": 1, "later": 1, "none": 1, "overdue": 1}
    assert summary["transmission_region"] == {"CAISO": 3, "NYISO": 2}
    assert summary["action_type"] == {"IS_AUTHORIZED": 4, "ENROLL": 1}
    assert summary["program_identifier"] == {"CCA": 5}
    assert await cs.filter_values() == {
        "action_type": ["ENROLL", "IS_AUTHORIZED"],
        "transmission_region": ["CAISO", "NYISO"],
    }


async def test_meter_by_reference_has_its_timeline_and_who_replayed(store: Store) -> None:
    o = ob(7)
    opened, reminder = event(o), event(o, "reminder", NOW + timedelta(hours=1), detail="before:2d")
    await store.commit_page([o], [opened, reminder])
    await outbox(store, notification("n-open", [opened], receiver="crm"))
    await store.add_silence(Silence("s1", {"meter_id": "m007"}, NOW, NOW + timedelta(days=1), "maintenance", "bob"))
    await store.commit_routing(RoutingWrite(consumed=[opened.id, reminder.id], silenced=[(reminder.id, "s1")]))
    await store.mark_failed("n-open", "crm", "HTTP 500", None, NOW)
    cs = ConsoleStore(store)
    assert await cs.replay(["n-open", "unknown"], "alice", NOW + timedelta(hours=2)) == ["n-open"]
    assert await cs.replay(["n-open"], "alice", NOW) == []  # no longer dead
    view = await cs.meter("REF-007")
    assert view is not None and view.meter_id == "m007" and view.obligations == [o]
    history = view.history
    assert [(h["event"], h.get("receiver"), h["status"]) for h in history] == [
        ("opened", "crm", "pending"),
        ("reminder", None, "silenced"),
        ("delivery.replay", None, ""),
    ]
    assert history[0]["rule"] == "r1" and history[0]["attempts"] == 0 and history[0]["group"] == {"region": "CAISO"}
    assert history[1]["silenced_by"] == "s1" and history[1]["silence_author"] == "bob"
    assert history[2]["actor"] == "alice" and history[2]["notification_id"] == "n-open"
    assert await cs.meter("nobody") is None


async def test_silences_keep_who_made_and_who_expired_them(store: Store) -> None:
    cs = ConsoleStore(store)
    day = timedelta(days=1)
    await cs.add_silence(Silence("a", {"meter_id": "m1"}, NOW, NOW + day, "why a", "alice", NOW), NOW)
    await cs.add_silence(Silence("b", {"meter_id": "m2"}, NOW + day, NOW + 2 * day, "why b", "bob", NOW), NOW)
    assert await cs.expire_silence("a", "carol", NOW + timedelta(hours=1))
    assert not await cs.expire_silence("a", "carol", NOW + timedelta(hours=2))
    listed = {s["id"]: s for s in await cs.silences(NOW + timedelta(hours=2))}
    assert listed["a"]["state"] == "expired" and listed["a"]["expired_by"] == "carol"
    assert listed["a"]["created_by"] == "alice"
    assert listed["b"]["state"] == "pending" and listed["b"]["expired_by"] is None


async def test_dead_letters_receivers_and_sessions(store: Store) -> None:
    cs = ConsoleStore(store)
    a, b = ob(1), ob(2)
    ea, eb = event(a), event(b)
    await store.commit_page([a, b], [ea, eb])
    await outbox(store, notification("na", [ea], receiver="crm"), notification("nb", [eb], receiver="ops"))
    await store.mark_failed("na", "crm", "HTTP 410", None, NOW)
    await store.mark_sent("nb", "ops", NOW, None)
    assert [d["notification_id"] for d in await cs.dead_matching(None, None)] == ["na"]
    assert await cs.dead_matching(None, "ops") == []
    assert [d["meter_id"] for d in await cs.dead_matching(["na", "nb"], None)] == ["m001"]
    items, nxt = await cs.deliveries(None, None, 1)
    assert len(items) == 1 and nxt is not None
    rest, end = await cs.deliveries(None, None, 5, nxt)
    assert {items[0]["notification_id"], rest[0]["notification_id"]} == {"na", "nb"} and end is None
    assert [d["status"] for d in (await cs.deliveries("dead", "crm", 10))[0]] == ["dead"]

    await store.set_receiver_disabled("crm", "HTTP 410 Gone", NOW)
    state = await cs.receiver_state(NOW)
    assert state.disabled["crm"][0] == "HTTP 410 Gone" and state.last_success["ops"] == NOW
    assert state.failures["crm"][0]["last_error"] == "HTTP 410"
    assert await cs.enable_receiver("crm", "alice", NOW)
    assert not await cs.enable_receiver("crm", "alice", NOW)
    assert (await cs.receiver_state(NOW)).enabled_by["crm"]["actor"] == "alice"

    await cs.create_session("hash1", "alice", "csrf1", NOW, timedelta(hours=1))
    got = await cs.session("hash1", NOW + timedelta(minutes=59))
    assert got is not None and got.username == "alice" and got.csrf == "csrf1"
    assert await cs.session("hash1", NOW + timedelta(hours=1)) is None
    await cs.end_session("hash1")
    assert await cs.session("hash1", NOW) is None


async def test_a_reference_a_new_meter_took_over_finds_the_meter_seen_last(store: Store) -> None:
    old = ob(1, status="resolved", resolution="cleared", resolved_at=NOW, opened_at=NOW - timedelta(days=9))
    old = replace(old, first_seen=old.opened_at, last_seen=NOW)
    new = ob(2, opened_at=NOW + timedelta(days=5), first_seen=NOW + timedelta(days=5))
    new = replace(new, last_seen=new.opened_at, meter=replace(new.meter, partner_reference="REF-001"))
    await store.commit_page([old, new], [])  # the reference moved to a replacement meter
    view = await ConsoleStore(store).meter("REF-001")
    assert view is not None and view.meter_id == "m002"
