"""The polling cycle: read Leap, diff a few pages at a time, commit obligations and events, move the watermark.

How this works (DESIGN.md decision 2):
- `initial`: the state has never finished a sync. Full `partner_action_required` sweep;
  its events are marked initial (routing turns them into a digest, notifications, or
  nothing, per `poll.initial_sync`).
- `incremental`: `partner_action_required: true` with `last_modified_date_time =
  watermark - overlap`, then the meters that still have open obligations are re-read
  by `meter_ids` (at most 1000 a request) with the same `last_modified_date_time`, since
  the filtered query hides meters whose actions just cleared.
- `reconcile` (every `poll.reconcile_interval`): a full filtered sweep; open obligations
  of meters the complete sweep no longer lists are resolved (`reconcile`). A sweep with a
  failed page raises before anything is resolved; a sweep with invalid records resolves
  nothing by absence.
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
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

import structlog

from alerter.config import PollConfig
from alerter.diff import diff_records, resolve
from alerter.models import Event, Obligation, ObligationKey, Record
from alerter.store.base import Store

P = TypeVar("P")
CycleKind = Literal["initial", "incremental", "reconcile", "push"]
META_WATERMARK = "watermark"
META_INITIALIZED = "initialized"
META_LAST_RECONCILE = "last_reconcile_at"
META_LAST_CYCLE = "last_cycle_at"
RESOLVE_BATCH = 500
_METER_ID = operator.attrgetter("meter_id")
READ_AHEAD = 4
"""Pages fetched and decoded ahead of the diff."""
GROUP_PAGES = 4
"""Pages diffed together, with one read of stored state (fewer only at the end of a read)."""
BATCH_ROWS = 4000
"""Obligation and event rows a sweep gathers from consecutive pages before committing them."""
BATCH_SECONDS = 1.0
"""The longest a page's events wait in memory for the pages after it before being committed."""


class PageLike(Protocol):
    @property
    def records(self) -> Sequence[Record]: ...
    @property
    def invalid(self) -> int: ...
    @property
    def max_updated_at(self) -> datetime | None: ...
    @property
    def meter_ids(self) -> Sequence[str]:
        """The records' meter ids, in order."""

    @property
    def acting(self) -> Sequence[Record]:
        """The records listing partner actions, in order."""


class SourceLike(Protocol):
    def search(self, filters: dict[str, object]) -> AsyncIterator[PageLike]: ...
    def search_meters(
        self, meter_ids: Sequence[str], last_modified: datetime | None = None
    ) -> AsyncIterator[PageLike]: ...


@dataclass
class CycleReport:
    cycle_id: str
    kind: CycleKind
    pages: int = 0
    records: int = 0
    invalid: int = 0
    events: Counter[str] = field(default_factory=Counter)
    watermark: datetime | None = None
    duration: float = 0.0
    changed: Counter[str] = field(default_factory=Counter)
    """Events per meter, of the changes found (not those of an initial sync)."""


async def read_ahead(pages: AsyncIterator[P], depth: int = 2) -> AsyncGenerator[P, None]:
    """Fetch up to `depth` pages ahead while the caller diffs and commits the current one.

    A page's next-page token is in its body, so page n+1 can only be requested once page n
    is decoded. A producer task requests it right then, not when the caller is done with the
    page before, so the server renders while this process diffs and commits. An error of the
    source is raised to the caller after the pages before it.
    """
    async with contextlib.aclosing(read_ahead_groups(pages, depth)) as groups:
        async for group in groups:
            for page in group:
                yield page


async def read_ahead_groups(pages: AsyncIterator[P], depth: int = 2, least: int = 1) -> AsyncGenerator[list[P], None]:
    """`read_ahead` in groups: at least `least` pages (fewer only at the end), and any more
    already fetched, in order. The caller does its per-page round trips once per group; the
    wait costs nothing, as the pages are requested and decoded meanwhile."""
    queue: asyncio.Queue[tuple[P] | BaseException | None] = asyncio.Queue(maxsize=max(1, depth - 1))

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put((page,))
        except Exception as err:
            await queue.put(err)
        else:
            await queue.put(None)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            items = [await queue.get()]
            while isinstance(items[-1], tuple) and len(items) < least:
                items.append(await queue.get())
            while isinstance(items[-1], tuple) and not queue.empty():
                items.append(queue.get_nowait())
            group = [item[0] for item in items if isinstance(item, tuple)]
            if group:
                yield group
            last = items[-1]
            if last is None:
                break
            if isinstance(last, BaseException):
                raise last
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(slots=True)
class _Selected:
    """What a diff needs of one page: the records that can change state, and the page's counts."""

    records: list[Record]
    listed: int
    invalid: int
    max_updated_at: datetime | None


