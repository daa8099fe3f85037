"""One cycle's steps after the poll: reminders, the initial-sync digest, routing and group flushes.

How this works: each step is a function over the store and the rules in force, and `now`
comes from the caller (nothing here reads the clock). What the steps keep between runs
lives in `Steps`, which the service builds once and keeps for its lifetime: the silence
check (a bad silence is logged once), the reminder ids known to be stored, and the rules
the stored `remind_at` times were computed under. The router and rule set are passed per
call, since a reload replaces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from msgspec.structs import replace

from alerter.digests import DigestBuilder
from alerter.grouping import Limits, SilenceCheck, active_silences, flush, idle_before, plan, windows
from alerter.metrics import Metrics
from alerter.models import (
    Event,
    EventRef,
    GroupState,
    Notification,
    Obligation,
    ObligationKey,
    RoutingWrite,
    Silence,
)
from alerter.reminders import legacy_reminder_ids, next_reminder_at, reminders_due
from alerter.routes import Router
from alerter.rulefile import RuleSet
from alerter.store.base import META_INITIALIZED, META_REMIND_RULES, Store, StoredEvents

ROUTE_BATCH = 4000
"""Pending events routed per step."""
DIGEST_BATCH = 2500
"""Events read per batch of an initial-sync digest's two passes (its memory is one batch and one
part per receiver)."""
FLUSH_EVENTS = 5000
"""Events of a due group loaded and flushed per transaction."""
REMIND_BATCH = 1000
REMINDED_CACHE = 500_000


@dataclass(slots=True, eq=False)
class Steps:
    """What the steps work on and keep between runs, for as long as the service lives."""

    store: Store
    metrics: Metrics
    log: Any
    """The service's bound structlog logger."""
    wake: Callable[[set[str]], None]
    """Wakes the delivery workers of these receivers (routing wrote notifications for them)."""
    silences: SilenceCheck = field(default_factory=SilenceCheck)
    remind_rules: str | None = None
    """The rules digest the stored `remind_at` times are known to be computed under."""
    synced: bool = False
    """The initial sync is known to be complete (`META_INITIALIZED`)."""
    reminded: set[str] = field(default_factory=set)
    """Reminder event ids known to be in the store, so each is serialized and offered once."""


def first_look(router: Router, ob: Obligation) -> datetime | None:
    """When the reminders step first looks at an open obligation being written (`FirstLook`):
    one that opens now is due no reminder yet (`reminders_due` at its opening is empty), so its
    first look is its next threshold; any other (changed, or rewritten with new meter
    attributes) is looked at on the next step."""
    if ob.opened_at != ob.last_seen:
        return ob.last_seen
    policy = router.remind_policy(ob, ob.opened_at)
    return next_reminder_at(ob, router.look_policy(policy), ob.opened_at)


async def check_remind_rules(steps: Steps, rules_digests: Mapping[Path, str | None], now: datetime) -> None:
    """New rules (or rules this state has not seen): every open obligation is looked at again.
    Checked before a poll too, so that what it writes (`first_look`) is under these rules."""
    store = steps.store
    rules = hashlib.sha256(orjson.dumps(sorted(f"{k}\x1f{v}" for k, v in rules_digests.items()))).hexdigest()
    if rules != steps.remind_rules and await store.get_meta(META_REMIND_RULES) != rules:
        await store.reset_remind_at(now)
        await store.set_meta({META_REMIND_RULES: rules})
    steps.remind_rules = rules


