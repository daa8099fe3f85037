"""Routing order, continue, fallback, reminder policies, grouping, flush and digests (pure, fixed times)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerter.grouping import SilenceCheck, digest, flush, idle_before, notification_id, plan
from alerter.matchers import compile_matcher
from alerter.models import Event, EventRef, GroupState, RoutingWrite, Silence
from alerter.reminders import reminders_due
from alerter.routes import Router, route_in_order
from alerter.rulefile import RuleSet, compile_rules
from alerter.store.memory import GroupBook
from alerter.yamlload import parse_yaml
from tests.test_rules import NOW, make_event

RECEIVERS = "receivers:\n" + "".join(f"  - {{name: {n}, console: {{}}}}\n" for n in "abcdef")


def ruleset(rules: str, defaults: str = "") -> RuleSet:
    return compile_rules([parse_yaml(RECEIVERS + defaults + "rules:\n" + rules, "t.yaml", env={})])


ORDERED = ruleset(
    """
  - {name: auth, match: {action_type: IS_AUTHORIZED}, receivers: [a]}
  - {name: vip, match: {tags: vip}, receivers: [b], continue: true}
  - {name: caiso, match: {transmission_region: CAISO}, receivers: [c, d]}
  - {name: rest, match: {event: [opened, changed]}, receivers: [e]}
  - {name: fb, fallback: true, receivers: [f]}
"""
)


def names(router: Router, ev: Event) -> list[tuple[str, str]]:
    return [(t.rule.name, t.receiver) for t in router.route(ev, NOW)]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (make_event(), [("auth", "a")]),
        (make_event(action_type="DOCS", tags=["vip"]), [("vip", "b"), ("caiso", "c"), ("caiso", "d")]),
        (make_event(action_type="DOCS", tags=["vip"], transmission_region="PJM"), [("vip", "b"), ("rest", "e")]),
        (make_event(action_type="DOCS", transmission_region="PJM"), [("rest", "e")]),
        (make_event("resolved", action_type="DOCS", transmission_region="PJM"), [("fb", "f")]),
        (make_event("resolved", action_type="DOCS", tags=["vip"], transmission_region="PJM"), [("vip", "b")]),
        (make_event(action_type="SOMETHING_NEW", transmission_region="NEW_ISO"), [("rest", "e")]),
    ],
    ids=[
        "first-match-stops",
        "continue",
        "continue-then-next",
        "later-rule",
        "fallback",
        "no-fallback-if-matched",
        "unknown-enums",
    ],
)
def test_route_order_continue_fallback(event: Event, expected: list[tuple[str, str]]) -> None:
    assert names(Router(ORDERED), event) == expected


def test_without_fallback_unmatched_events_go_nowhere() -> None:
    rs = ruleset("  - {name: only, match: {event: opened}, receivers: [a]}\n")
    assert Router(rs).route(make_event("resolved"), NOW) == []


ESCALATION = ruleset(
    """
  - name: escalate
    match: {event: reminder, deadline: {within: 2d}}
    receivers: [a]
    remind: {before_deadline: [2d], overdue: false}
  - name: general
    receivers: [b]
    remind: {every: 24h, before_deadline: [7d, 2d]}
"""
)


@pytest.mark.parametrize(
    ("detail", "days_left", "expected"),
    [
        ("before:2d", 1, ["escalate"]),
        ("every:3", 1, ["general"]),  # not in the escalation policy: passes on
        ("overdue", 1, ["general"]),
        ("before:7d", 5, ["general"]),
        ("before:1d", 1, []),  # matched rules, none asks for it; no fallback takes it
    ],
)
def test_a_rule_only_receives_the_reminders_its_policy_asks_for(
    detail: str, days_left: int, expected: list[str]
) -> None:
    ev = make_event("reminder", detail=detail, deadline=NOW + timedelta(days=days_left))
    assert [r.name for r in Router(ESCALATION).rules_for(ev, NOW)] == expected


PACED = ruleset(
    """
  - {name: caiso-hourly, match: {transmission_region: CAISO}, receivers: [a], remind: {every: 1h}}
  - {name: others, receivers: [b], remind: {every: 20m}}