async def _select(pages: AsyncIterator[PageLike], tracked: set[str] | None) -> AsyncGenerator[_Selected, None]:
    """Each page as it arrives, reduced to the records that can change state.

    `tracked`, when given (a sweep), holds the meters that can have open obligations: those
    open before the sweep, and those it finds listing partner actions (added here, in page
    order, so a later copy of a meter that changed while the sweep paged is kept even when
    it lists none). Only those and meters listing partner actions can change; the others,
    most of a portfolio, are dropped here, while the page is fresh in memory, and not read,
    diffed or kept. Without `tracked` (an incremental read) every record is kept.
    """
    try:
        async for page in pages:
            records = page.records
            if tracked is not None:
                ids = page.meter_ids
                if len(set(ids)) < len(ids):  # a meter listed twice in a page: the later copy
                    latest = dict(zip(ids, records, strict=True))
                    records = [r for r in latest.values() if r.partner_actions or r.meter_id in tracked]
                elif tracked.isdisjoint(ids):
                    records = page.acting
                else:
                    records = [r for r in records if r.partner_actions or r.meter_id in tracked]
                tracked.update(map(_METER_ID, records))
            selected = _Selected(list(records), len(page.records), page.invalid, page.max_updated_at)
            # The rest of the page is freed here, while its objects are fresh in the caches.
            del page, records
            yield selected
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class _Batch:
    """Consecutive pages' obligation changes and events, committed together in one transaction.

    Each commit on SQLite rewrites the index pages it touches, and obligations and events
    are keyed by hashes spread over every index page: committing a sweep's pages a few at a
    time rather than one by one writes far less. A batch is committed when it holds
    `BATCH_ROWS` rows or its oldest page is `BATCH_SECONDS` old, and at the end of each read.
    What a crash loses is only what the watermark has not passed, so the next cycle reads
    it again and produces the same events under the same ids.
    """

    def __init__(self, store: Store, report: CycleReport) -> None:
        self.store = store
        self.report = report
        self.obligations: dict[ObligationKey, Obligation] = {}
        self.by_meter: dict[str, list[Obligation]] = {}
        self.events: list[Event] = []
        self.since = 0.0

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
            for ob in obligations:
                key = ob.key
                if key not in self.obligations:
                    self.by_meter.setdefault(ob.meter_id, []).append(ob)
                self.obligations[key] = ob
            self.events.extend(events)
        rows = len(self.obligations) + len(self.events)
        if rows and (rows >= BATCH_ROWS or time.monotonic() - self.since >= BATCH_SECONDS):
            await self.flush()

    async def flush(self) -> None:
        if not self.obligations and not self.events:
            return
        obligations, events = list(self.obligations.values()), self.events
        self.obligations, self.by_meter, self.events = {}, {}, []
        await self.store.commit_page(obligations, events)
        self.report.events.update(e.kind for e in events)
        self.report.changed.update(e.obligation.meter_id for e in events if not e.initial)