async def remind(steps: Steps, router: Router, rules_digests: Mapping[Path, str | None], now: datetime) -> int:
    """Reminders of the open obligations due a look (`remind_at`, an indexed column): each
    is looked at, its due reminders committed, and its next look set (`next_reminder_at`);
    the others are not read. New rules (or rules this state has not seen) look at all again.
    Returns how many reminder events were new."""
    store = steps.store
    await check_remind_rules(steps, rules_digests, now)
    new = 0
    previous: set[ObligationKey] = set()
    while True:
        batch = await store.reminder_candidates(now, REMIND_BATCH)
        _unreadable(steps)
        keys = {ob.key for ob in batch}
        if not batch or keys <= previous:  # nothing left due (or nothing moved: never loop)
            return new
        previous = keys
        events: list[Event] = []
        looks: list[tuple[str, int, datetime | None]] = []
        for ob in batch:
            policy = router.remind_policy(ob, now)
            if not policy.empty:
                events.extend(e for e in reminders_due(ob, policy, now) if e.id not in steps.reminded)
            looks.append((ob.key_id, ob.version, next_reminder_at(ob, router.look_policy(policy), now)))
        if events:  # one an earlier version sent, under an id it gave it, is not sent again
            legacy = {old: e for e in events for old in legacy_reminder_ids(e)}
            # at the same instant: under N, the same id was another instant under another `every`
            times = await store.event_times(list(legacy))
            sent = {legacy[i].id for i, at in times.items() if at == legacy[i].occurred_at}
            steps.reminded.update(sent)
            events = [e for e in events if e.id not in sent]
        if events:
            added = await store.commit_page((), events)
            # committed (or already there): no need to offer them again on the next run
            if len(steps.reminded) > REMINDED_CACHE:
                steps.reminded.clear()  # bounded: at worst one round is offered again
            steps.reminded.update(e.id for e in events)
            if added:
                steps.metrics.events.labels("reminder").inc(added)
                new += added
        await store.set_remind_at(looks)


_EVERY_SEQ = 1 << 62
"""A sequence number past every event's."""


async def digest(steps: Steps, router: Router, ruleset: RuleSet, now: datetime) -> None:
    """An initial sync's backlog as one digest per receiver, however large: read twice in
    batches (alerter.digests), written part by part, and consumed at the end. Killed
    midway, the next run builds the same parts again (their ids already stored are kept)."""
    store = steps.store
    await store.finish_initial()  # a digest written before a stop: its consumption goes on
    batch = await store.initial_events(0, DIGEST_BATCH)
    if not len(batch):
        return
    limits = Limits.of(ruleset)
    silences = active_silences(_applicable(steps, await store.list_silences(now)), now)
    builder = DigestBuilder(router, now, dict(limits.max_events), dict(limits.listed), silences)
    # a first sync stopped and read again: each obligation once, as it stands (the sync is
    # complete: no initial event comes after these)
    left_out = await store.initial_superseded(_EVERY_SEQ)
    upto = 0
    while len(batch):
        builder.count(e for e in batch.events() if e.id not in left_out)  # one unreadable is named below
        upto = batch.last
        batch = await store.initial_events(upto, DIGEST_BATCH)
    order = [i for i in await store.initial_by_urgency(upto) if i not in left_out]
    # Batch by batch, in order: each batch is decoded and added while the write of the one before
    # it commits (`_WriteBehind`). A failed write stops the batches after it.
    carried: RoutingWrite | None = None
    async with _WriteBehind() as writing:
        for i in range(0, len(order), DIGEST_BATCH):
            stored = await store.read_events(order[i : i + DIGEST_BATCH])
            if carried is not None:
                await writing.start(_commit_digest(steps, carried))
            notes = builder.add(stored.events())
            _skipped(steps, stored, "digest")  # consumed with the rest (`consume_initial`)
            await writing.settle()
            carried = _digest_write(notes, builder)
    await _commit_digest(steps, carried)
    await _commit_digest(steps, _digest_write(builder.finish(), builder))
    await store.consume_initial(upto)


async def _synced(steps: Steps) -> bool:
    """Whether the first sweep (the initial sync) is complete: until then, a sweep stopped midway
    (Leap failing) has committed only the pages it read, and the next one reads the rest."""
    if not steps.synced:
        steps.synced = await steps.store.get_meta(META_INITIALIZED) == "1"
    return steps.synced


def _digest_write(notes: list[Notification], builder: DigestBuilder) -> RoutingWrite | None:
    """What a digest's batch writes: its finished parts, and what the builder recorded since the
    last write (silenced events, receivers told)."""
    silenced, builder.silenced = builder.silenced, []
    told, builder.told = builder.told, []
    if not (notes or silenced or told):
        return None
    return RoutingWrite(consumed=(), notifications=notes, silenced=silenced, told=told, events_stored=True)


async def _commit_digest(steps: Steps, write: RoutingWrite | None) -> None:
    if write is not None:
        await steps.store.commit_routing(write)
        _count_notifications(steps, write)


