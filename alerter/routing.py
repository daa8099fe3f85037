"""Grouping decisions (pure): events into groups, due groups into notifications, initial-sync
digests. No IO, no clock: `now` is an argument.

How this works: `plan` routes each event (see alerter.router) and puts each (rule,
receiver, group_by values) in a group: a new group flushes `group_wait` after its first
event; an event joining a group with pending events leaves its flush time alone; one
joining an idle group flushes at `last_flush_at + group_interval` (or now, if that is
past). Resolutions go only to receivers that were told about the opening, and only under
rules with `send_resolved`; silenced events are recorded, not grouped. `flush` turns every
due group into one Notification whose id depends only on the group and its first event,
so recomputing the same flush after a crash yields the same notification.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from alerter.matching import Matcher, MatcherError, compile_matcher, parse_silence_matchers
from alerter.models import Event, Notification
from alerter.router import (
    DEFAULT_GROUP_BY,
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_GROUP_WAIT,
    DEFAULT_REMIND,
    Placement,
    Router,
    Rule,
    RuleTable,
    Target,
)
from alerter.store.base import GroupState, RoutingWrite, Silence

__all__ = [
    "DEFAULT_GROUP_BY",
    "DEFAULT_GROUP_INTERVAL",
    "DEFAULT_GROUP_WAIT",
    "DEFAULT_REMIND",
    "FlushResult",
    "Placement",
    "Router",
    "Rule",
    "RuleTable",
    "Target",
    "active_silences",
    "digest",
    "digest_summary",
    "flush",
    "notification_id",
    "parse_silence_matchers",
    "plan",
]


def active_silences(silences: Iterable[Silence], now: datetime) -> list[tuple[str, Matcher]]:
    """(silence id, compiled matcher) of silences in force at `now`; an invalid one is skipped."""
    out: list[tuple[str, Matcher]] = []
    for s in silences:
        if s.starts_at <= now < s.ends_at:
            try:
                out.append((s.id, compile_matcher(s.matchers)))
            except MatcherError:
                continue
    return out


def plan(
    events: Iterable[Event],
    router: Router,
    groups: Mapping[str, GroupState] | Sequence[GroupState],
    notified: Mapping[str, set[str]],
    silences: Sequence[Silence],
    now: datetime,
) -> RoutingWrite:
    """Route events into groups. `notified`: obligation key id -> receivers told of its opening.

    Every event ends in `consumed`; a silenced one in `silenced` instead of a group.
    Events of an initial sync (`initial=True`) are not grouped: they become one digest
    notification per receiver in `notifications` (pass the whole backlog in one call).
    """
    known = _as_map(groups)
    silenced_by = active_silences(silences, now)
    added: dict[str, dict[str, None]] = {}
    """group key -> event ids added in this call (a dict: ordered, and each id once)."""
    where: dict[str, Placement] = {}
    consumed: list[str] = []
    silenced: list[tuple[str, str]] = []
    initial: list[Event] = []
    for ev in events:
        ev_id = ev.id
        consumed.append(ev_id)
        if silenced_by:
            sid = next((sid for sid, m in silenced_by if m.matches(ev, now)), None)
            if sid is not None:
                silenced.append((ev_id, sid))
                continue
        if ev.initial:
            initial.append(ev)
            continue
        placed = router.placements(ev, now)
        if ev.kind == "resolved":
            told = notified.get(ev.obligation.key_id) or set()
            placed = [p for p in placed if p.rule.send_resolved and p.receiver in told]
        for p in placed:
            ids = added.get(p.key)
            if ids is None:
                ids = added[p.key] = {}
                where[p.key] = p
            ids[ev_id] = None
    return RoutingWrite(
        consumed=consumed,
        groups=[_grown(where[key], known.get(key), ids, now) for key, ids in added.items()],
        notifications=digest(initial, router, now) if initial else [],
        silenced=silenced,
    )


def _grown(p: Placement, state: GroupState | None, ids: dict[str, None], now: datetime) -> GroupState:
    """A group with new events. Only ids added in this call are de-duplicated: the store
    consumes each event once, in the transaction that stores the group."""
    if state is None:
        values = dict(zip(p.rule.group_by, p.values, strict=True))
        return GroupState(p.key, p.rule.name, p.receiver, values, now + p.rule.group_wait, None, tuple(ids))
    if state.pending:
        flush_at = state.flush_at
    elif state.last_flush_at is None:
        flush_at = now + p.rule.group_wait
    else:
        flush_at = max(now, state.last_flush_at + p.rule.group_interval)
    return GroupState(
        state.key, state.rule, state.receiver, state.values, flush_at, state.last_flush_at, (*state.pending, *ids)
    )


def _as_map(groups: Mapping[str, GroupState] | Sequence[GroupState]) -> Mapping[str, GroupState]:
    return groups if isinstance(groups, Mapping) else {g.key: g for g in groups}


def notification_id(group_key: str, first_event_id: str) -> str:
    """The default id of a flush: the same group and first event always give the same id."""
    return hashlib.sha256(f"{group_key}\x1f{first_event_id}".encode()).hexdigest()[:32]


class FlushResult(NamedTuple):
    notifications: list[Notification]
    groups: list[GroupState]
    """Groups flushed (now idle)."""
    deleted: list[str]
    """Keys of groups idle for more than 2 × group_interval."""

    def write(self) -> RoutingWrite:
        return RoutingWrite(
            consumed=(), groups=self.groups, deleted_groups=self.deleted, notifications=self.notifications
        )


def flush(
    groups: Mapping[str, GroupState] | Sequence[GroupState],
    events_by_id: Mapping[str, Event],
    now: datetime,
    id_factory: Callable[[str, str], str] = notification_id,
    *,
    ruleset: RuleTable | None = None,
    force: bool = False,
) -> FlushResult:
    """Due groups (`flush_at <= now`, or all with pending events when `force`) become one
    Notification each and go idle. `id_factory(group_key, first_event_id)` names them.
    `ruleset` gives each group's `group_interval` (default 5m) for the idle clean-up."""
    notes: list[Notification] = []
    updated: list[GroupState] = []
    deleted: list[str] = []
    intervals = (
        {r.name: r.group_interval for r in (*ruleset.rules, *filter(None, [ruleset.fallback]))} if ruleset else {}
    )
    shortest = min([DEFAULT_GROUP_INTERVAL, *intervals.values()])
    candidates = [  # a cheap first pass: due groups, and idle ones that may be old enough
        g
        for g in _as_map(groups).values()
        if ((force or g.flush_at <= now) if g.pending else now - (g.last_flush_at or g.flush_at) > 2 * shortest)
    ]
    for g in sorted(candidates, key=lambda g: g.key):
        interval = intervals.get(g.rule, DEFAULT_GROUP_INTERVAL)
        if g.pending and (force or g.flush_at <= now):
            evs = tuple(events_by_id[i] for i in g.pending if i in events_by_id)
            if evs:
                notes.append(
                    Notification(
                        id=id_factory(g.key, g.pending[0]),
                        rule=g.rule,
                        receiver=g.receiver,
                        group=dict(g.values),
                        events=evs,
                        created_at=now,
                    )
                )
            updated.append(replace(g, pending=(), last_flush_at=now, flush_at=now + interval))
        elif not g.pending and now - (g.last_flush_at or g.flush_at) > 2 * interval:
            deleted.append(g.key)
    return FlushResult(notes, updated, deleted)