"""
)


@pytest.mark.parametrize("region", ["CAISO", "PJM"])
def test_a_rule_is_reminded_at_its_own_pace_not_at_a_shorter_one_another_rule_asks_for(region: str) -> None:
    router = Router(PACED)
    opened = NOW - timedelta(hours=3)
    o = make_event(transmission_region=region, opened_at=opened).obligation
    policy = router.remind_policy(o, NOW)
    assert policy.every == timedelta(minutes=20)  # reminders are made at the shortest pace
    got = {}
    for minutes in range(20, 181, 20):
        [reminder] = reminders_due(o, policy, opened + timedelta(minutes=minutes))
        got[minutes] = [r.name for r in router.rules_for(reminder, NOW)]
        assert got[minutes] == [t.rule.name for t in route_in_order(PACED, reminder, NOW)]
    if region == "CAISO":  # the hourly rule takes those on its pace; the others pass on
        assert got == {m: ["caiso-hourly" if m % 60 == 0 else "others"] for m in range(20, 181, 20)}
    else:
        assert got == {m: ["others"] for m in range(20, 181, 20)}


def test_remind_policy_is_the_union_of_the_rules_a_reminder_could_reach() -> None:
    router = Router(ESCALATION)
    near = make_event(deadline=NOW + timedelta(days=1)).obligation
    policy = router.remind_policy(near, NOW)
    assert policy.every == timedelta(hours=24)
    assert policy.before_deadline == (timedelta(days=7), timedelta(days=2))
    assert policy.overdue
    far = make_event(deadline=NOW + timedelta(days=30)).obligation
    assert router.remind_policy(far, NOW).before_deadline == (timedelta(days=7), timedelta(days=2))


def test_remind_policy_without_any_rule_is_empty() -> None:
    rs = ruleset("  - {name: opened-only, match: {event: opened}, receivers: [a]}\n")
    assert Router(rs).remind_policy(make_event().obligation, NOW).empty


def test_remind_policy_falls_back_to_the_fallback_rule() -> None:
    rs = ruleset(
        "  - {name: opened-only, match: {event: opened}, receivers: [a]}\n"
        "  - {name: fb, fallback: true, receivers: [b], remind: {every: 1h}}\n"
    )
    assert Router(rs).remind_policy(make_event().obligation, NOW).every == timedelta(hours=1)


# ---- grouping -------------------------------------------------------------------------

GROUPED = ruleset(
    """
  - name: main
    receivers: [a, b]
    group_by: [action_type]
    group_wait: 30s
    group_interval: 5m
  - {name: quiet, fallback: true, receivers: [c], send_resolved: false}