async def route(
    steps: Steps, router: Router, ruleset: RuleSet, initial_sync: str, now: datetime, *, flush_all: bool = False
) -> None:
    """Pending events into groups and notifications (an initial sync's per `initial_sync`:
    digest, notify or silent), then the due groups flushed (every one with `flush_all`)."""
    if router.routes_nothing:  # built without rules (not ready): events stay pending
        return
    store = steps.store
    if initial_sync == "digest":
        if not await _synced(steps):  # one digest of the whole backlog, not of the pages read so far
            return
        await digest(steps, router, ruleset, now)
    await _route_pending(steps, router, initial_sync, now)
    # idle groups come along so that flush can delete them (a later event opens a new group)
    due = await store.due_groups(now, force=flush_all, idle_before=idle_before(ruleset, now))
    if not due:
        return
    idle = [g for g in due if not g.pending]
    if idle:
        await _flush(steps, ruleset, idle, {}, now, flush_all)
    limits = Limits.of(ruleset)
    pending = [g for g in due if g.pending]
    silences = _applicable(steps, await store.list_silences(now)) if pending else []
    for group in pending:
        if silences:
            group = await _mute(steps, ruleset, group, silences, now)
        # window by window (whole parts each), one transaction each: a crash between two
        # leaves the rest of the members in the group, flushed next time under the same ids
        for window, parts_of in windows(group, limits.size(group.receiver), FLUSH_EVENTS):
            by_id = {e.id: e for e in await store.load_event_refs(window.pending, group.key)}
            await _flush(steps, ruleset, [window], by_id, now, flush_all, parts_of)
    if pending:
        await store.tidy()  # the flushed members' rows


async def _mute(
    steps: Steps, ruleset: RuleSet, group: GroupState, silences: list[Silence], now: datetime
) -> GroupState:
    """A due group without the members a silence made since they were queued: each is recorded
    as silenced and taken out of the group, in one write before the flush (read again on a
    restart, the flush finds them gone). Its members were routed, and the silences then in force
    applied to them, since its last flush or since it opened: only a silence made or started
    after that is read against them."""
    rule = next((r for r in (*ruleset.rules, *filter(None, [ruleset.fallback])) if r.name == group.rule), None)
    since = group.last_flush_at or group.flush_at - (rule.group_wait if rule else timedelta(0))
    later = active_silences([s for s in silences if max(s.starts_at, s.created_at or s.starts_at) >= since], now)
    if not later:
        return group
    muted: list[tuple[str, str]] = []
    untold: list[tuple[str, str, str]] = []  # the receiver is not told of an opening it never gets
    for i in range(0, len(group.pending), DIGEST_BATCH):
        for ev in (await steps.store.read_events(group.pending[i : i + DIGEST_BATCH])).events():
            sid = next((sid for sid, m in later if m.matches(ev, now)), None)
            if sid is not None:
                muted.append((ev.id, sid))
                if ev.kind == "opened":
                    untold.append((ev.obligation.key_id, group.receiver, ev.id))
    if not muted:
        return group
    flushed = [(group.key, event_id) for event_id, _ in muted]
    await steps.store.commit_routing(RoutingWrite(consumed=(), flushed=flushed, silenced=muted, untold=untold))
    gone = {event_id for event_id, _ in muted}
    return dataclasses.replace(group, pending=tuple(i for i in group.pending if i not in gone))


