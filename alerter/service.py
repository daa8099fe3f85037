"""The composition root: builds store, source, router, notifiers and delivery; runs cycles.

`Service.run_cycle(now)` (poll, then reminders and routing: the steps in `alerter.cycle`)
backs the scheduler, `alerter once` and the scenario tests. `alerter run` schedules one
APScheduler job per concern (`max_instances=1, coalesce=True`) and serves /healthz, /readyz
and /metrics.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TextIO

import structlog

from alerter import cycle
from alerter.config import Config
from alerter.delivery import INSTANCE_TIMEOUT, Deliverer, DeliveryStats
from alerter.errors import AlerterError, FencedError, SourceError, StoreError
from alerter.metrics import Metrics, deadline_bucket
from alerter.models import Obligation
from alerter.notifiers import build_notifier
from alerter.notifiers.base import Notifier, scrub
from alerter.pacing import Pacers
from alerter.poller import CycleReport, Poller
from alerter.pushwork import PushWorker
from alerter.reloading import ReloadResult, file_digests, needs_restart, reread, rule_files
from alerter.routes import Router
from alerter.rulefile import RuleSet
from alerter.selfalerts import SelfAlerts
from alerter.source import LeapClient
from alerter.store import open_store
from alerter.store.base import META_LAST_CYCLE
from alerter.web import Health
from alerter.workers import DeliveryWorkers

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_notifiers(
    ruleset: RuleSet, stream: TextIO | None = None, pacers: Pacers | None = None
) -> dict[str, Notifier]:
    return {
        name: build_notifier(
            name,
            slack=r.slack,
            email=r.email,
            webhook=r.webhook,
            console=r.console,
            stream=stream,
            pacers=pacers,
        )
        for name, r in ruleset.receivers.items()
    }


class Service:
    """One instance of the service. Only the leader polls and routes; every instance delivers."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = utcnow,
        owner: str | None = None,
        stream: TextIO | None = None,
        instance_timeout: float = INSTANCE_TIMEOUT,
    ) -> None:
        self.config = config
        self.started = config
        """The config the process started with: what a reload does not apply stays as it says
        (`reloading.needs_restart`)."""
        self.restart: list[str] = []
        """The settings the files in force change that only a restart applies (the last reload that applied)."""
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stream = stream
        self.log = structlog.get_logger("alerter.service").bind(instance=self.owner)
        self.metrics = Metrics()
        self.health = Health(interval=config.poll.interval)
        self.store = open_store(config.state.url)
        self.client = LeapClient(config.source, clock=clock)
        self.poller = Poller(self.store, self.client, config.poll, self._first_look)
        self.metrics.watch_source(lambda: self.client.stats)
        self.ruleset = config.ruleset
        self.router = Router(self.ruleset)
        self.health.rules_loaded = not self.router.routes_nothing
        self.pacers = Pacers(time.monotonic, asyncio.sleep)  # Slack's per-channel turns, kept across reloads
        self.notifiers = build_notifiers(self.ruleset, stream, self.pacers)
        self.deliverer = Deliverer(self.store, self.notifiers, self.owner, instance_timeout=instance_timeout)
        self.workers: DeliveryWorkers | None = None
        self.alerts = SelfAlerts(self, config.operations_receiver)
        self.push = PushWorker(self) if config.source.webhooks is not None else None
        self.leader = False
        self._step = asyncio.Lock()
        self._lease = asyncio.Lock()
        """The leadership session runs one query at a time: `elect` and the lease check between
        polls take this, not `_step`, which a long poll holds."""
        self.rules_digests = file_digests(rule_files(config))
        """The rules files as the service last read them (the watcher reloads when they differ)."""
        self.steps = cycle.Steps(self.store, self.metrics, self.log, self.wake_delivery)
        """What reminders and routing keep between runs (alerter.cycle); the rules are passed per run."""

    # -- lifecycle --
    async def start(self) -> None:
        await self.store.open()
        released = await self.store.start_instance(self.owner, self.clock())
        if released:
            self.log.info("delivery_leases_released", count=released, reason="left by a process that died")
        await self.elect()

    async def close(self) -> None:
        await self.stop_delivery(0)
        if self.leader:
            await self.store.release_leadership()
        try:
            await self.store.stop_instance(self.owner)
        except Exception as err:  # unreachable store: the leases lapse with the heartbeat instead
            self.log.warning("delivery_leases_not_released", error=str(err))
        await self.client.close()
        for notifier in self.notifiers.values():
            await notifier.close()
        await self.store.close()

    async def elect(self) -> bool:
        """Take (or confirm) the polling lease; a follower only delivers."""
        async with self._lease:
            await self._confirm_lease()
            if not self.leader:
                token = await self.store.try_acquire_leadership(self.owner)
                if token is not None:
                    self.leader = True
                    self.log.info("leadership_acquired", fencing_token=token)
        self.health.leader = self.leader
        self.metrics.leader.set(1 if self.leader else 0)
        return self.leader

    def _depose(self, reason: str) -> None:
        if self.leader:
            self.log.warning("leadership_lost", reason=reason)
        self.leader = False  # the fence stays: a write still in flight raises FencedError
        self.health.leader = False
        self.metrics.leader.set(0)

    def reload(self) -> ReloadResult:
        """Reload config and rules from the same files, all or nothing (see alerter.reloading):
        `rejected` or `unstable` keep the old rules. Notifications already queued keep their
        receivers; one for a receiver the new rules no longer define becomes a dead letter."""
        got = reread(self.config)
        if got.result != "unstable":
            self.rules_digests = got.digests
        if got.config is None:
            return self._reloaded(got.result, got.problems)
        fresh = got.config
        old = self.notifiers
        try:  # built before anything is swapped: a receiver that cannot be built keeps the old rules
            notifiers = build_notifiers(fresh.ruleset, self.stream, self.pacers)
        except (AlerterError, ValueError) as err:
            return self._reloaded("rejected", [f"a receiver cannot be built: {scrub(str(err))}"])
        self.config = fresh
        self.ruleset = fresh.ruleset
        self.router = Router(self.ruleset)
        self.health.rules_loaded = True  # the loader refuses rules that route nothing
        self.notifiers = notifiers
        self.deliverer.notifiers = self.notifiers
        self.alerts.receiver = fresh.operations_receiver
        for notifier in old.values():
            asyncio.get_running_loop().create_task(notifier.close())
        removed = sorted(set(old) - set(self.notifiers))
        self.log.info(
            "rules_reloaded", rules=len(self.ruleset.rules), receivers=len(self.notifiers), removed_receivers=removed
        )
        self.restart = needs_restart(self.started, fresh)
        if self.restart:
            self.log.warning("reload_needs_restart", settings=self.restart)
        return self._reloaded("ok", [])

    def _reloaded(self, result: ReloadResult, problems: list[str]) -> ReloadResult:
        now = self.clock()
        self.metrics.rules_reloads.labels(result).inc()
        self.health.last_reload = {
            "result": result,
            "at": now.isoformat(),
            "problems": problems,
            "needs_restart": self.restart,
        }
        if result == "rejected":
            self.log.error("rules_reload_rejected", problems=problems)
        elif result == "unstable":
            self.log.warning("rules_reload_deferred", reason=problems[0])
        return result

    # -- the steps --
    async def run_cycle(
        self, now: datetime | None = None, *, flush_all: bool = False, force_reconcile: bool = False
    ) -> CycleReport | None:
        """Poll, then reminders and routing. Returns None when this instance is not the leader."""
        async with self._step:
            try:
                return await self._cycle(now, flush_all, force_reconcile)
            except FencedError:
                raise
            except StoreError as err:  # the election's too (the server out of reach, most often)
                self.health.last_error = str(err) if str(err).startswith("state store") else f"state store: {err}"
                self.metrics.cycles.labels("unknown", "store_error").inc()
                raise

    async def _cycle(self, now: datetime | None, flush_all: bool, force_reconcile: bool) -> CycleReport | None:
        if not await self.elect():
            await self._follow()
            return None
        now = now or self.clock()
        try:
            await cycle.check_remind_rules(self.steps, self.rules_digests, now)  # before the poll's writes
            report = await self.poller.run_cycle(now, force_reconcile=force_reconcile)
        except SourceError as err:
            self._cycle_failed(now, err)
            raise
        except FencedError:
            self._depose("fenced")
            return None
        self._cycle_succeeded(now, report)
        if self.push is not None:
            await self.push.after_poll(report, now)
        await self._remind(now)
        await self._route(now, flush_all=flush_all)
        return report

    async def targeted_cycle(self, meter_ids: Sequence[str], now: datetime | None = None) -> CycleReport | None:
        """Re-read these meters (a push named them), then route at once. None when not the leader."""
        async with self._step:
            if not self.leader:
                return None
            now = now or self.clock()
            try:
                report = await self.poller.run_meters(meter_ids, now)
                for kind, count in report.events.items():
                    self.metrics.events.labels(kind).inc(count)
                await self._route(now)
            except FencedError:
                self._depose("fenced")
                return None
            return report

    async def route_step(self, now: datetime | None = None) -> None:
        """Reminders, routing and due group flushes, without polling (runs every second)."""
        async with self._step:
            if not self.leader:
                return
            try:
                now = now or self.clock()
                await self._route(now)
            except FencedError:
                self._depose("fenced")

    async def remind_step(self, now: datetime | None = None) -> None:
        async with self._step:
            if not self.leader:
                return
            try:
                await self._remind(now or self.clock())
            except FencedError:
                self._depose("fenced")

    async def purge_step(self, now: datetime | None = None) -> dict[str, int]:
        """Forget what `state.retention` allows (the leader only)."""
        keep = self.config.state.retention
        if not self.leader or not keep:
            return {}
        async with self._step:
            try:
                removed = await self.store.purge((now or self.clock()) - keep)
            except FencedError:
                self._depose("fenced")
                return {}
        if any(removed.values()):
            self.log.info("retention_purged", **removed)
        return removed

    def start_delivery(self) -> None:
        """One worker per receiver, in the background (`alerter run`); polling only wakes them."""
        if self.workers is None:
            self.workers = DeliveryWorkers(
                self.deliverer, lambda: self.clock(), self._count_deliveries, sweeps=lambda: self.leader
            )
            self.workers.start()

    async def stop_delivery(self, grace: float) -> None:
        workers, self.workers = self.workers, None
        if workers is not None:
            await workers.stop(grace)

    def wake_delivery(self, receivers: Iterable[str] | None = None) -> None:
        if self.workers is not None:
            self.workers.wake(receivers)

    async def deliver_step(self, now: datetime | None = None) -> DeliveryStats:
        """One pass over every receiver's due rows (the workers do this continuously)."""
        stats = await self.deliverer.run_once(now or self.clock())
        self._count_deliveries(stats)
        return stats

    async def drain(self, deadline: float) -> DeliveryStats:
        stats = await self.deliverer.drain(deadline, lambda: self.clock())
        self._count_deliveries(stats)
        return stats

    # -- internals --
    def _cycle_succeeded(self, now: datetime, report: CycleReport) -> None:
        done = max(now, self.clock())  # `now` is when it began: a long sweep is not old once it ends
        self.health.last_success_at = done
        self.health.last_error = None
        self.health.auth_refused = False
        m = self.metrics
        m.cycles.labels(report.kind, "ok").inc()
        m.cycle_duration.observe(report.duration)
        m.pages.inc(report.pages)
        m.records.inc(report.records)
        m.invalid_records.inc(report.invalid)
        m.failed_meters.inc(report.failed)
        m.last_success.set(done.timestamp())
        for kind, count in report.events.items():
            m.events.labels(kind).inc(count)
        self.alerts.cycle_ok(now, report)

    def _cycle_failed(self, now: datetime, err: SourceError) -> None:
        self.health.last_error = str(err)
        self.health.auth_refused = err.auth
        self.metrics.cycles.labels("unknown", "auth_refused" if err.auth else "source_error").inc()
        self.log.error("cycle_failed", error=str(err), auth=err.auth)
        self.alerts.cycle_failed(now, err)

    async def follow_step(self) -> None:
        """Between polls (every min(15 s, interval/4)): a follower looks at the leader's last
        cycle (read once a poll interval only, it could be two intervals old and more just before
        the next read); a leader confirms its lease, so that one lost is given up (`alerter_leader`,
        `/readyz`) at once rather than at its next poll, while another replica already leads."""
        if not self.leader:
            await self._follow()
            return
        async with self._lease:  # not the step lock: a poll holds that for as long as it runs
            await self._confirm_lease()

    async def _confirm_lease(self) -> None:
        """A leader whose lease is lost gives it up (under `_lease`)."""
        if self.leader and not await self.store.still_leader():
            self._depose("lease lost")

    async def _follow(self) -> None:
        """A follower is ready when the leader's last committed cycle is recent."""
        last = await self.store.get_meta(META_LAST_CYCLE)
        if last:
            self.health.last_success_at = datetime.fromisoformat(last.replace("Z", "+00:00"))

    def _first_look(self, ob: Obligation) -> datetime | None:
        return cycle.first_look(self.router, ob)

    async def _remind(self, now: datetime) -> int:
        """The reminders step under the rules in force; returns how many reminders were new."""
        return await cycle.remind(self.steps, self.router, self.rules_digests, now)

    async def _route(self, now: datetime, *, flush_all: bool = False) -> None:
        """Routing and due group flushes under the rules in force."""
        initial_sync = self.config.poll.initial_sync
        await cycle.route(self.steps, self.router, self.ruleset, initial_sync, now, flush_all=flush_all)

    def _count_deliveries(self, stats: DeliveryStats) -> None:
        m = self.metrics
        for receiver, count in stats.sent.items():
            m.deliveries.labels(receiver, "sent").inc(count)
        for receiver, count in stats.failed.items():
            m.deliveries.labels(receiver, "failed").inc(count)
            m.retries.labels(receiver).inc(count)
        for receiver, count in stats.dead.items():
            m.deliveries.labels(receiver, "dead").inc(count)
        if stats.unreadable:
            m.events_unreadable.labels("delivery").inc(stats.unreadable)
        for receiver in {*stats.sent, *stats.failed, *stats.dead}:
            if (health := self.deliverer.health.get(receiver)) is not None:
                m.receiver_health(receiver, health.healthy, health.consecutive_failures)

    async def refresh_gauges(self) -> None:
        """Open obligations by action type and deadline bucket, ledger backlog, dead letters."""
        now = self.clock()
        m = self.metrics
        counts: dict[tuple[str, str], int] = {}
        for action_type, deadline, count in await self.store.count_open():
            left = (deadline - now).total_seconds() if deadline else None
            key = (action_type, deadline_bucket(left))
            counts[key] = counts.get(key, 0) + count
        m.open_obligations.clear()  # and set again with no await between: a scrape sees all or the last
        for (action_type, bucket), count in counts.items():
            m.open_obligations.labels(action_type, bucket).set(count)
        by_status = await self.store.delivery_counts()
        dead = sum(c for (_, status), c in by_status.items() if status == "dead")
        m.dead_letters.set(dead)
        m.undelivered.set(sum(c for (_, status), c in by_status.items() if status == "pending"))
        health = {name: (h.healthy, h.consecutive_failures) for name, h in self.deliverer.health.items()}
        pending = {receiver: c for (receiver, status), c in by_status.items() if status == "pending"}
        m.set_receivers(now, self.notifiers, health, pending, await self.store.oldest_undelivered())
        self.alerts.receivers_failing(now, self.deliverer.failing(self.notifiers))
        await self.alerts.ledger_state(now, dead, await self.store.disabled_receivers())
