"""The polling cycle: read Leap, diff a few pages at a time, commit obligations and events, move the watermark.

How this works:
- `initial`: the state has never finished a sync. Full `partner_action_required` sweep;
  its events are marked initial (routing turns them into a digest or notifications per
  `poll.initial_sync`; in `silent` mode they are not written: the obligations are the baseline).
- `incremental`: `partner_action_required: true` with `last_modified_date_time =
  watermark - overlap`, then the meters that still have open obligations are re-read
  by `meter_ids` (at most 1000 a request) with the same `last_modified_date_time`, since
  the filtered query hides meters whose actions just cleared.
- `reconcile` (every `poll.reconcile_interval`): a full filtered sweep; open obligations
  of meters the complete sweep no longer lists are resolved (`reconcile`). A sweep with a
  failed page raises before anything is resolved. An invalid record whose `meter_id` is
  readable lists its meter (its obligations stay open, the others' resolutions go on); one
  without a readable id leaves the sweep incomplete: it resolves nothing by absence.
A meter whose processing fails (its stored state unreadable, its diff or its commit failing)
is set apart, counted and logged (`meter_failed`), and the rest of its page and cycle goes on
(see `isolation`).
A page's obligations and the events they produce are committed in one transaction, together
with the few pages before it (`_Batch`: at most `BATCH_ROWS` rows or `BATCH_SECONDS` old, and
always at the end of a read); the watermark (the highest `audit.updated_at` seen) advances
only after the whole cycle is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import structlog

from alerter.config import PollConfig
from alerter.diff import resolve
from alerter.isolation import Faults, commit_apart, diff_apart, load_apart
from alerter.models import Event, FirstLook, Obligation, ObligationKey, Record
from alerter.readahead import read_ahead as read_ahead
from alerter.readahead import read_ahead_groups
from alerter.selection import Selected, SourceLike, select_pages
from alerter.store.base import META_INITIALIZED, META_LAST_CYCLE, META_LAST_RECONCILE, META_WATERMARK, ObligationStore

CycleKind = Literal["initial", "incremental", "reconcile", "push"]
RESOLVE_BATCH = 500
_METER_ID = operator.attrgetter("meter_id")
READ_AHEAD = 4
"""Pages fetched and decoded ahead of the diff."""
GROUP_PAGES = 4
"""Pages diffed together, with one read of stored state (fewer only at the end of a read)."""
BATCH_ROWS = 12_000
"""Obligation and event rows a sweep gathers from consecutive pages before committing them."""
BATCH_SECONDS = 1.0
"""The longest a page's events wait in memory for the pages after it before being committed."""
WRITTEN_BITS = 1 << 24
"""Bits (2 MiB) of the filter of meters a read of a fresh state has written (`Written`)."""
_WRITTEN_MASK = WRITTEN_BITS - 1
FUTURE_SKEW = timedelta(minutes=5)
"""A record dated this far past the cycle's clock is logged (`updated_at_in_future`). The
watermark never passes the cycle's clock: one record dated in the future would otherwise move
it there for good, and every incremental read until then would find nothing."""
NAMED = 20
"""Skipped meters a cycle report names (the log names every one)."""


