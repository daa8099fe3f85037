"""The composition root: builds store, source, router, notifiers and delivery; runs cycles.

`Service.run_cycle(now)` (poll, reminders, routing) backs the scheduler, `alerter once`
and the scenario tests. `alerter run` schedules one APScheduler job per concern
(`max_instances=1, coalesce=True`) and serves /healthz, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TextIO

import orjson
import structlog

from alerter.config import Config
from alerter.delivery import INSTANCE_TIMEOUT, Deliverer, DeliveryStats
from alerter.digests import DigestBuilder
from alerter.errors import FencedError, SourceError
from alerter.grouping import Limits, SilenceCheck, active_silences, flush, idle_before, plan, windows
from alerter.metrics import Metrics, deadline_bucket
from alerter.models import Event, GroupState, Notification, Obligation, ObligationKey, RoutingWrite, Silence
from alerter.notifiers import build_notifier
from alerter.notifiers.base import Notifier
from alerter.pacing import Pacers
from alerter.poller import CycleReport, Poller
from alerter.pushwork import PushWorker
from alerter.reloading import ReloadResult, file_digests, reread, rule_files
from alerter.reminders import next_reminder_at, reminders_due
from alerter.routes import Router
from alerter.rulefile import RuleSet
from alerter.selfalerts import SelfAlerts
from alerter.source import LeapClient
from alerter.store import open_store
from alerter.store.base import META_LAST_CYCLE, META_REMIND_RULES
from alerter.web import Health
from alerter.workers import DeliveryWorkers

ROUTE_BATCH = 4000
"""Pending events routed per step."""
DIGEST_BATCH = 2500
"""Events read per batch of an initial-sync digest's two passes (its memory is one batch and one
part per receiver)."""
FLUSH_EVENTS = 5000
"""Events of a due group loaded and flushed per transaction."""
REMIND_BATCH = 1000
REMINDED_CACHE = 500_000

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
        self._silences = SilenceCheck()
        self.rules_digests = file_digests(rule_files(config))
        """The rules files as the service last read them (the watcher reloads when they differ)."""
        self._remind_rules: str | None = None
        self._reminded: set[str] = set()
        """Reminder event ids known to be in the store, so each is serialized and offered once."""

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
        if self.leader and not await self.store.still_leader():
            self._depose("lease lost")
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
        self.config = fresh
        self.ruleset = fresh.ruleset
        self.router = Router(self.ruleset)
        self.health.rules_loaded = True  # the loader refuses rules that route nothing
        self.notifiers = build_notifiers(self.ruleset, self.stream, self.pacers)
        self.deliverer.notifiers = self.notifiers
        self.alerts.receiver = fresh.operations_receiver
        for notifier in old.values():
            asyncio.get_running_loop().create_task(notifier.close())
        removed = sorted(set(old) - set(self.notifiers))
        self.log.info(
            "rules_reloaded", rules=len(self.ruleset.rules), receivers=len(self.notifiers), removed_receivers=removed
        )
        return self._reloaded("ok", [])

    def _reloaded(self, result: ReloadResult, problems: list[str]) -> ReloadResult:
        now = self.clock()
        self.metrics.rules_reloads.labels(result).inc()
        self.health.last_reload = {"result": result, "at": now.isoformat(), "problems": problems}
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
            if not await self.elect():
                await self._follow()
                return None
            now = now or self.clock()
            try:
                await self._check_remind_rules(now)  # first: what the poll writes is under these rules
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
            self.workers = DeliveryWorkers(self.deliverer, lambda: self.clock(), self._count_deliveries)
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
        self.health.last_success_at = now
        self.health.last_error = None
        self.health.auth_refused = False
        m = self.metrics
        m.cycles.labels(report.kind, "ok").inc()
        m.cycle_duration.observe(report.duration)
        m.pages.inc(report.pages)
        m.records.inc(report.records)
        m.invalid_records.inc(report.invalid)
        m.failed_meters.inc(report.failed)
        m.last_success.set(now.timestamp())
        for kind, count in report.events.items():
            m.events.labels(kind).inc(count)
        self.alerts.cycle_ok(now, report)

    def _cycle_failed(self, now: datetime, err: SourceError) -> None:
        self.health.last_error = str(err)
        self.health.auth_refused = err.auth
        self.metrics.cycles.labels("unknown", "auth_refused" if err.auth else "source_error").inc()
        self.log.error("cycle_failed", error=str(err), auth=err.auth)
        self.alerts.cycle_failed(now, err)

    async def _follow(self) -> None:
        """A follower is ready when the leader's last committed cycle is recent."""
        last = await self.store.get_meta(META_LAST_CYCLE)
        if last:
            self.health.last_success_at = datetime.fromisoformat(last.replace("Z", "+00:00"))

    def _first_look(self, ob: Obligation) -> datetime | None:
        """An open obligation being written: one that opens now is due no reminder yet
        (`reminders_due` at its opening is empty), so its first look is its next threshold;
        any other (changed, or rewritten with new meter attributes) is looked at next step."""
        if ob.opened_at != ob.last_seen:
            return ob.last_seen
        policy = self.router.remind_policy(ob, ob.opened_at)
        return next_reminder_at(ob, self.router.look_policy(policy), ob.opened_at)

    async def _check_remind_rules(self, now: datetime) -> None:
        """New rules (or rules this state has not seen): every open obligation is looked at again."""
        rules = hashlib.sha256(orjson.dumps(sorted(f"{k}\x1f{v}" for k, v in self.rules_digests.items()))).hexdigest()
        if rules != self._remind_rules and await self.store.get_meta(META_REMIND_RULES) != rules:
            await self.store.reset_remind_at(now)
            await self.store.set_meta({META_REMIND_RULES: rules})
        self._remind_rules = rules

    async def _remind(self, now: datetime) -> int:
        """Reminders of the open obligations due a look (`remind_at`, an indexed column): each
        is looked at, its due reminders committed, and its next look set (`next_reminder_at`);
        the others are not read."""
        await self._check_remind_rules(now)
        new = 0
        previous: set[ObligationKey] = set()
        while True:
            batch = await self.store.reminder_candidates(now, REMIND_BATCH)
            self._unreadable()
            keys = {ob.key for ob in batch}
            if not batch or keys <= previous:  # nothing left due (or nothing moved: never loop)
                return new
            previous = keys
            events: list[Event] = []
            looks: list[tuple[ObligationKey, int, datetime | None]] = []
            for ob in batch:
                policy = self.router.remind_policy(ob, now)
                if not policy.empty:
                    events.extend(e for e in reminders_due(ob, policy, now) if e.id not in self._reminded)
                looks.append((ob.key, ob.version, next_reminder_at(ob, self.router.look_policy(policy), now)))
            if events:
                added = await self.store.commit_page((), events)
                # committed (or already there): no need to offer them again on the next run
                if len(self._reminded) > REMINDED_CACHE:
                    self._reminded.clear()  # bounded: at worst one round is offered again
                self._reminded.update(e.id for e in events)
                if added:
                    self.metrics.events.labels("reminder").inc(added)
                    new += added
            await self.store.set_remind_at(looks)

    async def _digest(self, now: datetime) -> None:
        """An initial sync's backlog as one digest per receiver, however large: read twice in
        batches (alerter.digests), written part by part, and consumed at the end. Killed
        midway, the next run builds the same parts again (their ids already stored are kept)."""
        await self.store.finish_initial()  # a digest written before a stop: its consumption goes on
        batch = await self.store.initial_events(0, DIGEST_BATCH)
        if not batch:
            return
        limits = Limits.of(self.ruleset)
        silences = active_silences(self._applicable(await self.store.list_silences(now)), now)
        builder = DigestBuilder(self.router, now, dict(limits.max_events), dict(limits.listed), silences)
        upto = 0
        while batch:
            builder.count(e for _, e in batch)
            upto = batch[-1][0]
            batch = await self.store.initial_events(upto, DIGEST_BATCH)
        order = await self.store.initial_by_urgency(upto)
        for i in range(0, len(order), DIGEST_BATCH):
            notes = builder.add(await self.store.load_events(order[i : i + DIGEST_BATCH]))
            await self._write_digest(notes, builder)
        await self._write_digest(builder.finish(), builder)
        await self.store.consume_initial(upto)

    async def _write_digest(self, notes: list[Notification], builder: DigestBuilder) -> None:
        silenced, builder.silenced = builder.silenced, []
        told, builder.told = builder.told, []
        if notes or silenced or told:
            write = RoutingWrite(consumed=(), notifications=notes, silenced=silenced, told=told)
            await self.store.commit_routing(write)
            self._count_notifications(write)

    def _unreadable(self) -> None:
        skipped: list[str] = getattr(self.store, "unreadable", [])
        for problem in skipped:
            self.log.error("obligation_unreadable", obligation=problem, reason="skipped by reminders")
        skipped.clear()

    async def _route(self, now: datetime, *, flush_all: bool = False) -> None:
        if self.router.routes_nothing:  # built without rules (not ready): events stay pending
            return
        mode = self.config.poll.initial_sync
        if mode == "digest":
            await self._digest(now)
        while True:
            events = await self.store.pending_events(ROUTE_BATCH)
            if not events:
                break
            if mode == "notify":
                events = [e.model_copy(update={"initial": False}) if e.initial else e for e in events]
            elif mode == "silent":
                quiet = [e.id for e in events if e.initial]
                if quiet:
                    await self.store.commit_routing(RoutingWrite(consumed=quiet))
                    events = [e for e in events if not e.initial]
            if not events:
                continue
            groups = await self.store.group_heads()
            resolved = [e.obligation.key_id for e in events if e.kind == "resolved"]
            notified = await self.store.notified_receivers(resolved) if resolved else {}
            silences = self._applicable(await self.store.list_silences(now))
            write = plan(events, self.router, groups, notified, silences, now)
            await self.store.commit_routing(write)
            self._count_notifications(write)
            self._count_unrouted(write)
            if len(events) < ROUTE_BATCH:
                break
        # idle groups come along so that flush can delete them (a later event opens a new group)
        due = await self.store.due_groups(now, force=flush_all, idle_before=idle_before(self.ruleset, now))
        if not due:
            return
        idle = [g for g in due if not g.pending]
        if idle:
            await self._flush(idle, {}, now, flush_all)
        limits = Limits.of(self.ruleset)
        for group in (g for g in due if g.pending):
            # window by window (whole parts each), one transaction each: a crash between two
            # leaves the rest of the members in the group, flushed next time under the same ids
            for window, parts_of in windows(group, limits.size(group.receiver), FLUSH_EVENTS):
                by_id = {e.id: e for e in await self.store.load_events(window.pending)}
                await self._flush([window], by_id, now, flush_all, parts_of)

    async def _flush(
        self,
        groups: list[GroupState],
        by_id: dict[str, Event],
        now: datetime,
        force: bool,
        parts_of: tuple[int, int] | None = None,
    ) -> None:
        result = flush(groups, by_id, now, ruleset=self.ruleset, force=force, parts_of=parts_of)
        write = result.write()
        await self.store.commit_routing(write)
        self._count_notifications(write)

    def _applicable(self, silences: list[Silence]) -> list[Silence]:
        usable, skipped = self._silences.check(silences)
        for silence_id, problem in skipped:  # e.g. a regex saved by an older version: logged once
            self.log.error("silence_skipped", silence_id=silence_id, problem=problem)
            self.metrics.silences_skipped.inc()
        return usable

    def _count_unrouted(self, write: RoutingWrite) -> None:
        for _, kind in write.unrouted:
            self.metrics.unrouted.labels(kind).inc()
        if write.unrouted:
            self.log.info("events_unrouted", count=len(write.unrouted), reason="no rule matches, no fallback rule")

    def _count_notifications(self, write: RoutingWrite) -> None:
        for n in write.notifications:
            self.metrics.notifications.labels(n.receiver).inc()
        if write.notifications:
            self.wake_delivery({n.receiver for n in write.notifications})

    def _count_deliveries(self, stats: DeliveryStats) -> None:
        m = self.metrics
        for receiver, count in stats.sent.items():
            m.deliveries.labels(receiver, "sent").inc(count)
        for receiver, count in stats.failed.items():
            m.deliveries.labels(receiver, "failed").inc(count)
            m.retries.labels(receiver).inc(count)
        for receiver, count in stats.dead.items():
            m.deliveries.labels(receiver, "dead").inc(count)
        for receiver in {*stats.sent, *stats.failed, *stats.dead}:
            if (health := self.deliverer.health.get(receiver)) is not None:
                m.receiver_health(receiver, health.healthy, health.consecutive_failures)

    async def refresh_gauges(self) -> None:
        """Open obligations by action type and deadline bucket, ledger backlog, dead letters."""
        now = self.clock()
        m = self.metrics
        m.open_obligations.clear()
        counts: dict[tuple[str, str], int] = {}
        for action_type, deadline, count in await self.store.count_open():
            left = (deadline - now).total_seconds() if deadline else None
            key = (action_type, deadline_bucket(left))
            counts[key] = counts.get(key, 0) + count
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
