"""`alerter run`: the scheduler, the ops HTTP server and signal handling around a Service.

Jobs (APScheduler AsyncIOScheduler, `max_instances=1, coalesce=True`): poll every
`poll.interval`; routing and group flushes every second; reminders every minute; gauges
and self-alerts every 15 s; a rules-file watch every 5 s. Delivery is not a job: each
receiver has its own worker task (alerter/workers.py), which routing wakes when it writes
a notification, so no receiver's pacing or outage delays a poll or another receiver.
SIGTERM/SIGINT finish the step and the sends in flight and exit 0 within a grace period;
SIGHUP (or a changed rules file, once it reads the same on two watch ticks) reloads rules, all
or nothing: the old ones stay if the new files are invalid or change while being read.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from alerter import earlystop, logs
from alerter.config import Config, load_config
from alerter.errors import AlerterError, SourceError
from alerter.reloading import file_digests, rule_files
from alerter.service import Service
from alerter.tuning import tune_process
from alerter.web import make_app, start_server

GRACE_SECONDS = 20.0
CLOSE_SECONDS = 5.0
"""After the grace, what the stop's last steps (listener, state store) have together: a stop
takes at most GRACE_SECONDS + CLOSE_SECONDS (the deploy files allow 30 s)."""


def run_service(config_path: str, *, verbose: bool = False) -> int:
    config = load_config(config_path)
    logs.configure(config.log.format, "debug" if verbose else config.log.level)
    tune_process()
    return asyncio.run(Runtime(config).run())


class Runtime:
    def __init__(self, config: Config, service: Service | None = None) -> None:
        self.service = service or Service(config)
        self.log = structlog.get_logger("alerter.runtime")
        self.stop = asyncio.Event()
        self.port: int | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._settling: dict[Path, str | None] | None = None
        """The rules files as the last watch tick saw them, when they differed from what was read."""

    def _job(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
        async def wrapped() -> None:
            if self.stop.is_set():
                return
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                await fn()
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
                # still running past the stop's grace: cancelled by `_stop_steps`, said once here
                self.log.warning("job_abandoned_at_shutdown", job=name, grace_s=GRACE_SECONDS)
            except SourceError:
                pass  # counted, logged and reported by the service; the next poll retries
            except AlerterError as err:
                self.log.error("job_failed", job=name, error=str(err))
            except Exception:
                self.log.exception("job_crashed", job=name)
            finally:
                if task is not None:
                    self._inflight.discard(task)

        return wrapped

    async def _poll(self) -> None:
        try:
            await self.service.run_cycle()  # what it routes wakes the receivers' workers: it goes out now
        finally:
            await self.service.alerts.flush()

    async def _gauges(self) -> None:
        await self.service.refresh_gauges()

    async def _watch_rules(self) -> None:
        """Reload once changed files read the same on two ticks: a file being written is left alone."""
        seen = file_digests(rule_files(self.service.config))
        if seen == self.service.rules_digests:
            self._settling = None
        elif seen != self._settling:
            self._settling = seen
        else:
            self._settling = None
            self.service.reload()

    async def run(self) -> int:
        svc = self.service
        app = make_app(svc.health, svc.metrics, svc.clock, console=svc)
        if svc.push is not None:
            svc.push.mount(app)  # Leap's webhooks in
        runner, self.port = await start_server(app, svc.config.http.listen)  # a busy port fails before the store opens
        # before the store opens (migrations can take seconds): a SIGTERM meanwhile stops the
        # service once it has started, and a SIGHUP reloads it then
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        if earlystop.asked():  # a SIGTERM while the process started
            self.stop.set()
        reload_asked = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
        try:
            if not await self._started():
                self.log.info("stopped_while_starting")
                return 0
            push = await svc.push.start() if svc.push is not None else None
            svc.health.started = True  # /startedz: the store is open and migrated
        except BaseException:
            await runner.cleanup()
            raise
        loop.add_signal_handler(signal.SIGHUP, svc.reload)
        if reload_asked.is_set():
            svc.reload()
        self.log.info(
            "service_started",
            listen=f"{svc.config.http.listen.rpartition(':')[0]}:{self.port}",
            leader=svc.leader,
            rules=len(svc.ruleset.rules),
            receivers=sorted(svc.notifiers),
        )

        scheduler = AsyncIOScheduler(timezone="UTC")
        opts: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        interval = svc.config.poll.interval
        jobs: list[tuple[str, Callable[[], Awaitable[Any]], timedelta]] = [
            ("poll", self._poll, interval),
            ("route", svc.route_step, timedelta(seconds=1)),
            ("remind", svc.remind_step, timedelta(minutes=1)),
            ("gauges", self._gauges, timedelta(seconds=15)),
            ("follow", svc.follow_step, min(timedelta(seconds=15), interval / 4)),
            ("rules_watch", self._watch_rules, timedelta(seconds=5)),
            ("retention", svc.purge_step, timedelta(hours=6)),
        ]
        for name, fn, every in jobs:
            scheduler.add_job(
                self._job(name, fn),
                "interval",
                seconds=every.total_seconds(),
                id=name,
                next_run_time=svc.clock(),
                **opts,
            )
        scheduler.start()
        svc.start_delivery()
        try:
            await self.stop.wait()
            self.log.info("shutdown_started", inflight=len(self._inflight))
        finally:
            end = loop.time() + GRACE_SECONDS + CLOSE_SECONDS
            scheduler.pause()  # no step starts; those in flight finish (shutdown would cancel them)
            # the steps in flight, the sends in flight and the push worker's step, all at once
            stopping = [asyncio.ensure_future(svc.stop_delivery(GRACE_SECONDS))]
            if push is not None:
                stopping.append(asyncio.ensure_future(push.stop(GRACE_SECONDS)))
            await self._stop_steps()
            scheduler.shutdown(wait=False)
            for what, step in zip(("delivery", "push"), stopping, strict=False):
                await self._bounded(what, step, end)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._bounded("http", runner.cleanup(), end)
            if await self._bounded("state", svc.close(), end):
                self.log.info("shutdown_complete")
            else:
                svc.store.abort()  # what still waits on the store fails now, and the process ends
                self.log.warning("shutdown_forced", after_s=GRACE_SECONDS + CLOSE_SECONDS)
        return 0

    async def _started(self) -> bool:
        """Starts the service (opens and migrates the store). A stop asked meanwhile lets it
        finish within the grace (a migration ends whole), then the service stops as it would
        once started; a store that has not opened by then (a server that accepts connections
        but answers nothing) is given up rather than waited for for its connect timeout."""
        starting = asyncio.ensure_future(self.service.start())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not starting.done():
            await asyncio.wait({starting}, timeout=GRACE_SECONDS)
        if starting.done():
            starting.result()  # its failure raised here
            return True
        starting.cancel()
        done, _ = await asyncio.wait({starting}, timeout=CLOSE_SECONDS)
        if not done:
            self.service.store.abort()
        return False

    async def _stop_steps(self) -> None:
        """The steps in flight finish within the grace; those still running are cancelled (each
        logs `job_abandoned_at_shutdown`)."""
        if not self._inflight:
            return
        _, late = await asyncio.wait(set(self._inflight), timeout=GRACE_SECONDS)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=CLOSE_SECONDS)

    async def _bounded(self, what: str, step: Awaitable[Any], end: float) -> bool:
        """Awaits a shutdown step until `end` (the loop's time); one still running then is
        cancelled and said (`shutdown_step_abandoned`). True when it ended in time."""
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=max(0.1, end - asyncio.get_running_loop().time()))
        if not done:
            task.cancel()
            self.log.warning("shutdown_step_abandoned", step=what)
            return False
        if not task.cancelled() and task.exception() is not None:
            self.log.error("shutdown_step_failed", step=what, error=str(task.exception()))
        return True
