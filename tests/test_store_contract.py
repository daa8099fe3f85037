"""One contract for every Store backend: the same tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from msgspec import structs

from alerter.models import EventRef, GroupState, Meter, Obligation, RoutingWrite, Silence
from alerter.store import base
from alerter.store.base import META_CONSUMING, Failed, Sent, Store
from alerter.store.memory import GroupBook
from tests.support.stores import BACKENDS, DEADLINE, T0, event, notification, obligation, outbox, store_for


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_for(request.param, tmp_path) as opened:
        yield opened


async def test_meta_and_emptiness(store: Store) -> None:
    assert await store.is_empty()
    assert await store.get_meta("watermark") is None
    await store.set_meta({"watermark": "2026-11-01T00:00:00Z", "other": "x"})
    await store.set_meta({"watermark": "2026-11-02T00:00:00Z"})
    assert await store.get_meta("watermark") == "2026-11-02T00:00:00Z"
    assert await store.get_meta("other") == "x"
    assert await store.is_empty()
    await store.set_meta({"initialized": "1"})
    assert not await store.is_empty()


async def test_commit_page_upserts_and_counts_new_events_once(store: Store) -> None:
    a, b = obligation("m1", "A"), obligation("m1", "B")
    ea, eb = event(a), event(b, initial=True)
    assert await store.commit_page([a, b], [ea, eb, ea], {"page": "1"}) == 2
    assert not await store.is_empty()
    assert await store.commit_page([a], [ea]) == 0
    changed = structs.replace(a, action_description="New.", deadline=None, version=2)
    assert await store.commit_page([changed], [event(changed, "changed", T0 + timedelta(hours=1))]) == 1
    assert await store.load_obligations(["m1", "m1", "unknown"]) == {a.key: changed, b.key: b}
    assert await store.get_meta("page") == "1"
    assert await store.commit_page([], [], None) == 0
    assert await store.commit_page([], [], {"page": "2"}) == 0
    assert await store.get_meta("page") == "2"
    assert await store.load_obligations([]) == {}


async def test_datetimes_come_back_aware_utc(store: Store) -> None:
    paris = datetime(2026, 11, 1, 13, 30, 0, 250, tzinfo=ZoneInfo("Europe/Paris"))
    o = obligation(deadline=paris, opened_at=paris)
    await store.commit_page([o], [event(o, at=paris)])
    got = (await store.load_obligations(["m1"]))[o.key]
    assert got.deadline == paris and got.deadline is not None and got.deadline.utcoffset() == timedelta(0)
    assert got.opened_at == paris
    [(_, deadline, _)] = await store.count_open()
    assert deadline == paris and deadline is not None and deadline.tzinfo is not None
    with pytest.raises(ValueError, match="naive"):
        await store.commit_page([obligation(deadline=datetime(2026, 1, 1))], [])


ODD_TEXT = (
    "quote \" apostrophe ' backslash \\ slash / tab \t newline \n return \r",
    'looks like JSON: {"a": [1, null]} and an escape written out: \\u0041 \\n',
    "accents éàü, quotes “ ” « », CJK 漢字, right-to-left עברית, emoji 🔋⚡, a joiner 👩‍🔧",
    "",
)


async def test_text_of_every_kind_comes_back_as_written(store: Store) -> None:
    """Rows go to PostgreSQL as one JSON document a statement: quotes, escapes, non-ASCII and
    empty text survive the page write, a routing write (members, "told" rows, links) and reading."""
    obligations = [
        structs.replace(
            obligation(f"m{i} {text[:12]}", f"C{i}", action_description=text, deadline=None if i % 2 else DEADLINE),
            meter=Meter(meter_id=f"m{i} {text[:12]}", partner_reference=text, customer_group=text, tags=(text, "b")),
        )
        for i, text in enumerate(ODD_TEXT)
    ]
    events = [event(o, detail=o.action_description) for o in obligations]
    assert await store.commit_page(obligations, events) == len(events)
    loaded = await store.load_obligations([o.meter_id for o in obligations])
    assert loaded == {o.key: o for o in obligations}
    assert await store.pending_events() == events
    keys = [f"r1/ops/{text}" for text in ODD_TEXT]
    heads = [GroupState(k, "r1", "ops", {"tag": t}, T0, waiting=True) for k, t in zip(keys, ODD_TEXT, strict=True)]
    await store.commit_routing(
        RoutingWrite(
            consumed=[e.id for e in events],
            groups=heads,
            appended=[(k, e.id) for k, e in zip(keys, events, strict=True)],
            told=[(o.key_id, "ops") for o in obligations],
        )
    )
    groups = await store.load_groups()
    assert {g.key: (g.values, g.pending) for g in groups} == {
        k: ({"tag": t}, (e.id,)) for k, t, e in zip(keys, ODD_TEXT, events, strict=True)
    }
    note = notification("n1", events)
    flushed = [(k, e.id) for k, e in zip(keys, events, strict=True)]
    await store.commit_routing(RoutingWrite(consumed=[], notifications=[note], flushed=flushed))
    assert all(not g.pending for g in await store.load_groups())
    [delivery] = await store.claim_deliveries(T0, "w1", 10, 30)
    assert delivery.notification == note
    assert await store.notified_receivers([o.key_id for o in obligations]) == {o.key_id: {"ops"} for o in obligations}


async def test_open_meter_ids_and_keyset_pages(store: Store) -> None:
    opened = [obligation(f"m{m}", f"C{c}") for m in range(7) for c in range(3)]
    resolved = [obligation(f"r{m}", "C0", status="resolved", resolution="cleared", resolved_at=T0) for m in range(3)]
    await store.commit_page(opened + resolved, [])
    assert await store.open_meter_ids() == [f"m{m}" for m in range(7)]
    pages, after = [], ""
    while page := await store.open_obligations(after, limit=4):
        pages.append(page)
        after = page[-1].key_id
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 1]
    assert [o for p in pages for o in p] == sorted(opened, key=lambda o: o.key_id)
    assert await store.count_open() == [("IS_AUTHORIZED", DEADLINE, 21)]
    assert len(await store.load_obligations(["r1", "m1"])) == 4


async def test_routing_round_trip(store: Store) -> None:
    a, b, c = obligation("m1", "A"), obligation("m1", "B"), obligation("m2", "A")
    ea, eb, ec = event(a), event(b), event(c)
    resolved_a = event(structs.replace(a, status="resolved", version=2), "resolved")
    await store.commit_page([a, b, c], [ea, eb, ec, resolved_a])
    assert await store.pending_events() == [ea, eb, ec, resolved_a]
    assert await store.pending_events(limit=2) == [ea, eb]
    group = GroupState(key="r1/ops/CAISO", rule="r1", receiver="ops", values={"region": "CAISO"}, flush_at=T0)
    note = notification("n1", [ea, resolved_a])
    await store.commit_routing(
        RoutingWrite(
            consumed=[ea.id, eb.id, resolved_a.id],
            groups=[group, GroupState(key="g2", rule="r2", receiver="x", values={}, flush_at=T0)],
            notifications=[note],
            silenced=[(eb.id, "s1"), (eb.id, "s1")],
        )
    )
    assert await store.pending_events() == [ec]
    assert await store.load_groups() == [GroupState("g2", "r2", "x", {}, T0), group]
    later = T0 + timedelta(minutes=5)
    regrouped = GroupState(group.key, "r1", "ops", group.values, later, T0, waiting=True)
    await store.commit_routing(
        RoutingWrite(consumed=[ec.id], groups=[regrouped], appended=[(group.key, ec.id)], deleted_groups=["g2"])
    )
    assert await store.load_groups() == [replace(regrouped, pending=(ec.id,))]
    assert await store.pending_events() == []
    assert await store.load_events([ec.id, "nope", ea.id]) == [ec, ea]
    refs = await store.load_event_refs([ec.id, "nope", ea.id, ec.id])
    assert refs == [EventRef(ec.id, "opened", c.key_id), EventRef(ea.id, "opened", a.key_id)]
    assert await store.notified_receivers([a.key_id, b.key_id]) == {a.key_id: {"ops"}}
    assert await store.notified_receivers([]) == {}
    assert await store.undelivered_count() == 1
    [delivery] = await store.claim_deliveries(T0, "w1", 10, 30)
    assert delivery.notification == note
    assert (delivery.receiver, delivery.status, delivery.attempts) == ("ops", "pending", 0)
    assert delivery.next_attempt_at == T0


async def test_a_flush_reads_what_it_needs_of_members_from_their_rows(store: Store) -> None:
    """Routing keeps each member's kind and key id in its row (`refs`), read back as `told`
    refs by group; a member kept without them (as older versions appended) is read from its event."""
    a, b = obligation("m1"), obligation("m2")
    ea, eb = event(a), event(b)
    await store.commit_page([a, b], [ea, eb])
    group = GroupState("g", "r1", "ops", {}, T0, waiting=True)
    await store.commit_routing(
        RoutingWrite(
            consumed=[ea.id, eb.id],
            groups=[group],
            appended=[("g", ea.id), ("g", eb.id)],
            refs={ea.id: EventRef(ea.id, "opened", a.key_id, told=True)},  # eb's kept without
            told=[(a.key_id, "ops")],
        )
    )
    refs = await store.load_event_refs([eb.id, ea.id], "g")
    assert refs == [EventRef(eb.id, "opened", b.key_id), EventRef(ea.id, "opened", a.key_id, told=True)]
    assert [r.told for r in refs] == [False, True]
    assert [r.told for r in await store.load_event_refs([ea.id])] == [False]  # by id alone: from the event
    assert [r.told for r in await store.load_event_refs([ea.id], "other")] == [False]
    assert await store.notified_receivers([a.key_id, b.key_id]) == {a.key_id: {"ops"}}
    # the flush records the receiver as told of the member routing did not record
    note = structs.replace(notification("n1", []), refs=tuple(refs))
    await store.commit_routing(RoutingWrite(consumed=[], notifications=[note], flushed=[("g", ea.id), ("g", eb.id)]))
    assert await store.notified_receivers([a.key_id, b.key_id]) == {a.key_id: {"ops"}, b.key_id: {"ops"}}


async def test_group_members_are_appended_flushed_and_deleted(store: Store) -> None:
    """Membership is append-only: heads and members are written apart, and what the store
    returns is what the in-memory GroupBook makes of the same writes."""
    evs = [event(obligation(f"m{i}")) for i in range(6)]
    await store.commit_page([], evs)
    ids = [e.id for e in evs]
    book = GroupBook()
    a = GroupState("a", "r1", "ops", {"region": "CAISO"}, T0 + timedelta(seconds=30), waiting=True)
    b = GroupState("b", "r2", "hook", {}, T0 + timedelta(minutes=5), waiting=True)
    writes = [
        RoutingWrite(consumed=ids[:3], groups=[a, b], appended=[("a", ids[0]), ("b", ids[1]), ("a", ids[2])]),
        # a waiting group's head is not rewritten; a member given twice is kept once
        RoutingWrite(consumed=ids[3:5], appended=[("a", ids[3]), ("a", ids[0]), ("b", ids[4])]),
    ]
    for w in writes:
        await store.commit_routing(w)
        book.apply(w)
    assert await store.load_groups() == book.groups()
    assert [g.pending for g in await store.load_groups()] == [(ids[0], ids[2], ids[3]), (ids[1], ids[4])]
    heads = await store.group_heads()
    assert heads == list(book.heads.values()) and all(g.waiting and g.pending == () for g in heads)

    at = T0 + timedelta(minutes=1)
    due = await store.due_groups(at)
    assert due == book.due(at) and [(g.key, g.pending) for g in due] == [("a", (ids[0], ids[2], ids[3]))]
    assert [g.key for g in await store.due_groups(at, force=True)] == ["a", "b"]
    # flush sends what it loaded; a member appended meanwhile stays for the next flush
    idle_a = replace(a, waiting=False, last_flush_at=at, flush_at=at + timedelta(minutes=5))
    flushed = RoutingWrite(consumed=[], groups=[idle_a], flushed=[("a", i) for i in due[0].pending])
    late = RoutingWrite(consumed=[ids[5]], appended=[("a", ids[5])])
    for w in (late, flushed):
        await store.commit_routing(w)
        book.apply(w)
    assert await store.load_groups() == book.groups()
    [head_a, _] = await store.group_heads()
    assert head_a.waiting and head_a.pending == () and head_a.last_flush_at == at
    assert (await store.due_groups(at + timedelta(minutes=5)))[0] == replace(idle_a, pending=(ids[5],))
    empty = RoutingWrite(consumed=[], groups=[idle_a], flushed=[("a", ids[5])])
    for w in (empty, RoutingWrite(consumed=[], flushed=[("b", ids[1]), ("b", ids[4])])):
        await store.commit_routing(w)
        book.apply(w)
    assert [g.waiting for g in await store.group_heads()] == [False, False]
    assert await store.due_groups(at + timedelta(days=1), force=True) == []
    # idle groups come back for deletion once idle since before `idle_before`
    assert await store.due_groups(at, idle_before=T0 + timedelta(minutes=2)) == [idle_a]  # last flushed at `at`
    both = await store.due_groups(at, idle_before=T0 + timedelta(minutes=6))  # b: never flushed, its flush_at
    assert both == book.due(at, idle_before=T0 + timedelta(minutes=6)) and [g.key for g in both] == ["a", "b"]
    await store.commit_routing(RoutingWrite(consumed=[], appended=[("b", ids[0])]))
    await store.commit_routing(RoutingWrite(consumed=[], deleted_groups=["a", "b"]))
    assert await store.load_groups() == [] and await store.group_heads() == []
    await store.commit_routing(RoutingWrite(consumed=[], groups=[a]))  # deleted with its members
    assert await store.load_groups() == [replace(a, waiting=False)]


async def test_claim_leases_rows_and_expired_leases_come_back(store: Store) -> None:
    o = obligation()
    notes = [notification(f"n{i}", [event(o)], at=T0 + timedelta(seconds=i)) for i in range(5)]
    await outbox(store, *notes)
    assert await store.claim_deliveries(T0 - timedelta(seconds=1), "w1", 10, 30) == []
    now = T0 + timedelta(seconds=10)
    first = await store.claim_deliveries(now, "w1", 3, 30)
    assert [d.notification.id for d in first] == ["n0", "n1", "n2"]
    second = await store.claim_deliveries(now, "w2", 10, 30)
    assert [d.notification.id for d in second] == ["n3", "n4"]
    assert await store.claim_deliveries(now + timedelta(seconds=29), "w3", 10, 30) == []
    await store.mark_sent("n0", "ops", now, "C1:123.456")
    again = await store.claim_deliveries(now + timedelta(seconds=31), "w3", 10, 30)
    assert [d.notification.id for d in again] == ["n1", "n2", "n3", "n4"]


async def test_concurrent_claimers_never_share_a_row(store: Store) -> None:
    o = obligation()
    await outbox(store, *[notification(f"n{i:02}", [event(o)]) for i in range(40)])
    batches = await asyncio.gather(*[store.claim_deliveries(T0, f"w{i}", 7, 60) for i in range(8)])
    claimed = [d.notification.id for batch in batches for d in batch]
    assert sorted(claimed) == [f"n{i:02}" for i in range(40)]


async def test_failures_dead_letters_and_replay(store: Store) -> None:
    o = obligation()
    await outbox(store, notification("n1", [event(o)]), notification("n2", [event(o)], receiver="hook"))
    await store.claim_deliveries(T0, "w", 10, 3600)
    retry_at = T0 + timedelta(minutes=1)
    await store.mark_failed("n1", "ops", "HTTP 503", retry_at, T0)
    assert await store.claim_deliveries(T0 + timedelta(seconds=59), "w", 10, 30) == []
    [retry] = await store.claim_deliveries(retry_at, "w", 10, 30)
    assert (retry.attempts, retry.last_error, retry.next_attempt_at) == (1, "HTTP 503", retry_at)
    await store.mark_failed("n1", "ops", "HTTP 400", None, retry_at)
    await store.mark_failed("n2", "hook", "HTTP 410", None, retry_at)
    assert await store.undelivered_count() == 0
    dead = await store.dead_letters()
    assert {(d.notification.id, d.status, d.next_attempt_at) for d in dead} == {
        ("n1", "dead", None),
        ("n2", "dead", None),
    }
    assert [d.attempts for d in await store.dead_letters("ops")] == [2]
    assert await store.dead_letters(since=retry_at + timedelta(seconds=1)) == []
    assert await store.delivery_counts() == {("ops", "dead"): 1, ("hook", "dead"): 1}
    replay_at = T0 + timedelta(hours=1)
    assert await store.replay_dead_letters(replay_at, receiver="ops") == 1
    assert await store.replay_dead_letters(replay_at, since=retry_at) == 1
    assert await store.undelivered_count() == 2
    claimed = await store.claim_deliveries(replay_at, "w", 10, 30)
    assert {(d.notification.id, d.attempts, d.status) for d in claimed} == {
        ("n1", 0, "pending"),
        ("n2", 0, "pending"),
    }
    await store.mark_sent("n1", "ops", replay_at, None)
    await store.mark_failed("n1", "ops", "late failure", None, replay_at)  # a sent row stays sent
    assert (await store.delivery_counts())[("ops", "sent")] == 1


async def test_outcomes_of_a_batch_are_recorded_together_row_by_row(store: Store) -> None:
    o = obligation()
    await outbox(store, *[notification(f"n{i}", [event(o)]) for i in range(5)])
    await store.claim_deliveries(T0, "w", 10, 3600)
    await store.mark_sent("n4", "ops", T0, None)
    retry_at = T0 + timedelta(minutes=1)
    await store.record_outcomes(
        sent=[Sent("n0", "ops", T0, "ext-0"), Sent("n1", "ops", T0)],
        failed=[
            Failed("n2", "ops", "HTTP 503", retry_at, T0),
            Failed("n3", "ops", "HTTP 400", None, T0),
            Failed("n4", "ops", "late failure", None, T0),  # a sent row stays sent
            Failed("missing", "ops", "HTTP 500", None, T0),  # no such row: nothing happens
        ],
    )
    await store.record_outcomes()
    assert await store.delivery_counts() == {("ops", "sent"): 3, ("ops", "pending"): 1, ("ops", "dead"): 1}
    [retry] = await store.claim_deliveries(retry_at, "w", 10, 30)
    assert (retry.notification.id, retry.attempts, retry.last_error) == ("n2", 1, "HTTP 503")
    [dead] = await store.dead_letters()
    assert (dead.notification.id, dead.attempts, dead.last_error) == ("n3", 1, "HTTP 400")


async def test_disabled_receivers_are_not_claimed(store: Store) -> None:
    o = obligation()
    await outbox(store, notification("n1", [event(o)]), notification("n2", [event(o)], receiver="hook"))
    await store.set_receiver_disabled("hook", "webhook returned 410 Gone", T0)
    assert await store.disabled_receivers() == {"hook": "webhook returned 410 Gone"}
    assert [d.receiver for d in await store.claim_deliveries(T0, "w", 10, 1)] == ["ops"]
    await store.set_receiver_disabled("hook", None, T0)
    assert await store.disabled_receivers() == {}
    assert [d.receiver for d in await store.claim_deliveries(T0 + timedelta(seconds=2), "w", 10, 1)] == [
        "ops",
        "hook",
    ]


async def test_claims_of_one_receiver_or_of_the_others(store: Store) -> None:
    o = obligation()
    await outbox(
        store, *[notification(f"{r}{i}", [event(o)], receiver=r) for r in ("ops", "hook", "gone") for i in (1, 2)]
    )
    assert [d.notification.id for d in await store.claim_deliveries(T0, "w", 10, 60, receiver="hook")] == [
        "hook1",
        "hook2",
    ]
    assert await store.claim_deliveries(T0, "w", 10, 60, receiver="hook") == []
    others = await store.claim_deliveries(T0, "w", 10, 60, other_than=["ops", "hook"])
    assert [d.notification.id for d in others] == ["gone1", "gone2"]
    assert (await store.undelivered_count("ops"), await store.undelivered_count()) == (2, 6)
    await store.mark_sent("ops1", "ops", T0, None)
    late = notification("hook3", [event(o)], receiver="hook", at=T0 + timedelta(hours=1))
    await outbox(store, late)
    assert await store.oldest_undelivered() == {"ops": T0, "hook": T0, "gone": T0}
    await store.record_outcomes(sent=[Sent("hook1", "hook", T0), Sent("hook2", "hook", T0)])
    assert (await store.oldest_undelivered())["hook"] == T0 + timedelta(hours=1)


async def test_rows_of_an_instance_whose_heartbeat_lapsed_are_claimed_again(store: Store) -> None:
    o = obligation()
    await outbox(store, *[notification(f"n{i}", [event(o)]) for i in range(3)])
    assert await store.start_instance("a", T0) == 0
    await store.start_instance("b", T0)
    assert len(await store.claim_deliveries(T0, "a", 2, 300)) == 2  # leased until T0 + 300 s

    def stale(now: datetime) -> datetime:
        return now - timedelta(seconds=30)

    later = T0 + timedelta(seconds=20)
    await store.heartbeat("a", later)
    at = T0 + timedelta(seconds=45)  # a was seen 25 s ago: its rows stay with it
    assert [d.notification.id for d in await store.claim_deliveries(at, "b", 10, 300, stale_before=stale(at))] == ["n2"]
    at = T0 + timedelta(seconds=51)  # 31 s without a heartbeat: a is dead, long before its lease ends
    reclaimed = await store.claim_deliveries(at, "b", 10, 300, stale_before=stale(at))
    assert [d.notification.id for d in reclaimed] == ["n0", "n1"]
    # an instance never takes its own rows back early, and a live holder keeps them
    await store.heartbeat("b", at)
    assert await store.claim_deliveries(at + timedelta(seconds=40), "b", 10, 300, stale_before=at) == []
    assert await store.claim_deliveries(at, "c", 10, 300, stale_before=stale(at)) == []


async def test_a_graceful_stop_releases_its_leases_at_once(store: Store) -> None:
    o = obligation()
    await outbox(store, *[notification(f"n{i}", [event(o)]) for i in range(2)])
    await store.start_instance("a", T0)
    await store.start_instance("b", T0)
    await store.claim_deliveries(T0, "a", 1, 300)
    [other] = await store.claim_deliveries(T0, "b", 1, 300)
    assert await store.stop_instance("a") == 1
    [again] = await store.claim_deliveries(T0, "c", 10, 300)
    assert again.notification.id != other.notification.id  # b's lease stays


async def test_steps_of_a_notification_survive_with_its_row(store: Store) -> None:
    o = obligation()
    await outbox(store, notification("n1", [event(o)]))
    [first] = await store.claim_deliveries(T0, "w", 10, 30)
    assert first.steps == {}
    await store.set_delivery_steps("n1", "ops", {"update:C1:1.0": "C1:1.0"})
    await store.set_delivery_steps("n1", "ops", {"update:C1:1.0": "C1:1.0", "reply:C1:1.0": "C1:2.0"})
    await store.mark_failed("n1", "ops", "HTTP 500", T0, T0)
    [retry] = await store.claim_deliveries(T0, "w", 10, 30)
    assert retry.steps == {"update:C1:1.0": "C1:1.0", "reply:C1:1.0": "C1:2.0"}


async def test_a_lease_is_renewed_by_its_holder_alone(store: Store) -> None:
    await outbox(store, notification("n1", [event(obligation())]))
    assert len(await store.claim_deliveries(T0, "w", 10, 30)) == 1
    assert await store.renew_lease("n1", "ops", "w", T0 + timedelta(minutes=10))
    assert await store.claim_deliveries(T0 + timedelta(minutes=9), "x", 10, 30) == []
    assert len(await store.claim_deliveries(T0 + timedelta(minutes=11), "x", 10, 30)) == 1
    assert not await store.renew_lease("n1", "ops", "w", T0 + timedelta(hours=1))  # x holds it now


async def test_a_renewal_seen_alive_keeps_the_row_from_instances_taking_over_stale_ones(store: Store) -> None:
    await outbox(store, notification("n1", [event(obligation())]))
    await store.heartbeat("w", T0)
    assert len(await store.claim_deliveries(T0, "w", 10, 300)) == 1
    stale = T0 + timedelta(seconds=30)  # w's heartbeat is older than this: its rows may be taken
    later = T0 + timedelta(minutes=1)
    assert await store.renew_lease("n1", "ops", "w", later + timedelta(minutes=5), seen_at=later)
    assert await store.claim_deliveries(later, "x", 10, 300, stale_before=stale) == []  # w is seen alive
    assert len(await store.claim_deliveries(later, "x", 10, 300, stale_before=later + timedelta(seconds=1))) == 1


async def test_a_deferral_puts_back_only_its_own_claim(store: Store) -> None:
    await outbox(store, notification("n1", [event(obligation())]))
    assert len(await store.claim_deliveries(T0, "w", 10, 300)) == 1
    await store.defer_delivery("n1", "ops", T0 + timedelta(seconds=5), "waits", "x")  # not x's: left alone
    assert await store.claim_deliveries(T0 + timedelta(seconds=10), "y", 10, 300) == []
    await store.defer_delivery("n1", "ops", T0 + timedelta(seconds=5), "waits for n0", "w")
    [row] = await store.claim_deliveries(T0 + timedelta(seconds=6), "y", 10, 300)
    assert row.attempts == 0 and row.last_error == "waits for n0"  # no attempt counted


async def test_a_step_saved_by_the_lease_holder_extends_its_lease(store: Store) -> None:
    await outbox(store, notification("n1", [event(obligation())]))
    assert len(await store.claim_deliveries(T0, "w", 10, 30)) == 1  # leased until T0 + 30 s
    await store.set_delivery_steps("n1", "ops", {"post": "C1:1.0"}, ("other", T0 + timedelta(hours=1)))
    assert len(await store.claim_deliveries(T0 + timedelta(seconds=31), "x", 10, 30)) == 1  # not its lease
    await store.set_delivery_steps("n1", "ops", {"post": "C1:1.0", "reply": "C1:2.0"}, ("x", T0 + timedelta(hours=1)))
    assert await store.claim_deliveries(T0 + timedelta(minutes=59), "y", 10, 30) == []
    [row] = await store.claim_deliveries(T0 + timedelta(minutes=61), "y", 10, 30)
    assert row.steps == {"post": "C1:1.0", "reply": "C1:2.0"}


async def test_threads_keep_the_first(store: Store) -> None:
    assert await store.get_thread("slack", "k1") is None
    await store.set_thread("slack", "k1", "C1:1.0")
    await store.set_thread("slack", "k1", "C1:2.0")
    await store.set_thread("email", "k1", "<m@x>")
    assert await store.get_thread("slack", "k1") == "C1:1.0"
    assert await store.get_thread("email", "k1") == "<m@x>"
    await store.set_thread("slack", "k1", "C1:3.0", replace=True)  # opened again: a new thread
    assert await store.get_thread("slack", "k1") == "C1:3.0"
    assert await store.get_thread("email", "k1") == "<m@x>"


async def test_silences(store: Store) -> None:
    active = Silence("s1", {"meter_id": "m1"}, T0, T0 + timedelta(hours=2), "maintenance", "ana", T0)
    future = Silence("s2", {"tags": ["x"]}, T0 + timedelta(hours=1), T0 + timedelta(hours=3), "later")
    old = Silence("s0", {}, T0 - timedelta(days=2), T0 - timedelta(days=1), "done")
    for s in (active, future, old):
        await store.add_silence(s)
    assert await store.list_silences(T0) == [active, future]
    assert await store.list_silences(T0, include_expired=True) == [old, active, future]
    assert await store.expire_silence("s2", T0)
    assert not await store.expire_silence("s2", T0)
    assert not await store.expire_silence("missing", T0)
    assert await store.list_silences(T0) == [active]
    [expired] = [s for s in await store.list_silences(T0, True) if s.id == "s2"]
    assert expired.ends_at == T0 and expired.starts_at == T0


async def test_history_tells_what_became_of_each_event(store: Store) -> None:
    a, b = obligation("m1", "A"), obligation("m1", "B")
    ea, eb = event(a), event(b, at=T0 + timedelta(seconds=1))
    ra = event(structs.replace(a, status="resolved", version=2), "resolved", T0 + timedelta(hours=1))
    await store.commit_page([a, b], [ea, eb, event(obligation("m2"))])
    await store.commit_page([], [ra])
    group = GroupState("r1/ops", "r1", "ops", {}, T0 + timedelta(hours=2), waiting=True)
    await store.commit_routing(
        RoutingWrite(
            consumed=[ea.id, eb.id, ra.id],
            groups=[group],
            appended=[(group.key, ra.id)],
            notifications=[notification("n1", [ea]), notification("n2", [ea], receiver="hook")],
            silenced=[(eb.id, "s9")],
        )
    )
    await store.claim_deliveries(T0, "w", 10, 30)
    await store.mark_sent("n1", "ops", T0, "ts1")
    history = await store.history("m1")
    assert [(h.event, h.at) for h in history] == [(ea, T0), (eb, eb.occurred_at), (ra, ra.occurred_at)]
    assert history[0].outcomes == ("notified ops in n1 (sent)", "notified hook in n2 (pending)")
    assert history[1].outcomes == ("silenced s9",)
    assert history[2].outcomes == ("grouped r1/ops, waiting",)
    assert await store.history("nobody") == []


async def test_meters_are_found_by_their_partner_reference(store: Store) -> None:
    def ob(meter: str, reference: str, code: str = "A") -> Obligation:
        return structs.replace(obligation(meter, code), meter=Meter(meter_id=meter, partner_reference=reference))

    await store.commit_page([ob("m1", "site-1"), ob("m1", "site-1", "B"), ob("m2", "site-2"), ob("m3", "site-1")], [])
    assert await store.meters_by_reference("site-1") == ["m1", "m3"]
    assert await store.meters_by_reference("site-2") == ["m2"]
    assert await store.meters_by_reference("site-") == []
    assert await store.meters_by_reference("m1") == []


async def test_an_initial_backlog_is_read_in_batches_most_urgent_first_and_consumed_at_once(store: Store) -> None:
    store.set_fence(await store.try_acquire_leadership("t"))
    obs = [
        obligation("m3", "A", deadline=None),
        obligation("m1", "B", deadline=DEADLINE + timedelta(days=1)),
        obligation("m2", "C", deadline=DEADLINE),
    ]
    initial = [event(o, initial=True) for o in obs]
    later = event(obligation("m4", "D"))
    await store.commit_page([*obs, later.obligation], [*initial, later])
    first = await store.initial_events(0, 2)
    assert [e.id for e in first.events()] == [e.id for e in initial[:2]]
    rest = await store.initial_events(first.last, 2)
    assert [e.id for e in rest.events()] == [initial[2].id]
    upto = rest.last
    assert await store.initial_by_urgency(upto) == [initial[2].id, initial[1].id, initial[0].id]
    await store.consume_initial(upto)
    assert len(await store.initial_events(0, 10)) == 0
    assert [e.id for e in await store.pending_events(10)] == [later.id]  # not initial: left to routing


async def test_a_consumption_left_unfinished_is_carried_out_and_bulk_updates_go_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.set_fence(await store.try_acquire_leadership("t"))
    monkeypatch.setattr(base, "WRITE_BATCH", 2)  # several transactions for a handful of rows
    obs = [obligation(f"m{i}", "A") for i in range(5)]
    initial = [event(o, initial=True) for o in obs]
    await store.commit_page(obs, initial)
    upto = (await store.initial_events(0, 10)).last
    # a process stopped after deciding (the marker is written first) and before carrying it out
    await store.set_meta({META_CONSUMING: str(upto)})
    assert len(await store.initial_events(0, 10)) == 5
    await store.finish_initial()
    assert len(await store.initial_events(0, 10)) == 0
    assert await store.get_meta(META_CONSUMING) is None
    await store.finish_initial()  # nothing left: a no-op

    at = T0 + timedelta(days=3)
    await store.set_remind_at([(o.key_id, o.version, None) for o in obs[:3]])  # not due a look
    await store.reset_remind_at(at)
    assert sorted(o.meter_id for o in await store.reminder_candidates(at, 10)) == [f"m{i}" for i in range(5)]
