"""Reminders: every N periods, the tightest deadline threshold, overdue once, per obligation version."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from msgspec.structs import replace

from alerter.reminders import (
    NO_REMINDERS,
    RemindPolicy,
    merge_policies,
    next_reminder_at,
    reminder_id,
    reminders_due,
)
from tests.test_rules import NOW, make_event

D = timedelta(days=1)
H = timedelta(hours=1)
POLICY = RemindPolicy(every=24 * H, before_deadline=(7 * D, 2 * D, 1 * D), overdue=True)


def details(policy: RemindPolicy, *, opened_ago: timedelta, deadline_in: timedelta | None) -> list[str]:
    o = make_event(opened_at=NOW - opened_ago, deadline=None if deadline_in is None else NOW + deadline_in).obligation
    return [e.detail for e in reminders_due(o, policy, NOW)]


@pytest.mark.parametrize(
    ("opened_ago", "deadline_in", "expected"),
    [
        (H, 30 * D, []),
        (25 * H, 30 * D, ["every:1"]),
        (24 * H, 30 * D, ["every:1"]),
        (3 * D + H, 30 * D, ["every:3"]),  # only the latest period
        (2 * D, -5 * D, ["every:2"]),  # opened after its deadline: no overdue reminder
        (H, None, []),
    ],
)
def test_reminders_due(opened_ago: timedelta, deadline_in: timedelta | None, expected: list[str]) -> None:
    assert details(POLICY, opened_ago=opened_ago, deadline_in=deadline_in) == expected


BEFORE = RemindPolicy(before_deadline=(7 * D, 2 * D, 1 * D), overdue=True)


@pytest.mark.parametrize(
    ("opened_ago", "deadline_in", "expected"),
    [
        (10 * D, 8 * D, []),
        (10 * D, 6 * D, ["before:7d"]),
        (10 * D, 2 * D, ["before:2d"]),  # at the threshold exactly: crossed
        (10 * D, 36 * H, ["before:2d"]),  # 7d and 2d crossed: only the tightest
        (10 * D, 3 * H, ["before:1d"]),
        (10 * D, timedelta(0), ["overdue"]),  # at the deadline: overdue, no threshold
        (10 * D, -5 * D, ["overdue"]),
        (H, 6 * D, []),  # 7d was already crossed when it opened: the opening said so
        (H, 36 * H, []),
        (3 * D, 36 * H, ["before:2d"]),  # opened with 4.5 days left: 7d skipped, 2d crossed since
        (H, -D, []),  # opened overdue: no overdue reminder on top of the opening
    ],
)
def test_deadline_thresholds(opened_ago: timedelta, deadline_in: timedelta | None, expected: list[str]) -> None:
    assert details(BEFORE, opened_ago=opened_ago, deadline_in=deadline_in) == expected


def test_policy_parts_switch_off_independently() -> None:
    only_before = RemindPolicy(before_deadline=(2 * D,), overdue=False)
    assert details(only_before, opened_ago=5 * D, deadline_in=D) == ["before:2d"]
    assert details(only_before, opened_ago=5 * D, deadline_in=-D) == []
    assert details(NO_REMINDERS, opened_ago=5 * D, deadline_in=-D) == []


def test_event_ids_are_deterministic_so_the_store_keeps_each_threshold_once() -> None:
    o = make_event(opened_at=NOW - 3 * D, deadline=NOW + 36 * H).obligation
    first = reminders_due(o, RemindPolicy(before_deadline=(7 * D, 2 * D, D)), NOW)
    later = reminders_due(o, RemindPolicy(before_deadline=(7 * D, 2 * D, D)), NOW + 6 * H)  # still 2d..1d
    assert [e.id for e in first] == [e.id for e in later] == [reminder_id(o, "before:2d", first[0].occurred_at)]
    assert first[0].occurred_at == NOW + 36 * H - 2 * D  # when the threshold was crossed, not when computed
    assert first[0].kind == "reminder" and first[0].obligation == o


def test_a_moved_deadline_or_a_new_opening_fires_again_a_changed_description_does_not() -> None:
    v1 = make_event(opened_at=NOW - 3 * D, deadline=NOW + 36 * H).obligation
    policy = RemindPolicy(every=D, before_deadline=(2 * D,))
    ids = {e.detail: e.id for e in reminders_due(v1, policy, NOW)}
    assert set(ids) == {"every:3", "before:2d"}
    reworded = replace(v1, version=2, action_description="Reworded by Leap")
    assert {e.detail: e.id for e in reminders_due(reworded, policy, NOW)} == ids
    moved = replace(v1, version=2, deadline=NOW + 40 * H)
    again = {e.detail: e.id for e in reminders_due(moved, policy, NOW)}
    assert again["every:3"] == ids["every:3"] and again["before:2d"] != ids["before:2d"]
    reopened = replace(v1, version=3, opened_at=NOW - 3 * D + H)
    assert not set(ids.values()) & {e.id for e in reminders_due(reopened, policy, NOW)}


def test_resolved_obligations_get_no_reminders() -> None:
    o = make_event("resolved", opened_at=NOW - 5 * D, deadline=NOW - D).obligation
    assert reminders_due(o, POLICY, NOW) == []


def test_policies_merge_into_their_union() -> None:
    merged = merge_policies(
        [RemindPolicy(every=24 * H, overdue=False), RemindPolicy(every=12 * H, before_deadline=(2 * D, 7 * D))]
    )
    assert merged == RemindPolicy(every=12 * H, before_deadline=(7 * D, 2 * D), overdue=True)
    o = make_event(opened_at=NOW - 13 * H, deadline=NOW + D).obligation
    assert [e.detail for e in reminders_due(o, [RemindPolicy(every=12 * H), RemindPolicy(overdue=False)], NOW)] == [
        "every:1"
    ]


@pytest.mark.parametrize(
    ("detail", "accepted"),
    [("every:4", True), ("before:7d", True), ("before:1d", True), ("before:3d", False), ("overdue", True), ("x", True)],
)
def test_a_policy_accepts_its_own_details(detail: str, accepted: bool) -> None:
    assert POLICY.accepts(detail) is accepted
    assert RemindPolicy(overdue=False).accepts("overdue") is False
    assert RemindPolicy().accepts("every:1") is False


def test_thresholds_are_validated_and_sorted() -> None:
    assert RemindPolicy.model_validate({"before_deadline": ["1d", "7d", "2d", "1d"]}).before_deadline == (
        7 * D,
        2 * D,
        D,
    )
    with pytest.raises(ValueError, match="positive"):
        RemindPolicy.model_validate({"every": "0s"})
    with pytest.raises(ValueError, match="positive"):
        RemindPolicy.model_validate({"before_deadline": ["0s"]})


POLICIES = [
    RemindPolicy(every=timedelta(hours=24), before_deadline=(timedelta(days=7), timedelta(days=2)), overdue=True),
    RemindPolicy(before_deadline=(timedelta(days=1),), overdue=False),
    RemindPolicy(every=timedelta(hours=5), overdue=False),
    RemindPolicy(overdue=True),
    NO_REMINDERS,
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("deadline_in", [None, timedelta(hours=3), timedelta(days=3), timedelta(days=9)])
def test_looking_only_at_the_next_reminder_time_finds_every_reminder(
    policy: RemindPolicy, deadline_in: timedelta | None
) -> None:
    """Evaluating every hour and evaluating only at `next_reminder_at` give the same reminders."""
    ob = make_event(opened_at=NOW, deadline=None if deadline_in is None else NOW + deadline_in).obligation
    end = NOW + timedelta(days=12)
    hourly: set[str] = set()
    at = NOW
    while at <= end:
        hourly |= {e.id for e in reminders_due(ob, policy, at)}
        at += timedelta(hours=1)
    looked: set[str] = set()
    look: datetime | None = NOW
    looks = 0
    while look is not None and look <= end:
        looked |= {e.id for e in reminders_due(ob, policy, look)}
        after = next_reminder_at(ob, policy, look)
        assert after is None or after > look
        look, looks = after, looks + 1
    if look is not None:  # the window ended: what is left is found at the window's end
        looked |= {e.id for e in reminders_due(ob, policy, end)}
    assert looked == hourly
    assert looks <= len(hourly) + 3  # about one look per reminder, not one per cycle


def test_no_next_look_for_a_resolved_obligation_or_an_empty_policy() -> None:
    ob = make_event(opened_at=NOW, deadline=NOW + timedelta(days=3)).obligation
    assert next_reminder_at(ob, NO_REMINDERS, NOW) is None
    assert next_reminder_at(replace(ob, status="resolved"), POLICIES[0], NOW) is None
    assert next_reminder_at(ob, POLICIES[3], NOW) == NOW + timedelta(days=3)