""",
)


def _members(write: RoutingWrite) -> dict[str, list[str]]:
    """group key -> event ids appended, in order."""
    out: dict[str, list[str]] = {}
    for key, event_id in write.appended:
        out.setdefault(key, []).append(event_id)
    return out


def test_first_event_opens_a_group_due_after_group_wait() -> None:
    ev = make_event()
    write = plan([ev], Router(GROUPED), {}, {}, [], NOW)
    assert list(write.consumed) == [ev.id]
    assert [(g.receiver, g.flush_at, g.pending, g.waiting, g.values) for g in write.groups] == [
        ("a", NOW + timedelta(seconds=30), (), True, {"action_type": "IS_AUTHORIZED"}),
        ("b", NOW + timedelta(seconds=30), (), True, {"action_type": "IS_AUTHORIZED"}),
    ]
    assert all(g.rule == "main" and g.last_flush_at is None for g in write.groups)
    assert list(write.appended) == [(g.key, ev.id) for g in write.groups]


def test_events_with_equal_group_by_values_share_a_group() -> None:
    e1, e2 = make_event(meter_id="M-1"), make_event(meter_id="M-2")
    e3 = make_event(meter_id="M-3", action_type="DOCS")
    write = plan([e1, e2, e3], Router(GROUPED), {}, {}, [], NOW)
    members = _members(write)
    by_values = {(g.receiver, g.values["action_type"]): members[g.key] for g in write.groups}
    assert by_values[("a", "IS_AUTHORIZED")] == [e1.id, e2.id]
    assert by_values[("a", "DOCS")] == [e3.id]
    assert len(write.groups) == 4 and set(members) == {g.key for g in write.groups}


def _one_group(router: Router, ev: Event, receiver: str = "a") -> GroupState:
    (g,) = [g for g in plan([ev], router, {}, {}, [], NOW).groups if g.receiver == receiver]
    return g


def test_joining_a_pending_group_keeps_its_flush_time() -> None:
    router = Router(GROUPED)
    book = GroupBook()
    first = make_event(meter_id="M-1")
    book.apply(plan([first], router, book.heads, {}, [], NOW))
    (g,) = [g for g in book.heads.values() if g.receiver == "a"]
    later = make_event(meter_id="M-2")
    write = plan([later], router, book.heads, {}, [], NOW + timedelta(seconds=20))
    assert write.groups == []  # a waiting group's head is not rewritten: its flush time stays
    assert _members(write)[g.key] == [later.id]
    book.apply(write)
    (g2,) = [x for x in book.groups() if x.key == g.key]
    assert g2.flush_at == g.flush_at and g2.pending == (first.id, later.id)


@pytest.mark.parametrize(
    ("since_flush", "expected_delay"),
    [(timedelta(minutes=1), timedelta(minutes=4)), (timedelta(minutes=7), timedelta(0))],
    ids=["within-interval", "interval-passed"],
)
def test_joining_an_idle_group_waits_for_group_interval(since_flush: timedelta, expected_delay: timedelta) -> None:
    router = Router(GROUPED)
    g = _one_group(router, make_event(meter_id="M-1"))
    flushed_at = NOW
    idle = GroupState(
        g.key, g.rule, g.receiver, g.values, flush_at=NOW + timedelta(minutes=5), last_flush_at=flushed_at
    )
    now = flushed_at + since_flush
    ev = make_event(meter_id="M-2")
    write = plan([ev], router, [idle], {}, [], now)
    (g2,) = [x for x in write.groups if x.key == g.key]
    assert g2.flush_at == now + expected_delay and g2.last_flush_at == flushed_at and g2.waiting
    assert _members(write)[g.key] == [ev.id]


def test_an_event_given_twice_in_one_plan_is_grouped_once() -> None:
    ev = make_event()
    write = plan([ev, ev], Router(GROUPED), {}, {}, [], NOW)
    assert list(_members(write).values()) == [[ev.id], [ev.id]]
    assert list(write.consumed) == [ev.id]


def test_resolved_goes_only_to_notified_receivers_of_rules_that_send_resolved() -> None:
    router = Router(GROUPED)
    resolved = make_event("resolved")
    told = {resolved.obligation.key_id: {"b"}}
    write = plan([resolved], router, {}, told, [], NOW)
    assert [g.receiver for g in write.groups] == ["b"]
    assert list(write.appended) == [(write.groups[0].key, resolved.id)]
    nowhere = plan([resolved], router, {}, {}, [], NOW)
    assert nowhere.groups == [] and nowhere.appended == []
    # the fallback rule has send_resolved: false: an unmatched resolution goes nowhere
    rs = ruleset(
        "  - {name: x, match: {event: opened}, receivers: [a]}\n"
        "  - {name: f, fallback: true, receivers: [c], send_resolved: false}\n"
    )
    unmatched = make_event("resolved")
    assert plan([unmatched], Router(rs), {}, {unmatched.obligation.key_id: {"c"}}, [], NOW).groups == []
    assert list(write.consumed) == [resolved.id]


def test_a_resolution_reaches_the_receiver_told_through_a_rule_that_no_longer_matches() -> None:
    # the opening matched "due soon" (its deadline within 7 days); resolved an hour after the
    # deadline, it matches only the rule below, whose receiver was never told
    rs = ruleset(
        "  - {name: due-soon, match: {deadline: {within: 7d}}, receivers: [a]}\n"
        "  - {name: everything-else, receivers: [b]}\n"
    )
    opened_at = NOW - timedelta(hours=2)
    resolved = make_event("resolved", opened_at=opened_at, deadline=NOW - timedelta(hours=1))
    write = plan([resolved], Router(rs), {}, {resolved.obligation.key_id: {"a"}}, [], NOW)
    assert [(g.rule, g.receiver) for g in write.groups] == [("due-soon", "a")]
    nobody = plan([resolved], Router(rs), {}, {}, [], NOW)  # told of nothing: told nothing
    assert nobody.groups == []


def test_a_lost_resolution_goes_through_the_rule_that_took_the_opening_it_resolves() -> None:
    """A receiver told through the fallback, the obligation since moved into `near`: `plan` says
    the resolution is `lost`; given the stored openings, it goes through the rule that took the
    one it resolves (opened at the same instant), not a later reopening's."""
    rs = ruleset(
        "  - {name: near, match: {deadline: {within: 7d}}, receivers: [a]}\n"
        "  - {name: rest, fallback: true, receivers: [b]}\n"
    )
    first_at, again_at = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    resolved = make_event("resolved", opened_at=first_at, deadline=NOW + timedelta(days=2), version=3)
    told = {resolved.obligation.key_id: {"a", "b"}}
    router = Router(rs)
    write = plan([resolved], router, {}, told, [], NOW)
    assert [(g.rule, g.receiver) for g in write.groups] == [("near", "a")]
    assert write.lost == [(resolved.obligation.meter_id, resolved.obligation.key_id)]
    first = make_event(opened_at=first_at, occurred_at=first_at, deadline=NOW + timedelta(days=20))
    later = make_event(opened_at=again_at, occurred_at=again_at, deadline=NOW + timedelta(days=2), version=5)
    openings = {resolved.obligation.key_id: [first, later]}
    again = plan([resolved], router, {}, told, [], NOW, openings)
    assert sorted((g.rule, g.receiver) for g in again.groups) == [("near", "a"), ("rest", "b")]
    only_later = plan([resolved], router, {}, told, [], NOW, {resolved.obligation.key_id: [later]})
    assert [(g.rule, g.receiver) for g in only_later.groups] == [("near", "a")]  # not its opening


