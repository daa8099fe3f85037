"""Properties of routing, grouping and reminders over random events, times and rules (Hypothesis)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from alerter.grouping import flush, idle_before, plan
from alerter.models import Event
from alerter.reminders import RemindPolicy, reminders_due
from alerter.routes import Router, route_in_order
from alerter.rulefile import compile_rules
from alerter.store.memory import GroupBook
from alerter.yamlload import parse_yaml
from tests.test_rules import NOW, make_event

RULES = compile_rules(
    [
        parse_yaml(
            """
receivers: [{name: a, console: {}}, {name: b, console: {}}, {name: c, console: {}}]
defaults: {group_wait: 30s, group_interval: 5m}
rules:
  - {name: auth, match: {action_type: IS_AUTHORIZED, transmission_region: [CAISO]}, receivers: [a], continue: true}
  - {name: opened, match: {event: [opened, changed]}, receivers: [b], group_by: [meter_id]}
  - {name: docs, match: {action_type: {in: [DOCS, FIELDS]}}, receivers: [a, c], group_wait: 0s}
  - {name: rx, match: {action_type: {regex: "^(F|NEW)"}, meter_id: {regex: "[13579]$"}}, receivers: [b], continue: true}
  - {name: regions, match: {transmission_region: {not: PJM}}, receivers: [c], group_by: []}
  - {name: fb, fallback: true, receivers: [a]}
""",
            "props.yaml",
            env={},
        )
    ]
)

kinds = st.sampled_from(["opened", "changed", "reminder", "resolved"])
events = st.builds(
    lambda i, kind, action, region: make_event(
        kind, meter_id=f"M-{i}", action_type=action, transmission_region=region, detail=f"every:{i}"
    ),
    st.integers(0, 30),
    kinds,
    st.sampled_from(["IS_AUTHORIZED", "DOCS", "FIELDS", "NEW_ONE"]),
    st.sampled_from(["CAISO", "PJM", "NYISO"]),
)


@given(st.lists(events, max_size=40))
def test_the_index_routes_exactly_like_the_rules_in_order(evs: list[Event]) -> None:
    router = Router(RULES)
    for ev in evs:
        expected = [(t.rule.name, t.receiver) for t in route_in_order(RULES, ev, NOW)]
        assert [(t.rule.name, t.receiver) for t in router.route(ev, NOW)] == expected


steps = st.lists(
    st.tuples(st.lists(events, max_size=8), st.integers(min_value=0, max_value=600)), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_grouping_and_flushing_never_drop_or_duplicate_an_event(batches: list[tuple[list[Event], int]]) -> None:
    """Every (event, target) routed is delivered exactly once, whatever the arrival times.

    The groups live in a GroupBook (the store's semantics): `plan` sees the heads only,
    `flush` the due groups with their members, idle groups are deleted after a while."""
    router = Router(RULES)
    book = GroupBook()
    store: dict[str, Event] = {}
    expected: Counter[tuple[str, str, str]] = Counter()
    delivered: Counter[tuple[str, str, str]] = Counter()
    told: dict[str, set[str]] = {}
    """What the store's `notified` would hold: receivers queued an event of each obligation."""
    now = NOW
    for batch, seconds in batches:
        now += timedelta(seconds=seconds)
        fresh = [e for e in {e.id: e for e in batch}.values() if e.id not in store]  # the store ignores known ids
        store.update((e.id, e) for e in fresh)
        known = {key: set(receivers) for key, receivers in told.items()}
        for ev in fresh:  # a resolution goes only where an event of its obligation went before it
            key = ev.obligation.key_id
            targets = router.route(ev, now)
            if ev.kind == "resolved":
                targets = [t for t in targets if t.rule.send_resolved and t.receiver in known.get(key, set())]
            else:
                known.setdefault(key, set()).update(t.receiver for t in targets)
            for t in targets:
                expected[(ev.id, t.rule.name, t.receiver)] += 1
        write = plan(fresh, router, book.heads, told, [], now)
        for key, receiver in write.told:
            told.setdefault(key, set()).add(receiver)
        assert sorted(write.consumed) == sorted(e.id for e in fresh)
        assert len(write.appended) == len(set(write.appended))
        book.apply(write)
        result = flush(book.due(now, idle_before=idle_before(RULES, now)), store, now, ruleset=RULES)
        for n in result.notifications:
            delivered.update((e.id, n.rule, n.receiver) for e in n.events)
        book.apply(result.write())
        assert all(g.flush_at > now for g in book.heads.values() if g.waiting)  # nothing due is left behind
    final = flush(book.due(now + timedelta(days=1)), store, now + timedelta(days=1), ruleset=RULES)
    for n in final.notifications:
        delivered.update((e.id, n.rule, n.receiver) for e in n.events)
    book.apply(final.write())
    assert not any(g.waiting for g in book.heads.values())  # every member was flushed
    assert delivered == expected


policies = st.builds(
    RemindPolicy,
    every=st.one_of(st.none(), st.sampled_from([timedelta(hours=6), timedelta(days=1)])),
    before_deadline=st.lists(st.sampled_from([timedelta(days=d) for d in (1, 2, 3, 7)]), max_size=3).map(tuple),
    overdue=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    policies,
    st.integers(min_value=-10 * 24, max_value=20 * 24),
    st.lists(st.integers(min_value=0, max_value=3 * 3600), min_size=1, max_size=60),
)
def test_reminders_fire_once_per_threshold_across_repeated_evaluation(
    policy: RemindPolicy, deadline_hours: int, ticks: list[int]
) -> None:
    """Evaluating at any cadence, each detail gets one id, and thresholds fire tightest-last."""
    o = make_event(opened_at=NOW, deadline=NOW + timedelta(hours=deadline_hours)).obligation
    seen: dict[str, str] = {}
    order: list[str] = []
    now = NOW
    for tick in ticks:
        now += timedelta(seconds=tick * 10)
        for ev in reminders_due(o, policy, now):
            if ev.id in seen:
                assert seen[ev.id] == ev.detail
                continue
            seen[ev.id] = ev.detail
            order.append(ev.detail)
    assert len(order) == len(set(order))
    before = [
        timedelta(days=int(d.removeprefix("before:").removesuffix("d"))) for d in order if d.startswith("before:")
    ]
    assert before == sorted(before, reverse=True)
    if "overdue" in order:
        assert all(not d.startswith("before:") for d in order[order.index("overdue") :])
