"""Push processing: inbox events -> the meters they name -> a targeted cycle -> routing and delivery at once.

How this works: the worker wakes when the endpoint stores a new event (and every second, for
events another replica received and for retries). Only the leader processes, and only once the
initial sync is done. It takes the due inbox rows, coalesces them per meter (10,000 events about
1,000 meters are one `meter_ids` request), and runs `Service.targeted_cycle`: the meters are
re-read from Leap and diffed, committed (transactional outbox) and routed exactly as a poll
would, so a stale, reordered or duplicated push cannot open or resolve anything Leap does not
show. Then delivery runs at once (`group_wait: 0s` reaches a receiver within a second). A re-read
that fails leaves the rows in the inbox and holds the worker for a backoff (1 s doubling to 5
min), so the rows received meanwhile are re-read together when it ends; a
row still failing after a day is given up (the polls reconcile it). Polling goes on: after each
poll, the changes it found for meters no event named within `poll.interval + poll.overlap` are
counted as `alerter_push_missed_total`, the measure of whether push can be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web

from alerter.errors import SourceError, StoreError
from alerter.models import is_uuid
from alerter.poller import CycleReport
from alerter.pushin import PushMetrics, Receiver
from alerter.store.base import META_INITIALIZED
from alerter.store.inbox import Inbox, InboxEvent
from alerter.web import start_server

if TYPE_CHECKING:
    from alerter.config import Config
    from alerter.delivery import DeliveryStats
    from alerter.metrics import Metrics
    from alerter.store.base import Store


class PushingService(Protocol):
    """What the push worker reads of the service and asks of it (the service implements it)."""

    @property
    def config(self) -> Config: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def store(self) -> Store: ...
    @property
    def leader(self) -> bool: ...
    @property
    def workers(self) -> object | None: ...
    async def targeted_cycle(self, meter_ids: Sequence[str], now: datetime | None = None) -> CycleReport | None: ...
    async def deliver_step(self, now: datetime | None = None) -> DeliveryStats: ...


BATCH = 10_000
"""Inbox events taken per step."""
DEBOUNCE = 0.01
"""Seconds a woken worker waits for the events arriving with the first one."""
COALESCE_MAX = 0.25
"""The longest a woken worker waits for more events before it re-reads."""
FLOOD_RATE = 500.0
"""Events a second (over FLOOD_WINDOW) that make a flood, e.g. Leap's retries after an outage:
while it lasts the worker keeps gathering, up to FLOOD_MAX, so each meter a burst names is
re-read once rather than once per step. A stream of single changes stays far below it."""
FLOOD_WINDOW = 0.2
FLOOD_MAX = 5.0
"""The longest a flood is gathered before a step re-reads what it named."""
IDLE = 1.0
MAX_PAUSE = 30.0
"""The longest wait between steps while the store fails them (doubling from IDLE)."""
RETRY_BASE = 1.0
RETRY_MAX = 300.0
GIVE_UP = timedelta(days=1)
KEEP = timedelta(days=2)
"""Processed events are remembered this long: a late duplicate (Leap retries for ~8 h) is dropped."""
PURGE_EVERY = timedelta(hours=1)

log = structlog.get_logger("alerter.push")


class PushWorker:
    """Leap's webhooks for one Service: the endpoint (`receiver`) and the processing loop."""

    def __init__(self, service: PushingService) -> None:
        self.service = service
        self.inbox = Inbox(service.store)
        self.metrics = PushMetrics(service.metrics.registry)
        self.receiver = Receiver(
            lambda: self.service.config.source.webhooks, self.inbox, self.metrics, service.clock, self.wake
        )
        self.port: int | None = None
        """The bound port of the endpoint's own listener (`source.webhooks.listen`), once started."""
        self._wake = asyncio.Event()
        self._arrived = 0
        """Events stored since start (to tell a flood from a stream)."""
        self._stopping = False
        self._purged_at: datetime | None = None
        self._failures = 0
        self._hold_until: datetime | None = None
        """After a failed re-read, no step before this (rows received meanwhile wait and go together)."""

    def wake(self) -> None:
        """The endpoint stored a new event."""
        self._arrived += 1
        self._wake.set()

    # -- running --
    def mount(self, app: web.Application) -> None:
        """Mounts the endpoint on the service's `app` (before it is served), unless it has its
        own `listen`."""
        cfg = self.service.config.source.webhooks
        assert cfg is not None
        if cfg.listen is None:
            self.receiver.mount(app, cfg.path)

    async def start(self) -> _Running:
        """Serves the endpoint on its own `listen` when it has one, and starts the processing
        loop (call it once the store is open)."""
        cfg = self.service.config.source.webhooks
        assert cfg is not None
        runner = None
        if cfg.listen is not None:
            own = web.Application()
            self.receiver.mount(own, cfg.path)
            runner, self.port = await start_server(own, cfg.listen)
        self._stopping = False
        task = asyncio.create_task(self.run(), name="push")
        log.info("push_started", path=cfg.path, listen=cfg.listen and f"{cfg.listen.rpartition(':')[0]}:{self.port}")
        return _Running(self, task, runner)

    async def run(self) -> None:
        pause = IDLE
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE)
            if self._stopping:
                return
            if self._wake.is_set():
                await self._gather()
            try:
                while await self.step() >= BATCH and not self._stopping:
                    pass
                pause = IDLE
            except StoreError as err:  # the store out of reach: one line, and a longer wait each time
                log.warning("push_step_failed", error=str(err), retry_in_s=pause)
                await self._rest(pause)
                pause = min(MAX_PAUSE, pause * 2)
            except Exception:
                log.exception("push_step_crashed")

    async def _rest(self, seconds: float) -> None:
        """Waits `seconds`, or less when stopping (`_Running.stop` wakes it); events arriving
        meanwhile wait in the inbox for the next step."""
        end = time.monotonic() + seconds
        while not self._stopping and (left := end - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
            if not self._stopping:
                self._wake.clear()

    async def _gather(self) -> None:
        """After a wake, waits while events keep arriving (DEBOUNCE apart), at most COALESCE_MAX
        — or FLOOD_MAX while they come as a flood: one event goes on at once, a stream is taken in
        small batches, and a burst in one step that re-reads each meter it names once."""
        started = time.monotonic()
        marks: deque[tuple[float, int]] = deque([(started, self._arrived)])
        while True:
            self._wake.clear()
            await asyncio.sleep(DEBOUNCE)
            now = time.monotonic()
            marks.append((now, self._arrived))
            while len(marks) > 2 and marks[0][0] < now - FLOOD_WINDOW:
                marks.popleft()
            rate = (marks[-1][1] - marks[0][1]) / max(now - marks[0][0], DEBOUNCE)
            elapsed = now - started
            if rate >= FLOOD_RATE and elapsed < FLOOD_MAX:
                continue
            if self._wake.is_set() and elapsed < COALESCE_MAX:
                continue
            return

    # -- one step --
    async def step(self, now: datetime | None = None) -> int:
        """Processes the due inbox events (the leader only); returns how many it took."""
        svc = self.service
        now = now or svc.clock()
        pending, oldest = await self.inbox.backlog()
        self.metrics.inbox_pending.set(pending)
        self.metrics.inbox_lag.set((now - oldest).total_seconds() if oldest else 0)
        if not svc.leader:
            return 0
        await self._purge(now)  # at most every PURGE_EVERY, whether or not events wait
        if not pending or await svc.store.get_meta(META_INITIALIZED) != "1":
            return 0
        if self._hold_until is not None and now < self._hold_until:
            return 0  # Leap failed the last re-read: what arrives meanwhile waits, and goes in one step
        rows = await self._named(await self.inbox.due(now, BATCH), now)
        if not rows:
            return 0
        started = time.perf_counter()
        meters = list(dict.fromkeys(r.meter_id for r in rows))
        try:
            report = await svc.targeted_cycle(meters, now)
        except SourceError as err:
            await self._retry(rows, max(now, svc.clock()), err)  # the backoff counts from the failure
            return len(rows)
        if report is None:
            return 0
        self._failures, self._hold_until = 0, None
        await self.inbox.done([r.event_id for r in rows], svc.clock())
        self.metrics.rereads.inc(len(meters))
        self.metrics.processed.labels("done").inc(len(rows))
        log.info(
            "push_processed",
            cycle_id=report.cycle_id,
            events=len(rows),
            meters=len(meters),
            changes=dict(report.events),
            seconds=round(time.perf_counter() - started, 3),
        )
        if report.events and svc.workers is None:
            await svc.deliver_step()  # with `alerter run`, routing has already woken the receivers' workers
        return len(rows)

    async def _named(self, rows: list[InboxEvent], now: datetime) -> list[InboxEvent]:
        """The rows naming a meter by UUID; any other (stored by an older version, whose check let
        a trailing newline through) is given up at once: Leap refuses to search for it (400), and
        re-read with the others it would fail them all until it was a day old."""
        unnamed = [r for r in rows if not is_uuid(r.meter_id)]
        if not unnamed:
            return rows
        await self.inbox.done([r.event_id for r in unnamed], now, error="given up: the meter id is not a UUID")
        self.metrics.processed.labels("given_up").inc(len(unnamed))
        log.warning(
            "push_meter_id_invalid", events=len(unnamed), meter_ids=sorted({repr(r.meter_id) for r in unnamed})[:5]
        )
        return [r for r in rows if is_uuid(r.meter_id)]

    async def _retry(self, rows: list[InboxEvent], now: datetime, err: SourceError) -> None:
        expired = [r.event_id for r in rows if now - r.received_at >= GIVE_UP]
        if expired:
            await self.inbox.done(expired, now, error=f"given up: {err}")
            self.metrics.processed.labels("given_up").inc(len(expired))
        again = [r.event_id for r in rows if now - r.received_at < GIVE_UP]
        delay = min(RETRY_BASE * 2 ** max(self._failures, *(r.attempts for r in rows)), RETRY_MAX)
        self._failures += 1
        self._hold_until = now + timedelta(seconds=delay)
        await self.inbox.retry(again, self._hold_until, str(err))
        self.metrics.processed.labels("retry").inc(len(again))
        log.warning("push_reread_failed", events=len(rows), retry_in=delay, error=str(err))

    async def _purge(self, now: datetime) -> None:
        if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            removed = await self.inbox.purge(now - KEEP)
            if removed:
                log.info("push_inbox_purged", events=removed)

    # -- reconciliation --
    async def after_poll(self, report: CycleReport, now: datetime) -> int:
        """Counts the changes a poll found for meters that no webhook event named recently."""
        if not report.changed or report.kind in ("initial", "push"):
            return 0
        poll = self.service.config.poll
        try:
            announced = await self.inbox.announced(list(report.changed), now - poll.interval - poll.overlap)
        except Exception as err:  # a measure: never fails the cycle it measures
            log.warning("push_missed_unknown", error=str(err))
            return 0
        missed = {m: n for m, n in report.changed.items() if m not in announced}
        count = sum(missed.values())
        if count:
            self.metrics.missed.inc(count)
            log.info("push_missed", changes=count, meters=len(missed), sample=sorted(missed)[:5])
        return count


class _Running:
    def __init__(self, worker: PushWorker, task: asyncio.Task[None], runner: web.AppRunner | None) -> None:
        self.worker, self.task, self.runner = worker, task, runner

    async def stop(self, timeout: float = 20.0) -> None:
        """Finishes the step in flight, stops the loop and its own listener."""
        self.worker._stopping = True
        self.worker.wake()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.runner is not None:
            await self.runner.cleanup()