def _silence(sid: str, matchers: dict[str, object], start: timedelta, end: timedelta) -> Silence:
    return Silence(sid, matchers, NOW + start, NOW + end, reason="test")


def test_silenced_events_are_recorded_not_grouped() -> None:
    router = Router(GROUPED)
    quiet, loud = make_event(meter_id="M-1"), make_event(meter_id="M-2")
    silences = [
        _silence("expired", {"meter_id": "M-2"}, -timedelta(hours=2), -timedelta(hours=1)),
        _silence("future", {"meter_id": "M-2"}, timedelta(hours=1), timedelta(hours=2)),
        _silence("s1", {"meter_id": {"regex": "^M-1$"}}, -timedelta(hours=1), timedelta(hours=1)),
        _silence("broken", {"no_such_field": 1}, -timedelta(hours=1), timedelta(hours=1)),
    ]
    write = plan([quiet, loud], router, {}, {}, silences, NOW)
    assert list(write.silenced) == [(quiet.id, "s1")]
    assert {event_id for _, event_id in write.appended} == {loud.id}
    assert list(write.consumed) == [quiet.id, loud.id]


def test_a_stored_silence_that_cannot_apply_is_reported_once_and_silences_nothing() -> None:
    check = SilenceCheck()
    hour = timedelta(hours=1)
    silences = [
        _silence("old-regex", {"meter_id": {"regex": "^(?=M-1)"}}, -hour, hour),
        _silence("empty", {}, -hour, hour),  # would silence everything
        _silence("ok", {"meter_id": "M-9"}, -hour, hour),
    ]
    usable, found = check.check(silences)
    assert [s.id for s in usable] == ["ok"]
    assert [(sid, problem.split(":")[0]) for sid, problem in found] == [
        ("old-regex", "regex '^(?=M-1)'"),
        ("empty", "it has no matcher"),
    ]
    assert check.check(silences) == (usable, [])  # each reported once
    assert plan([make_event(meter_id="M-1")], Router(GROUPED), {}, {}, silences, NOW).silenced == []


def test_an_event_no_rule_takes_is_named_as_unrouted() -> None:
    rs = ruleset("  - {name: x, match: {action_type: HAS_AMI}, receivers: [a]}\n")
    miss, hit = make_event(meter_id="M-1"), make_event(meter_id="M-2", action_type="HAS_AMI")
    reminder = make_event("reminder", meter_id="M-3", detail="every:1")
    write = plan([miss, hit, reminder], Router(rs), {}, {}, [], NOW)
    assert list(write.consumed) == [miss.id, hit.id, reminder.id]
    assert list(write.unrouted) == [(miss.id, "opened")]


def test_a_silence_ends_at_ends_at() -> None:
    s = _silence("s", {"meter_id": "M-1"}, -timedelta(hours=1), timedelta(0))
    assert plan([make_event()], Router(GROUPED), {}, {}, [s], NOW).silenced == []


# ---- flush ---------------------------------------------------------------------------