def digest(events: Iterable[Event], router: Router, now: datetime) -> list[Notification]:
    """An initial sync's backlog: ONE notification (kind `digest`, rule `initial-sync`) per
    receiver, its events ordered by deadline; the id depends only on receiver and events."""
    per: dict[str, dict[str, Event]] = {}
    for ev in events:
        for t in router.route(ev, now):
            per.setdefault(t.receiver, {}).setdefault(ev.id, ev)
    out: list[Notification] = []
    for receiver, by_id in per.items():
        raw = "\x1f".join(["digest", receiver, *sorted(by_id)])
        out.append(
            Notification(
                id=hashlib.sha256(raw.encode()).hexdigest()[:32],
                kind="digest",
                rule="initial-sync",
                receiver=receiver,
                events=tuple(sorted(by_id.values(), key=_deadline_order)),
                created_at=now,
            )
        )
    return out


def _deadline_order(ev: Event) -> tuple[bool, datetime | None, str, str]:
    o = ev.obligation
    return (o.deadline is None, o.deadline, o.meter_id, o.action_type)


DEADLINE_BUCKETS = ("overdue", "within 1d", "within 7d", "within 30d", "later", "no deadline")


def digest_summary(events: Sequence[Event], now: datetime | None = None) -> dict[str, Any]:
    """Counts for digest templates: total, meters, by action type, by region, by deadline bucket.

    `now` defaults to the latest `occurred_at` among the events (the function stays pure).
    """
    if now is None:
        now = max((e.occurred_at for e in events), default=None)
    by_type: dict[str, int] = {}
    by_region: dict[str, int] = {}
    by_deadline = dict.fromkeys(DEADLINE_BUCKETS, 0)
    for ev in events:
        o = ev.obligation
        by_type[o.action_type] = by_type.get(o.action_type, 0) + 1
        region = o.meter.transmission_region or "unknown"
        by_region[region] = by_region.get(region, 0) + 1
        by_deadline[_bucket(o.deadline, now)] += 1
    return {
        "total": len(events),
        "meters": len({e.obligation.meter_id for e in events}),
        "by_action_type": dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_region": dict(sorted(by_region.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_deadline": by_deadline,
    }


def _bucket(deadline: datetime | None, now: datetime | None) -> str:
    if deadline is None or now is None:
        return "no deadline"
    left = deadline - now
    if left <= timedelta(0):
        return "overdue"
    for days, name in ((1, "within 1d"), (7, "within 7d"), (30, "within 30d")):
        if left <= timedelta(days=days):
            return name
    return "later"