@dataclass
class CycleReport:
    cycle_id: str
    kind: CycleKind
    pages: int = 0
    records: int = 0
    invalid: int = 0
    """Records that failed validation, skipped."""
    unidentified: int = 0
    """Of those, the records without a readable meter id."""
    failed: int = 0
    """Meters whose processing failed (stored state unreadable, diff or commit), skipped."""
    skipped_meters: list[str] = field(default_factory=list)
    """The first `NAMED` meters skipped (invalid or failed), to name them."""
    incomplete: bool = False
    """A sweep that resolved nothing by absence, as a record without a readable id was skipped."""
    events: Counter[str] = field(default_factory=Counter)
    watermark: datetime | None = None
    duration: float = 0.0
    changed: Counter[str] = field(default_factory=Counter)
    """Events per meter, of the changes found (not those of an initial sync)."""

    def skipped(self, meter_ids: Sequence[str]) -> None:
        room = NAMED - len(self.skipped_meters)
        if room > 0:
            self.skipped_meters.extend(m for m in meter_ids[:room] if m not in self.skipped_meters)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Written:
    """The meters a read has written, as a Bloom filter of fixed size (`WRITTEN_BITS`, four bits
    an id): `might` is true for every meter added, and, with 245,000 added, for about one meter
    in 55,000 not added (a group of 2,000 meters then reads stored state for nothing about once
    in 28 groups; with one bit an id, at nearly every group)."""

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = bytearray(WRITTEN_BITS >> 3)

    def add(self, meter_id: str) -> None:
        bits, h = self.bits, hash(meter_id)
        at, step = h & _WRITTEN_MASK, (h >> 32) | 1
        for _ in range(4):
            bits[at >> 3] |= 1 << (at & 7)
            at = (at + step) & _WRITTEN_MASK

    def might(self, meter_id: str) -> bool:
        bits, h = self.bits, hash(meter_id)
        at, step = h & _WRITTEN_MASK, (h >> 32) | 1
        for _ in range(4):
            if not bits[at >> 3] & (1 << (at & 7)):
                return False
            at = (at + step) & _WRITTEN_MASK
        return True


class _Batch:
    """Consecutive pages' obligation changes and events, committed together in one transaction.

    Each commit on SQLite rewrites the index pages it touches, and obligations and events
    are keyed by hashes spread over every index page: committing a sweep's pages a few at a
    time rather than one by one writes far less. A batch is committed when it holds
    `BATCH_ROWS` rows or its oldest page is `BATCH_SECONDS` old, and at the end of each read.
    What a crash loses is only what the watermark has not passed, so the next cycle reads
    it again and produces the same events under the same ids.
    """

    def __init__(
        self,
        store: ObligationStore,
        report: CycleReport,
        log: structlog.typing.FilteringBoundLogger,
        look: FirstLook | None = None,
        quiet: bool = False,
    ) -> None:
        self.store = store
        self.report = report
        self.log = log
        self.look = look
        self.quiet = quiet
        """An initial sync in `silent` mode: the baseline's obligations are written, its events
        (which routing would only mark routed) are not."""
        self.obligations: dict[ObligationKey, Obligation] = {}
        self.by_meter: dict[str, list[Obligation]] = {}
        self.events: list[Event] = []
        self.since = 0.0
        self.committing: asyncio.Future[None] | None = None
        """The batch before this one, committing while this one is read and diffed."""
        self.written: Written | None = None
        """In a read of a state that held no obligation when it began: which meters it may have
        written, the only ones whose stored state it reads back."""

    def fresh(self) -> None:
        """The state held no obligation when this read began, and only this read writes it."""
        self.written = Written()

    def to_load(self, meter_ids: Sequence[str]) -> Sequence[str]:
        """The meters whose stored state may hold obligations (all of them unless `fresh`)."""
        written = self.written
        if written is None:
            return meter_ids
        might = written.might
        return [m for m in meter_ids if might(m)]

    def abandon(self) -> None:
        """Leaves the batch committing to itself (it commits whole or not at all)."""
        if self.committing is not None:
            self.committing.cancel()
            self.committing = None

    async def settled(self) -> None:
        """Waits for the batch committing (its failure raised here)."""
        committing, self.committing = self.committing, None
        if committing is not None:
            await committing

    def overlay(self, prior: dict[ObligationKey, Obligation], meter_ids: Sequence[str]) -> None:
        """Obligations this batch changed but has not committed replace what the store holds."""
        if self.by_meter:
            for meter_id in meter_ids:
                for ob in self.by_meter.get(meter_id, ()):
                    prior[ob.key] = self.obligations[ob.key]

    async def add(self, obligations: Sequence[Obligation], events: Sequence[Event]) -> None:
        """Adds a group's changes (or none), then commits if the batch is full or old enough."""
        if obligations or events:
            if not self.obligations and not self.events:
                self.since = time.monotonic()
            written = self.written
            for ob in obligations:
                key = ob.key
                if key not in self.obligations:
                    self.by_meter.setdefault(ob.meter_id, []).append(ob)
                self.obligations[key] = ob
                if written is not None:
                    written.add(ob.meter_id)
            self.events.extend(events)
        rows = len(self.obligations) + len(self.events)
        if rows and (rows >= BATCH_ROWS or time.monotonic() - self.since >= BATCH_SECONDS):
            await self.flush(wait=False)

    async def flush(self, wait: bool = True) -> None:
        """Commits the batch. With `wait=False` it commits while the caller reads and diffs the
        next pages (the store's writer works beside this thread): before anything reads stored
        state, or commits again, `settled` waits for it."""
        await self.settled()
        if not self.obligations and not self.events:
            return
        obligations, events = list(self.obligations.values()), self.events
        self.obligations, self.by_meter, self.events = {}, {}, []
        if wait:
            await self.commit(obligations, events)
        else:
            self.committing = asyncio.ensure_future(self.commit(obligations, events))

    async def commit(self, obligations: Sequence[Obligation], events: Sequence[Event]) -> None:
        """Commits in one transaction; a meter the store will not take is set apart. A quiet
        batch's diffs build no events; the resolutions of unlisted meters come here too."""
        if self.quiet:
            events = ()
        failed = await commit_apart(self.store, obligations, events, self.probe, self.look)
        if failed:
            self.failed(failed, "commit")
            events = [e for e in events if e.obligation.meter_id not in failed]
        self.report.events.update(e.kind for e in events)
        self.report.changed.update(e.obligation.meter_id for e in events if not e.initial)

    async def probe(self) -> None:
        """An empty, fenced write: raises when the store (rather than one meter's data) is at fault."""
        await self.store.set_meta({})

    def failed(self, faults: Faults, stage: str) -> None:
        """Counts and names meters set apart; their changes wait for a later read of them."""
        self.report.failed += len(faults)
        self.report.skipped(list(faults))
        for meter_id, err in faults.items():
            self.log.error("meter_failed", meter_id=meter_id, stage=stage, error=_describe(err), exc_info=err)