def _pending(router: Router, *events: Event) -> tuple[list[GroupState], dict[str, Event]]:
    """The groups `plan` makes of these events, loaded with their members (as `due_groups` does)."""
    book = GroupBook()
    book.apply(plan(list(events), router, {}, {}, [], NOW))
    return book.groups(), {e.id: e for e in events}


def test_flush_sends_due_groups_once_and_leaves_them_idle() -> None:
    router = Router(GROUPED)
    e1, e2 = make_event(meter_id="M-1"), make_event(meter_id="M-2")
    groups, events = _pending(router, e1, e2)
    early = flush(groups, events, NOW + timedelta(seconds=29), ruleset=GROUPED)
    assert early.notifications == [] and early.groups == [] and early.deleted == [] and early.flushed == []
    at = NOW + timedelta(seconds=30)
    notes, updated, deleted, flushed = flush(groups, events, at, ruleset=GROUPED)
    assert sorted(n.receiver for n in notes) == ["a", "b"]
    for n in notes:
        assert n.events == (e1, e2) and n.rule == "main" and n.group == {"action_type": "IS_AUTHORIZED"}
        assert n.created_at == at and n.kind == "notification"
    assert all(g.pending == () and not g.waiting and g.last_flush_at == at for g in updated) and deleted == []
    assert flushed == [(g.key, e.id) for g in groups for e in (e1, e2)]
    again = flush(updated, events, at + timedelta(minutes=1), ruleset=GROUPED)
    assert again.notifications == []


def test_a_flush_given_references_writes_its_notifications_by_reference() -> None:
    """Routing flushes with what it needs of each member (`Store.load_event_refs`): the same
    notifications, ids and parts, holding the members as references."""
    router = Router(GROUPED)
    e1, e2 = make_event(meter_id="M-1"), make_event(meter_id="M-2")
    groups, events = _pending(router, e1, e2)
    at = NOW + timedelta(seconds=30)
    whole = flush(groups, events, at, ruleset=GROUPED)
    by_ref = flush(groups, {i: EventRef.of(e) for i, e in events.items()}, at, ruleset=GROUPED)
    assert [n.id for n in by_ref.notifications] == [n.id for n in whole.notifications]
    for n, full in zip(by_ref.notifications, whole.notifications, strict=True):
        assert n.events == () and n.refs == (EventRef.of(e1), EventRef.of(e2)) == full.members()
    assert by_ref.flushed == whole.flushed and by_ref.groups == whole.groups


def test_a_group_given_without_its_members_is_not_flushed() -> None:
    head = _one_group(Router(GROUPED), make_event())
    assert head.waiting and head.pending == ()
    result = flush([head], {}, NOW + timedelta(days=1), ruleset=GROUPED, force=True)
    assert result == ([], [], [], [])


def test_the_book_applies_writes_as_the_store_does() -> None:
    router = Router(GROUPED)
    book = GroupBook()
    e1, e2, e3 = make_event(meter_id="M-1"), make_event(meter_id="M-2"), make_event(meter_id="M-3")
    book.apply(plan([e1, e2], router, book.heads, {}, [], NOW))
    assert [g.pending for g in book.groups()] == [(e1.id, e2.id)] * 2
    assert all(g.waiting and g.pending == () for g in book.heads.values())
    at = NOW + timedelta(seconds=30)
    book.apply(plan([e3], router, book.heads, {}, [], at))  # joins before the flush: sent with it
    due = book.due(at)
    assert [g.pending for g in due] == [(e1.id, e2.id, e3.id)] * 2
    book.apply(flush(due, {}, at, ruleset=GROUPED).write())
    assert book.due(at, force=True) == [] and not any(g.waiting for g in book.heads.values())
    assert book.due(at + timedelta(minutes=10), idle_before=idle_before(GROUPED, at + timedelta(minutes=10))) == []
    later = at + timedelta(minutes=10, seconds=1)
    idle = book.due(later, idle_before=idle_before(GROUPED, later))
    assert len(idle) == 2
    book.apply(flush(idle, {}, later, ruleset=GROUPED).write())
    assert book.heads == {} and book.groups() == []