async def _route_pending(steps: Steps, router: Router, initial_sync: str, now: datetime) -> None:
    """Pending events into groups, batch by batch. A batch's write commits while the next batch
    is decoded and planned: everything that plan needs of the write in flight (the group heads it
    creates or wakes, the receivers it records as told) comes from the write itself, and the next
    batch is read, with its receivers told and the silences, before that write starts. A write
    with notifications (an initial sync's digest routed here) commits before anything else is read.
    """
    store = steps.store
    heads = {g.key: g for g in await store.group_heads()}
    batch = await store.pending_after(0, ROUTE_BATCH)
    carried: RoutingWrite | None = None
    async with _WriteBehind() as writing:
        while len(batch):
            notified = await store.notified_receivers(batch.resolved) if batch.resolved else {}
            silences = _applicable(steps, await store.list_silences(now))
            if carried is not None:  # read before it commits: what it records of them
                resolved = set(batch.resolved)
                for key_id in carried.told_reset:
                    notified.pop(key_id, None)
                for key_id, receiver in carried.told:
                    if key_id in resolved:
                        notified.setdefault(key_id, set()).add(receiver)
                await writing.start(_commit(steps, carried))
            events = batch.events()
            quiet = _skipped(steps, batch, "routing")  # consumed, nothing sent: it cannot be read
            if initial_sync == "notify":
                events = [replace(e, initial=False) if e.initial else e for e in events]
            elif initial_sync == "silent":
                quiet += [e.id for e in events if e.initial]
                events = [e for e in events if not e.initial]
            write = plan(events, router, heads, notified, silences, now)
            if write.lost:  # resolutions some receivers told of the opening get through no rule now
                write = plan(events, router, heads, notified, silences, now, await store.openings(write.lost))
            if quiet:
                write = dataclasses.replace(write, consumed=[*quiet, *write.consumed])
            heads.update((g.key, g) for g in write.groups)  # waiting: each has members appended
            await writing.settle()
            last = len(batch) < ROUTE_BATCH
            if write.notifications or last:
                await _commit(steps, write)
                carried = None
                if last:
                    break
            else:
                carried = write
            batch = await store.pending_after(batch.last, ROUTE_BATCH)
        if carried is not None:
            await _commit(steps, carried)


class _WriteBehind:
    """At most one store write in flight while the main thread decodes and plans the next batch:
    `start` returns once the write has reached the store's thread (the work after it runs no
    await, so a write started but not yet sent would wait for it), `settle` waits for the write
    and raises its failure. Leaving the block on a failure of the work beside it, a write still
    in flight ends first, its own failure not raised over the one leaving."""

    def __init__(self) -> None:
        self._inflight: asyncio.Future[None] | None = None

    async def start(self, write: Coroutine[Any, Any, None]) -> None:
        assert self._inflight is None, "one write at a time"
        self._inflight = asyncio.ensure_future(write)
        await asyncio.sleep(0)

    async def settle(self) -> None:
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            await done

    async def __aenter__(self) -> _WriteBehind:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            await self.settle()
        elif self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight


async def _commit(steps: Steps, write: RoutingWrite) -> None:
    await steps.store.commit_routing(write)
    _count_notifications(steps, write)
    _count_unrouted(steps, write)


async def _flush(
    steps: Steps,
    ruleset: RuleSet,
    groups: list[GroupState],
    by_id: Mapping[str, Event] | Mapping[str, EventRef],
    now: datetime,
    force: bool,
    parts_of: tuple[int, int] | None = None,
) -> None:
    result = flush(groups, by_id, now, ruleset=ruleset, force=force, parts_of=parts_of)
    write = result.write()
    await steps.store.commit_routing(write)
    _count_notifications(steps, write)


def _skipped(steps: Steps, stored: StoredEvents, step: str) -> list[str]:
    """The ids of the events `stored.events()` skipped, each named and counted: one stored event
    that cannot be read (a damaged file, a write cut short) must not stop the others."""
    for event_id, why in stored.unreadable:
        steps.log.error("event_unreadable", event_id=event_id, error=why, skipped_by=step)
        steps.metrics.events_unreadable.labels(step).inc()
    return [event_id for event_id, _ in stored.unreadable]


def _unreadable(steps: Steps) -> None:
    skipped: list[str] = getattr(steps.store, "unreadable", [])
    for problem in skipped:
        steps.log.error("obligation_unreadable", obligation=problem, reason="skipped by reminders")
    skipped.clear()


def _applicable(steps: Steps, silences: list[Silence]) -> list[Silence]:
    usable, skipped = steps.silences.check(silences)
    for silence_id, problem in skipped:  # e.g. a regex saved by an older version: logged once
        steps.log.error("silence_skipped", silence_id=silence_id, problem=problem)
        steps.metrics.silences_skipped.inc()
    return usable


def _count_unrouted(steps: Steps, write: RoutingWrite) -> None:
    for _, kind in write.unrouted:
        steps.metrics.unrouted.labels(kind).inc()
    if write.unrouted:
        steps.log.info("events_unrouted", count=len(write.unrouted), reason="no rule matches, no fallback rule")


def _count_notifications(steps: Steps, write: RoutingWrite) -> None:
    for n in write.notifications:
        steps.metrics.notifications.labels(n.receiver).inc()
    if write.notifications:
        steps.wake({n.receiver for n in write.notifications})
