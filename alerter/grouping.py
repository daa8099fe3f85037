"""Grouping decisions (pure): events into groups, due groups into notifications, initial-sync
digests. No IO, no clock: `now` is an argument.

How this works: `plan` routes each event (see alerter.routes) and puts each (rule,
receiver, group_by values) in a group: a new group flushes `group_wait` after its first
event; an event joining a group with pending events leaves its flush time alone; one
joining an idle group flushes at `last_flush_at + group_interval` (or now, if that is
past). Resolutions go only to receivers that were told about the opening, and only under
rules with `send_resolved`; silenced events are recorded, not grouped. Membership is
append-only: `plan` needs only group heads (is the group waiting, when does it flush) and
writes the heads it touched plus (group, event) pairs to append, so a batch costs the
same however large its groups already are. `flush` turns every due group (loaded with its
members) into one Notification whose id depends only on the group and its first event,
so recomputing the same flush after a crash yields the same notification (a group over its
receiver's `max_events` becomes several parts, flushed a window at a time: `windows`); it writes the
members it sent, which the store removes (`alerter.store.memory.GroupBook` holds the
same semantics in memory, for tests, benchmarks and `alerter rules test`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from alerter.digests import DEFAULT_MAX_EVENTS, DigestBuilder, urgency
from alerter.matchers import Matcher, MatcherError, compile_matcher
from alerter.models import Event, EventRef, GroupState, Notification, RoutingWrite, Silence
from alerter.routes import (
    DEFAULT_GROUP_INTERVAL,
    Placement,
    Router,
    RuleTable,
)

DIGEST_LISTED = 50
"""A Slack digest lists this many of the most urgent obligations and counts the rest."""


@dataclass(frozen=True)
class Limits:
    """How many events one notification to a receiver holds (`max_events`, by receiver), and
    the receivers whose initial-sync digest lists only the most urgent (Slack: one message)."""

    max_events: Mapping[str, int] = field(default_factory=dict)
    listed: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, ruleset: object) -> Limits:
        """From a RuleSet's receivers (a RuleTable without receivers: the defaults)."""
        receivers: Mapping[str, Any] = getattr(ruleset, "receivers", {})
        sizes, listed = {}, {}
        for name, r in receivers.items():
            cfg = getattr(r, "webhook", None) or getattr(r, "email", None)
            sizes[name] = getattr(cfg, "max_events", None) or DEFAULT_MAX_EVENTS
            if getattr(r, "slack", None) is not None:
                listed[name] = DIGEST_LISTED
        return cls(sizes, listed)

    def size(self, receiver: str) -> int:
        return max(1, self.max_events.get(receiver, DEFAULT_MAX_EVENTS))