def test_a_recomputed_flush_has_the_same_notification_ids() -> None:
    router = Router(GROUPED)
    groups, events = _pending(router, make_event(meter_id="M-1"), make_event(meter_id="M-2"))
    first = flush(groups, events, NOW + timedelta(minutes=1))
    after_crash = flush(groups, events, NOW + timedelta(minutes=3))
    assert [n.id for n in first.notifications] == [n.id for n in after_crash.notifications]
    g = sorted(groups, key=lambda g: g.key)[0]
    assert first.notifications[0].id == notification_id(g.key, g.pending[0])
    custom = flush(groups, events, NOW + timedelta(minutes=1), id_factory=lambda key, first: f"{key}:{first}")
    assert custom.notifications[0].id == f"{g.key}:{g.pending[0]}"


def test_force_flushes_groups_that_are_not_due_yet() -> None:
    groups, events = _pending(Router(GROUPED), make_event())
    assert len(flush(groups, events, NOW, force=True).notifications) == 2


def test_idle_groups_are_deleted_after_twice_their_interval() -> None:
    g = GroupState("k", "main", "a", {}, flush_at=NOW, last_flush_at=NOW)
    assert flush([g], {}, NOW + timedelta(minutes=10), ruleset=GROUPED).deleted == []
    assert flush([g], {}, NOW + timedelta(minutes=10, seconds=1), ruleset=GROUPED).deleted == ["k"]


def test_events_missing_from_the_store_are_skipped_but_the_group_goes_idle() -> None:
    groups, _ = _pending(Router(GROUPED), make_event())
    result = flush(groups, {}, NOW + timedelta(minutes=1))
    assert result.notifications == [] and len(result.groups) == 2
    write = result.write()
    assert write.consumed == () and list(write.groups) == result.groups
    assert sorted(write.flushed) == sorted((g.key, g.pending[0]) for g in groups)  # the group is emptied


# ---- initial sync digest ---------------------------------------------------------------


def test_initial_events_become_one_digest_per_receiver() -> None:
    rs = ruleset(
        "  - {name: auth, match: {action_type: IS_AUTHORIZED}, receivers: [a, b]}\n  - {name: rest, receivers: [a]}\n"
    )
    router = Router(rs)
    evs = [
        make_event(meter_id="M-1", initial=True, deadline=NOW + timedelta(days=9)),
        make_event(meter_id="M-2", initial=True, action_type="DOCS", deadline=None),
        make_event(meter_id="M-3", initial=True, deadline=NOW + timedelta(hours=5)),
    ]
    write = plan(evs, router, {}, {}, [], NOW)
    assert write.groups == [] and write.appended == [] and list(write.consumed) == [e.id for e in evs]
    notes = {n.receiver: n for n in write.notifications}
    assert set(notes) == {"a", "b"}
    assert [e.obligation.meter_id for e in notes["a"].events] == ["M-3", "M-1", "M-2"]  # by deadline
    assert [e.obligation.meter_id for e in notes["b"].events] == ["M-3", "M-1"]
    assert all(n.kind == "digest" and n.rule == "initial-sync" for n in notes.values())
    again = digest(list(reversed(evs)), router, NOW + timedelta(hours=1))
    assert {n.receiver: n.id for n in again} == {r: n.id for r, n in notes.items()}


def test_silence_matchers_use_the_rule_language() -> None:
    assert compile_matcher({"event": "reminder"}).matches(make_event("reminder", detail="overdue"), NOW)


def test_a_resolution_follows_an_opening_still_waiting_in_its_group() -> None:
    """Opened and resolved before the group flushed: the receiver is told of both, not of the
    opening alone (it would believe the action still open)."""
    router = Router(GROUPED)
    opened, resolved = make_event("opened"), make_event("resolved")
    assert opened.obligation.key_id == resolved.obligation.key_id
    first = plan([opened], router, {}, {}, [], NOW)
    queued = {(key_id, receiver) for key_id, receiver in first.told}
    assert queued and {k for k, _ in queued} == {opened.obligation.key_id}
    told: dict[str, set[str]] = {}
    for key_id, receiver in first.told:  # what the store's `notified` holds after the write
        told.setdefault(key_id, set()).add(receiver)
    later = plan([resolved], router, {g.key: g for g in first.groups}, told, [], NOW)
    assert {g for g, _ in later.appended} <= {g.key for g in first.groups}
    assert [e for _, e in later.appended] and all(e == resolved.id for _, e in later.appended)
    # both in one call: the same
    both = plan([opened, resolved], router, {}, {}, [], NOW)
    assert {e for _, e in both.appended} == {opened.id, resolved.id}