class Poller:
    """Runs one cycle at a time against a source and a store; `now` comes from the caller."""

    def __init__(
        self, store: ObligationStore, source: SourceLike, poll: PollConfig, look: FirstLook | None = None
    ) -> None:
        self.store = store
        self.source = source
        self.poll = poll
        self.look = look
        """When the reminders step first looks at an obligation written (default: next step)."""
        self.log = structlog.get_logger("alerter.poller")

    async def next_kind(self, now: datetime, force_reconcile: bool = False) -> CycleKind:
        if await self.store.get_meta(META_INITIALIZED) != "1":
            return "initial"
        last = _parse(await self.store.get_meta(META_LAST_RECONCILE))
        if force_reconcile or last is None or now - last >= self.poll.reconcile_interval:
            return "reconcile"
        watermark = _parse(await self.store.get_meta(META_WATERMARK))
        if watermark is None or watermark > now:  # none yet, or one in the future: read everything
            return "reconcile"
        return "incremental"

    async def run_cycle(self, now: datetime, *, force_reconcile: bool = False) -> CycleReport:
        started = time.perf_counter()
        kind = await self.next_kind(now, force_reconcile)
        report = CycleReport(cycle_id=uuid.uuid4().hex[:12], kind=kind)
        log = self.log.bind(cycle_id=report.cycle_id, cycle=kind)
        watermark = _parse(await self.store.get_meta(META_WATERMARK))
        if watermark is not None and watermark > now:  # stored so by an earlier version: a full sweep
            log.warning("updated_at_in_future", watermark=_iso(watermark), now=_iso(now))
            watermark = None
        report.watermark = watermark
        initial = kind == "initial"

        unfiltered = kind == "incremental" and self.poll.resolution_check == "unfiltered"
        filters: dict[str, object] = {} if unfiltered else {"partner_action_required": True}
        since = watermark - self.poll.overlap if watermark and kind == "incremental" else None
        if since is not None:
            filters["last_modified_date_time"] = _iso(since)
        # A sweep: meters with open obligations before it are what a complete sweep must list
        # again (`unlisted`), and with those it finds listing partner actions, the only meters
        # whose state it reads (`tracked`).
        sweep = kind != "incremental"
        unlisted = set(await self.store.open_meter_ids()) if sweep else set()
        tracked = set(unlisted) if sweep else None
        seen: set[str] = set()  # an incremental read's meters (bounded by its window)

        batch = _Batch(self.store, report, log, self.look, quiet=initial and self.poll.initial_sync == "silent")
        bulk = self.store.bulk_load() if initial else contextlib.nullcontext(False)
        search = read_ahead_groups(select_pages(self.source.search(filters), tracked), READ_AHEAD, GROUP_PAGES)
        async with bulk as fresh, contextlib.aclosing(search) as groups, self._committing(batch):
            if fresh:
                batch.fresh()
            async for group in groups:
                ids = await self._apply(group, now, initial, batch)
                if sweep:
                    unlisted.difference_update(ids)
                else:
                    seen.update(ids)

        if kind == "incremental" and not unfiltered:
            recheck = [m for m in await self.store.open_meter_ids() if m not in seen]
            if recheck:
                found = select_pages(self.source.search_meters(recheck, since), None)
                meters = read_ahead_groups(found, READ_AHEAD, GROUP_PAGES)
                async with contextlib.aclosing(meters) as groups, self._committing(batch):
                    async for group in groups:
                        await self._apply(group, now, initial, batch)
        elif report.unidentified:
            report.incomplete = True
            log.warning(
                "reconcile_skipped",
                reason="records without a readable meter_id failed validation",
                unidentified=report.unidentified,
            )
        elif unlisted:
            # pages that shift while a sweep reads them can leave a meter out of every page: each is
            # asked for by id before its absence resolves anything
            await self._reread(sorted(unlisted), now, initial, batch, {"partner_action_required": True})

        meta = {META_LAST_CYCLE: _iso(now)}
        if report.watermark is not None:
            meta[META_WATERMARK] = _iso(report.watermark)
        if kind != "incremental":
            meta[META_LAST_RECONCILE] = _iso(now)
            meta[META_INITIALIZED] = "1"
        await self.store.set_meta(meta)
        report.duration = time.perf_counter() - started
        log.info(
            "cycle_done",
            pages=report.pages,
            records=report.records,
            invalid=report.invalid,
            unidentified=report.unidentified,
            failed=report.failed,
            events=dict(report.events),
            watermark=meta.get(META_WATERMARK),
            seconds=round(report.duration, 3),
        )
        return report

    async def run_meters(self, meter_ids: Sequence[str], now: datetime) -> CycleReport:
        """A targeted cycle (a push named these meters): re-read them by `meter_ids` and commit what
        changed exactly as a poll would. Leap's answer is the truth, whatever the push said: a
        meter the complete re-read lists without an action resolves it, one it no longer lists at
        all has its open obligations resolved (`reconcile`) unless a record without a readable
        meter id failed validation.
        The watermark and the cycle's meta are left alone, so the polls still read every change.
        """
        started = time.perf_counter()
        report = CycleReport(cycle_id=uuid.uuid4().hex[:12], kind="push")
        batch = _Batch(self.store, report, self.log.bind(cycle_id=report.cycle_id, cycle="push"), self.look)
        await self._reread(meter_ids, now, False, batch)
        report.duration = time.perf_counter() - started
        return report

    async def _reread(
        self,
        meter_ids: Sequence[str],
        now: datetime,
        initial: bool,
        batch: _Batch,
        filters: Mapping[str, object] | None = None,
    ) -> None:
        """These meters read again by `meter_ids` (with `filters`) and what changed committed as a
        poll would; those the complete read no longer lists have their open obligations resolved
        (`reconcile`), unless a record without a readable meter id failed validation (an invalid
        record with a readable id still lists its meter)."""
        unlisted = set(meter_ids)
        pages = self.source.search_meters(meter_ids, None, filters)
        found = read_ahead_groups(select_pages(pages, None), READ_AHEAD, GROUP_PAGES)
        async with contextlib.aclosing(found) as groups, self._committing(batch):
            async for group in groups:
                unlisted.difference_update(await self._apply(group, now, initial, batch))
        if unlisted and not batch.report.unidentified:
            await self._resolve_unlisted(sorted(unlisted), now, initial, batch)

    @contextlib.asynccontextmanager
    async def _committing(self, batch: _Batch) -> AsyncIterator[None]:
        """Commits the batch after a read; after a failed read too, keeping what its pages found."""
        try:
            yield
        except Exception:
            with contextlib.suppress(Exception):
                await batch.flush()
            raise
        except BaseException:  # cancelled: what was not committed is read again next time
            batch.abandon()
            raise
        await batch.flush()

    async def _apply(self, pages: Sequence[Selected], now: datetime, initial: bool, batch: _Batch) -> list[str]:
        """Diffs and commits consecutive pages together (one read of stored state for all);
        returns the ids of the meters they list (those diffed and those whose record was invalid).

        A meter listed twice (it changed while the sweep paged) is diffed once, as its later
        copy lists it. A meter whose stored state cannot be read or whose diff fails is set apart.
        """
        report = batch.report
        records: list[Record] = []
        invalid_ids: list[str] = []
        for page in pages:
            report.pages += 1
            report.records += page.listed
            report.invalid += page.invalid
            if page.invalid:
                report.unidentified += page.invalid - len(page.invalid_ids)
                report.skipped(page.invalid_ids)
                invalid_ids.extend(page.invalid_ids)
            if page.max_updated_at and (report.watermark is None or page.max_updated_at > report.watermark):
                report.watermark = min(page.max_updated_at, now)
                if page.max_updated_at > now + FUTURE_SKEW:
                    batch.log.warning("updated_at_in_future", updated_at=_iso(page.max_updated_at), now=_iso(now))
            records.extend(page.records)
        ids = list(map(_METER_ID, records))
        if len(set(ids)) < len(ids):
            latest = dict(zip(ids, records, strict=True))
            records, ids = list(latest.values()), list(latest)
        if records:
            prior: dict[ObligationKey, Obligation] = {}
            load = batch.to_load(ids)
            if load:
                await batch.settled()
                prior, failed = await load_apart(self.store, load, batch.probe)
                if failed:
                    batch.failed(failed, "load")
                    records = [r for r in records if r.meter_id not in failed]
            batch.overlay(prior, ids)
            result, failed = diff_apart(records, prior, now, initial, with_events=not batch.quiet)
            if failed:
                batch.failed(failed, "diff")
            await batch.add(result.obligations, result.events)
        else:
            await batch.add((), ())
        return ids + invalid_ids if invalid_ids else ids

    async def _resolve_unlisted(self, meter_ids: list[str], now: datetime, initial: bool, batch: _Batch) -> None:
        await batch.settled()
        for i in range(0, len(meter_ids), RESOLVE_BATCH):
            prior, failed = await load_apart(self.store, meter_ids[i : i + RESOLVE_BATCH], batch.probe)
            if failed:
                batch.failed(failed, "load")
            events: list[Event] = [
                resolve(ob, "reconcile", now, initial) for ob in prior.values() if ob.status == "open"
            ]
            obligations: list[Obligation] = [e.obligation for e in events]
            if events:
                await batch.commit(obligations, events)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]