def parts(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` in consecutive slices of at most `size` (at least one slice)."""
    return [items[i : i + size] for i in range(0, len(items), size)] or [items]


def active_silences(silences: Iterable[Silence], now: datetime) -> list[tuple[str, Matcher]]:
    """(silence id, compiled matcher) of silences in force at `now`; an invalid one is skipped
    (see `silence_problem`)."""
    out: list[tuple[str, Matcher]] = []
    for s in silences:
        if s.starts_at <= now < s.ends_at:
            matcher = _silence_matcher(s)
            if isinstance(matcher, Matcher):
                out.append((s.id, matcher))
    return out


def silence_problem(silence: Silence) -> str | None:
    """Why a stored silence cannot be applied (e.g. a regex this version refuses, saved by an
    older one), or None. Such a silence silences nothing."""
    matcher = _silence_matcher(silence)
    return matcher if isinstance(matcher, str) else None


class SilenceCheck:
    """Sorts stored silences into those that can be applied and those that cannot, each of the
    latter reported once (the service logs and counts it)."""

    def __init__(self) -> None:
        self.skipped: set[str] = set()

    def check(self, silences: Iterable[Silence]) -> tuple[list[Silence], list[tuple[str, str]]]:
        """(usable silences, newly found (silence id, problem) pairs)."""
        usable: list[Silence] = []
        found: list[tuple[str, str]] = []
        for s in silences:
            if s.id in self.skipped:
                continue
            problem = silence_problem(s)
            if problem is None:
                usable.append(s)
            else:
                self.skipped.add(s.id)
                found.append((s.id, problem))
        return usable, found


def _silence_matcher(silence: Silence) -> Matcher | str:
    if not isinstance(silence.matchers, Mapping):
        return "its matchers are not a mapping"
    try:
        matcher = compile_matcher(silence.matchers)
    except MatcherError as err:
        return "; ".join(err.problems)
    if not matcher.conditions:  # it would silence everything
        return "it has no matcher"
    return matcher


def plan(
    events: Iterable[Event],
    router: Router,
    groups: Mapping[str, GroupState] | Sequence[GroupState],
    notified: Mapping[str, set[str]],
    silences: Sequence[Silence],
    now: datetime,
    openings: Mapping[str, Sequence[Event]] | None = None,
) -> RoutingWrite:
    """Route events into groups. `groups`: the stored heads (see `Store.group_heads`; members
    are not needed). `notified`: obligation key id -> receivers told of its opening (or with an
    event of it queued in a group: `told` records those).

    Every event ends in `consumed` once (an id given twice is routed once); a silenced one
    in `silenced` instead of a group; one that no rule takes (no rule matches and there is no
    fallback rule) in `unrouted` too, for the service to count. A grouped event is appended to each of its groups
    (`appended`, in arrival order). `groups` holds the heads that change: new groups, and
    idle ones an event wakes up (a waiting group keeps its flush time). Events of an initial
    sync (`initial=True`) are not grouped: they become one digest notification per
    receiver in `notifications` (pass the whole backlog in one call).

    A resolution goes to the receivers told of its obligation through the rules that take it now,
    or else those that took it as it opened; one told through a rule that neither does (a change
    moved the obligation out of it) is in `lost`, and with `openings` (obligation key id -> its
    stored openings, as they were) goes through the rule that took the opening it resolves, when
    the rule sends resolutions and its own conditions hold for a resolution of the obligation as
    it opened (not a rule that takes openings alone: `match: {event: opened}`).
    """
    known = _as_map(groups)
    silenced_by = active_silences(silences, now)
    placements = router.placements
    appended: list[tuple[str, str]] = []
    add = appended.append
    refs: dict[str, EventRef] = {}
    where: dict[str, Placement] = {}
    """group key -> its placement, for the groups touched in this call."""
    consumed: dict[str, None] = {}
    silenced: list[tuple[str, str]] = []
    unrouted: list[tuple[str, str]] = []
    initial: list[Event] = []
    queued: dict[str, set[str]] = {}
    """obligation key id -> receivers an event of it was queued to in this call (an opening
    still waiting in its group counts as told: its resolution must follow it)."""
    reopened: dict[str, None] = {}
    """Obligations opened again: who was told of an earlier opening is no longer told."""
    lost: list[tuple[str, str]] = []
    for ev in events:
        ev_id = ev.id
        if ev_id in consumed:
            continue
        consumed[ev_id] = None
        if ev.kind == "opened" and ev.obligation.version > 1:
            key_id = ev.obligation.key_id
            reopened[key_id] = None
            queued.pop(key_id, None)
        if silenced_by:
            sid = next((sid for sid, m in silenced_by if m.matches(ev, now)), None)
            if sid is not None:
                silenced.append((ev_id, sid))
                continue
        if ev.initial:
            initial.append(ev)
            continue
        placed = placements(ev, now)
        if not placed and ev.kind != "reminder":  # a reminder no rule asks for is not a miss
            unrouted.append((ev_id, ev.kind))
        if ev.kind == "resolved":
            key_id = ev.obligation.key_id
            told = (set() if key_id in reopened else notified.get(key_id) or set()) | queued.get(key_id, set())
            placed = [p for p in placed if p.rule.send_resolved and p.receiver in told]
            missing = told - {p.receiver for p in placed}
            if missing:  # a rule that matched as it opened (deadline: {within: 7d}) may not now
                then = placements(ev, ev.obligation.opened_at)
                placed += [p for p in then if p.rule.send_resolved and p.receiver in missing]
                missing -= {p.receiver for p in then}
                if missing and openings is None:
                    lost.append((ev.obligation.meter_id, key_id))
                elif missing:  # through the rule that took the opening it resolves, not a later one
                    opened_at = ev.obligation.opened_at
                    stored = openings.get(key_id, ()) if openings is not None else ()
                    for opening in (o for o in stored if o.obligation.opened_at == opened_at):
                        as_opened = msgspec.structs.replace(opening, kind="resolved")
                        for p in placements(opening, opening.occurred_at):
                            takes = p.rule.send_resolved and p.rule.matcher.matches(as_opened, opened_at)
                            if p.receiver in missing and takes:
                                key, values = router.group_key(p.rule, p.receiver, ev)
                                placed.append(Placement(p.rule, p.receiver, key, values))
                                missing.discard(p.receiver)
        elif placed:
            queued.setdefault(ev.obligation.key_id, set()).update(p.receiver for p in placed)
        if placed:
            refs[ev_id] = EventRef(ev_id, ev.kind, ev.obligation.key_id, told=ev.kind != "resolved")
        for p in placed:
            key = p.key
            add((key, ev_id))
            where[key] = p  # the same placement for every event of the group
    heads = []
    for key, p in where.items():
        state = known.get(key)
        if state is None or not state.waiting:
            heads.append(_joined(p, state, now))
    return RoutingWrite(
        consumed=list(consumed),
        groups=heads,
        appended=appended,
        refs=refs,
        notifications=digest(initial, router, now) if initial else [],
        silenced=silenced,
        unrouted=unrouted,
        told=[(key_id, receiver) for key_id, receivers in queued.items() for receiver in sorted(receivers)],
        told_reset=list(reopened),
        lost=lost,
    )


def _joined(p: Placement, state: GroupState | None, now: datetime) -> GroupState:
    """The head of a new or idle group that events join."""
    if state is None:
        values = dict(zip(p.rule.group_by, p.values, strict=True))
        return GroupState(p.key, p.rule.name, p.receiver, values, now + p.rule.group_wait, None, waiting=True)
    if state.last_flush_at is None:
        flush_at = now + p.rule.group_wait
    else:
        flush_at = max(now, state.last_flush_at + p.rule.group_interval)
    return GroupState(state.key, state.rule, state.receiver, state.values, flush_at, state.last_flush_at, waiting=True)


def _as_map(groups: Mapping[str, GroupState] | Sequence[GroupState]) -> Mapping[str, GroupState]:
    return groups if isinstance(groups, Mapping) else {g.key: g for g in groups}


def notification_id(group_key: str, first_event_id: str) -> str:
    """The default id of a flush: the same group and first event always give the same id."""
    return hashlib.sha256(f"{group_key}\x1f{first_event_id}".encode()).hexdigest()[:32]


class FlushResult(NamedTuple):
    notifications: list[Notification]
    groups: list[GroupState]
    """Heads of the groups flushed (now idle)."""
    deleted: list[str]
    """Keys of groups idle for more than 2 × group_interval."""
    flushed: list[tuple[str, str]]
    """(group key, event id) members sent (or found missing): removed from their groups."""

    def write(self) -> RoutingWrite:
        return RoutingWrite(
            consumed=(),
            groups=self.groups,
            flushed=self.flushed,
            deleted_groups=self.deleted,
            notifications=self.notifications,
            events_stored=True,
        )


def flush(
    groups: Mapping[str, GroupState] | Sequence[GroupState],
    events_by_id: Mapping[str, Event] | Mapping[str, EventRef],
    now: datetime,
    id_factory: Callable[[str, str], str] = notification_id,
    *,
    ruleset: RuleTable | None = None,
    force: bool = False,
    parts_of: tuple[int, int] | None = None,
) -> FlushResult:
    """Due groups (`flush_at <= now`, or all with pending events when `force`) become one
    Notification each and go idle; their members (`pending`, as `Store.due_groups` loads
    them) are written as `flushed`. A group given without its members is left alone.
    `id_factory(group_key, first_event_id)` names them. `ruleset` gives each group's
    `group_interval` (default 5m) for the idle clean-up, and (a RuleSet) each receiver's
    `max_events`: a larger group becomes several notifications (`part`); part 1 keeps the id
    of the whole, part i > 1 is named by the group and its own first event. Given its members
    as references (`Store.load_event_refs`, as routing does), a notification holds them as
    `refs`, as it is written (the events are read when it is delivered). `parts_of`
    (first index, count of the whole): the groups given hold a window of their members that
    starts at part `first index` of a flush of `count` parts (see `windows`)."""
    limits = Limits.of(ruleset)
    notes: list[Notification] = []
    updated: list[GroupState] = []
    deleted: list[str] = []
    flushed: list[tuple[str, str]] = []
    intervals = (
        {r.name: r.group_interval for r in (*ruleset.rules, *filter(None, [ruleset.fallback]))} if ruleset else {}
    )
    shortest = min([DEFAULT_GROUP_INTERVAL, *intervals.values()])
    candidates = [  # a cheap first pass: due groups, and idle ones that may be old enough
        g
        for g in _as_map(groups).values()
        if (
            (force or g.flush_at <= now)
            if g.pending
            else not g.waiting and now - (g.last_flush_at or g.flush_at) > 2 * shortest
        )
    ]
    for g in sorted(candidates, key=lambda g: g.key):
        interval = intervals.get(g.rule, DEFAULT_GROUP_INTERVAL)
        if g.pending and (force or g.flush_at <= now):
            evs = tuple(events_by_id[i] for i in g.pending if i in events_by_id)
            chunks = parts(evs, limits.size(g.receiver)) if evs else []
            for index, chunk in enumerate(chunks, 1):
                notes.append(
                    Notification(
                        id=id_factory(g.key, g.pending[0] if index == 1 else chunk[0].id),
                        rule=g.rule,
                        receiver=g.receiver,
                        group=dict(g.values),
                        events=tuple(e for e in chunk if isinstance(e, Event)),
                        refs=tuple(e for e in chunk if isinstance(e, EventRef)),
                        created_at=now,
                        part=(index, len(chunks)) if parts_of is None else (parts_of[0] + index - 1, parts_of[1]),
                    )
                )
            flushed.extend((g.key, i) for i in g.pending)
            updated.append(replace(g, pending=(), waiting=False, last_flush_at=now, flush_at=now + interval))
        elif not g.waiting and now - (g.last_flush_at or g.flush_at) > 2 * interval:
            deleted.append(g.key)
    return FlushResult(notes, updated, deleted, flushed)


def windows(group: GroupState, size: int, events: int) -> list[tuple[GroupState, tuple[int, int]]]:
    """A due group's members in windows of whole parts of about `events` events each, with
    (first part index, part count) for `flush(parts_of=...)`: a large group is flushed window by
    window, never loaded whole, and its parts and their ids are those of one flush."""
    per = size * max(1, events // size)
    total = -(-len(group.pending) // size)
    return [
        (replace(group, pending=group.pending[i : i + per]), (i // size + 1, total))
        for i in range(0, len(group.pending), per)
    ]


def idle_before(ruleset: RuleTable | None, now: datetime) -> datetime:
    """Groups idle since before this may be old enough for `flush` to delete (`Store.due_groups`)."""
    rules = (*ruleset.rules, *filter(None, [ruleset.fallback])) if ruleset else ()
    return now - 2 * min([DEFAULT_GROUP_INTERVAL, *(r.group_interval for r in rules)])


def digest(
    events: Iterable[Event], router: Router, now: datetime, silences: Sequence[tuple[str, Matcher]] = ()
) -> list[Notification]:
    """An initial sync's backlog: a digest (kind `digest`, rule `initial-sync`) per receiver,
    its events ordered by deadline (the most urgent first), with the counts of the whole
    (`summary`). More events than the receiver's `max_events` make several parts, each
    with the whole summary; a Slack receiver gets one message listing the most urgent. An id
    depends only on receiver, part and events. (alerter.digests builds the same over a
    backlog read in batches.)"""
    limits = Limits.of(router.ruleset)
    unique = list({e.id: e for e in events}.values())
    builder = DigestBuilder(router, now, dict(limits.max_events), dict(limits.listed), silences)
    builder.count(unique)
    return [*builder.add(sorted(unique, key=urgency)), *builder.finish()]