class Poller:
    """Runs one cycle at a time against a source and a store; `now` comes from the caller."""

    def __init__(self, store: Store, source: SourceLike, poll: PollConfig) -> None:
        self.store = store
        self.source = source
        self.poll = poll
        self.log = structlog.get_logger("alerter.poller")

    async def next_kind(self, now: datetime, force_reconcile: bool = False) -> CycleKind:
        if await self.store.get_meta(META_INITIALIZED) != "1":
            return "initial"
        last = _parse(await self.store.get_meta(META_LAST_RECONCILE))
        if force_reconcile or last is None or now - last >= self.poll.reconcile_interval:
            return "reconcile"
        if await self.store.get_meta(META_WATERMARK) is None:
            return "reconcile"
        return "incremental"

    async def run_cycle(self, now: datetime, *, force_reconcile: bool = False) -> CycleReport:
        started = time.perf_counter()
        kind = await self.next_kind(now, force_reconcile)
        report = CycleReport(cycle_id=uuid.uuid4().hex[:12], kind=kind)
        log = self.log.bind(cycle_id=report.cycle_id, cycle=kind)
        watermark = _parse(await self.store.get_meta(META_WATERMARK))
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

        batch = _Batch(self.store, report)
        search = read_ahead_groups(_select(self.source.search(filters), tracked), READ_AHEAD, GROUP_PAGES)
        async with contextlib.aclosing(search) as groups, self._committing(batch):
            async for group in groups:
                ids = await self._apply(group, now, initial, batch)
                if sweep:
                    unlisted.difference_update(ids)
                else:
                    seen.update(ids)

        if kind == "incremental" and not unfiltered:
            recheck = [m for m in await self.store.open_meter_ids() if m not in seen]
            if recheck:
                found = _select(self.source.search_meters(recheck, since), None)
                meters = read_ahead_groups(found, READ_AHEAD, GROUP_PAGES)
                async with contextlib.aclosing(meters) as groups, self._committing(batch):
                    async for group in groups:
                        await self._apply(group, now, initial, batch)
        elif report.invalid:
            log.warning("reconcile_skipped", reason="records failed validation", invalid=report.invalid)
        elif unlisted:
            await self._resolve_unlisted(sorted(unlisted), now, initial, report)

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
            events=dict(report.events),
            watermark=meta.get(META_WATERMARK),
            seconds=round(report.duration, 3),
        )
        return report

    async def run_meters(self, meter_ids: Sequence[str], now: datetime) -> CycleReport:
        """A targeted cycle (a push named these meters): re-read them by `meter_ids` and commit what
        changed exactly as a poll would. Leap's answer is the truth, whatever the push said: a
        meter the complete re-read lists without an action resolves it, one it no longer lists at
        all has its open obligations resolved (`reconcile`) unless a record failed validation.
        The watermark and the cycle's meta are left alone, so the polls still read every change.
        """
        started = time.perf_counter()
        report = CycleReport(cycle_id=uuid.uuid4().hex[:12], kind="push")
        unlisted = set(meter_ids)
        batch = _Batch(self.store, report)
        found = read_ahead_groups(_select(self.source.search_meters(meter_ids), None), READ_AHEAD, GROUP_PAGES)
        async with contextlib.aclosing(found) as groups, self._committing(batch):
            async for group in groups:
                unlisted.difference_update(await self._apply(group, now, False, batch))
        if unlisted and not report.invalid:
            await self._resolve_unlisted(sorted(unlisted), now, False, report)
        report.duration = time.perf_counter() - started
        return report

    @contextlib.asynccontextmanager
    async def _committing(self, batch: _Batch) -> AsyncIterator[None]:
        """Commits the batch after a read; after a failed read too, keeping what its pages found."""
        try:
            yield
        except Exception:
            with contextlib.suppress(Exception):
                await batch.flush()
            raise
        await batch.flush()

    async def _apply(self, pages: Sequence[_Selected], now: datetime, initial: bool, batch: _Batch) -> list[str]:
        """Diffs and commits consecutive pages together (one read of stored state for all);
        returns the ids of the meters diffed.

        A meter listed twice (it changed while the sweep paged) is diffed once, as its later
        copy lists it.
        """
        report = batch.report
        records: list[Record] = []
        for page in pages:
            report.pages += 1
            report.records += page.listed
            report.invalid += page.invalid
            if page.max_updated_at and (report.watermark is None or page.max_updated_at > report.watermark):
                report.watermark = page.max_updated_at
            records.extend(page.records)
        ids = list(map(_METER_ID, records))
        if len(set(ids)) < len(ids):
            latest = dict(zip(ids, records, strict=True))
            records, ids = list(latest.values()), list(latest)
        if records:
            prior = await self.store.load_obligations(ids)
            batch.overlay(prior, ids)
            result = diff_records(records, prior, now, initial=initial)
            await batch.add(result.obligations, result.events)
        else:
            await batch.add((), ())
        return ids

    async def _resolve_unlisted(self, meter_ids: list[str], now: datetime, initial: bool, report: CycleReport) -> None:
        for i in range(0, len(meter_ids), RESOLVE_BATCH):
            prior = await self.store.load_obligations(meter_ids[i : i + RESOLVE_BATCH])
            events: list[Event] = [
                resolve(ob, "reconcile", now, initial) for ob in prior.values() if ob.status == "open"
            ]
            obligations: list[Obligation] = [e.obligation for e in events]
            if events:
                await self.store.commit_page(obligations, events)
                report.events.update(e.kind for e in events)
                report.changed.update(e.obligation.meter_id for e in events if not e.initial)
