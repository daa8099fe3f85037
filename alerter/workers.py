"""Delivery in `alerter run`: one worker task per receiver, so that no receiver's pacing or
outage delays polling, routing or any other receiver.

How this works: each worker loops on its own receiver: claim what is due (a few rounds of
its in-flight bound), send it, record the outcomes; claim again at once when the batch was
full, otherwise wait until woken (routing just wrote a notification for it) or `idle`
seconds (retries coming due, rows written by another replica). Polling never waits for a
worker; it only wakes them. A supervisor task starts a worker for every receiver the rules
name and stops the workers of receivers a reload removed, dead-letters the rows of
receivers no longer configured, and writes this instance's heartbeat every
`instance_timeout / 3` seconds (other replicas take over the rows of an instance whose
heartbeat lapsed). `stop(grace)` lets the workers finish the sends in flight, then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime

import structlog

from alerter.delivery import Deliverer, DeliveryStats

log = structlog.get_logger("alerter.workers")

ORPHAN_SWEEP_SECONDS = 30.0
"""How often rows of receivers no longer configured are dead-lettered."""
MAX_PAUSE = 30.0
"""The longest a worker waits after its store failed, before trying again."""


class _Worker:
    def __init__(self, receiver: str) -> None:
        self.receiver = receiver
        self.wake = asyncio.Event()
        self.retired = False
        self.task: asyncio.Task[None] | None = None


class DeliveryWorkers:
    def __init__(
        self,
        deliverer: Deliverer,
        clock: Callable[[], datetime],
        report: Callable[[DeliveryStats], None],
        *,
        idle: float = 1.0,
        sweeps: Callable[[], bool] = lambda: True,
    ) -> None:
        self.deliverer = deliverer
        self.clock = clock
        self.report = report
        self.idle = idle
        self.sweeps = sweeps
        """Whether this instance dead-letters the rows of receivers its rules do not name: the
        leader alone, whose rules are those routing (a replica that has not reloaded yet would
        dead-letter a receiver the new rules just added)."""
        self._workers: dict[str, _Worker] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._tick = asyncio.Event()

    @property
    def receivers(self) -> list[str]:
        return sorted(self._workers)

    def start(self) -> None:
        if self._supervisor is None:
            self._reconcile()
            self._supervisor = asyncio.ensure_future(self._supervise())

    def wake(self, receivers: Iterable[str] | None = None) -> None:
        """New rows are due: the named receivers' workers (all when None) claim at once."""
        names = list(self._workers) if receivers is None else receivers
        for name in names:
            worker = self._workers.get(name)
            if worker is not None:
                worker.wake.set()
            else:
                self._tick.set()  # a receiver a reload just added: the supervisor starts its worker

    async def stop(self, grace: float) -> None:
        """Finish the sends in flight (at most `grace` seconds), then cancel what is left."""
        self._stopping.set()
        tasks = [t for t in (self._supervisor, *self._tasks()) if t is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if late:
            log.warning("delivery_stopped_with_sends_in_flight", workers=len(late))

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [w.task for w in self._workers.values() if w.task is not None] + list(self._retiring)

    def _reconcile(self) -> None:
        wanted = set(self.deliverer.notifiers)
        for name in wanted - set(self._workers):
            worker = _Worker(name)
            worker.task = asyncio.ensure_future(self._work(worker))
            self._workers[name] = worker
        for name in set(self._workers) - wanted:
            worker = self._workers.pop(name)
            worker.retired = True
            worker.wake.set()
            if worker.task is not None:
                self._retiring.add(worker.task)
                worker.task.add_done_callback(self._retiring.discard)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        beat_every = self.deliverer.instance_timeout / 3
        next_beat = loop.time() + beat_every
        next_sweep = loop.time()
        while not self._stopping.is_set():
            self._reconcile()
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + beat_every
                    await self.deliverer.heartbeat(self.clock())
                if loop.time() >= next_sweep and self.sweeps():
                    next_sweep = loop.time() + ORPHAN_SWEEP_SECONDS
                    self.report(await self.deliverer.run_orphans(self.clock()))
            except Exception as err:  # the store is down: workers report it too; try again next turn
                log.warning("delivery_supervisor_failed", error=str(err))
            self._tick.clear()
            await self._wait(self._tick, min(self.idle, beat_every))

    async def _work(self, worker: _Worker) -> None:
        pause = self.idle
        while not self._stopping.is_set() and not worker.retired:
            worker.wake.clear()
            try:
                stats = await self.deliverer.run_once(self.clock(), worker.receiver)
            except Exception as err:  # e.g. the store is unreachable: the rows stay leased or due
                log.error("delivery_pass_failed", receiver=worker.receiver, error=str(err))
                await self._wait(worker.wake, pause)
                pause = min(MAX_PAUSE, pause * 2)
                continue
            pause = self.idle
            self.report(stats)
            if stats.claimed >= self.deliverer.claim_limit(worker.receiver):
                await asyncio.sleep(0)  # more are due: claim again, letting others run first
                continue
            await self._wait(worker.wake, self.idle)

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until `event`, stop, or `timeout` seconds."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((stopping, woken), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (stopping, woken):
                f.cancel()
