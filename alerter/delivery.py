"""The outbox worker: claim due ledger rows, send, classify the outcome, back off, dead-letter.

How this works: `run_once(now, receiver)` leases up to a few times the receiver's in-flight
bound of its due rows (a lease, not a lock: a worker that dies mid-send loses its lease
when it expires or when its instance stops heartbeating, and another worker resends with
the same idempotency key). Each row is sent under its receiver's own semaphore, so a slow
or paced receiver holds only its own slots; `alerter run` gives every receiver its own
worker task (alerter/workers.py). A send gets the messages an earlier attempt already
sent (`Steps`, saved on the row after each one), so a multi-message notification resumes
where it failed. Success records new thread roots, then marks the row sent. Outcomes are
written by group commit (`_Outcomes`): the first goes at once, and those that arrive while
a write is in flight go together in the next transaction, so a busy batch costs a few
transactions instead of one per row. A retryable failure schedules the next attempt with
exponential backoff and full jitter (never sooner than the receiver's Retry-After); past
the channel's attempt or time budget the row becomes a dead letter. A permanent failure is
a dead letter at once; a 410 also disables the receiver. A `Deferred` send (a busy Slack
channel) is rescheduled without counting against the attempt budget. Each receiver's
consecutive failures are kept (`health`) for metrics and the "receiver failing" self-alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from alerter.digests import DEFAULT_MAX_EVENTS
from alerter.errors import DeliveryError
from alerter.notifiers.base import Deferred, Notifier, ReceiverGone, Steps, scrub
from alerter.store.base import Delivery, Failed, LedgerStore, Sent

log = structlog.get_logger("alerter.delivery")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for one channel: delay before attempt k+1 is uniform(0, min(cap, base * 2**(k-1)))."""

    base: float
    cap: float
    max_attempts: int
    budget: float
    """Seconds after the notification was created beyond which no retry is scheduled."""
    in_flight: int = 4
    """At most this many sends to one receiver at once."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * 2 ** max(0, attempt - 1)))


DEFAULT_POLICIES: Mapping[str, RetryPolicy] = {
    # enough attempts for the budget to be what ends the retries: with full jitter an attempt
    # after the ramp waits cap/2 on average (Slack's 10 attempts before: half of each delay's
    # cap, summed, ~9 min of its 6 h)
    "webhook": RetryPolicy(base=10, cap=3600, max_attempts=36, budget=12 * 3600, in_flight=32),
    "slack": RetryPolicy(base=2, cap=300, max_attempts=150, budget=6 * 3600, in_flight=2),
    "email": RetryPolicy(base=30, cap=1800, max_attempts=56, budget=12 * 3600, in_flight=4),
    "console": RetryPolicy(base=1, cap=10, max_attempts=3, budget=600, in_flight=1),
}
MAX_ERROR = 500
INSTANCE_TIMEOUT = 30.0
"""Seconds without a heartbeat after which an instance's leased rows go to others."""
CLAIM_EVENTS = 8000
"""Events one claim holds at most (memory stays flat however large the backlog)."""
FAILING_AFTER = 3
"""Consecutive failed attempts after which a receiver counts as failing."""


@dataclass
class DeliveryStats:
    """What one run (or a drain) did, by receiver; feeds metrics and `alerter once`'s exit code."""

    claimed: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    """Retryable failures rescheduled (including deferrals)."""
    dead: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    """Stored parts of claimed notifications that could not be read (left out, named)."""
    disabled: set[str] = field(default_factory=set)
    undelivered: int | None = None
    """Pending rows left after `drain` (None after a single run)."""

    def add(self, other: DeliveryStats) -> None:
        self.claimed += other.claimed
        self.sent.update(other.sent)
        self.failed.update(other.failed)
        self.dead.update(other.dead)
        self.unreadable += other.unreadable
        self.disabled |= other.disabled


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Outcomes:
    """One run's outcomes, written by group commit: while one `record_outcomes` transaction
    is in flight, the outcomes that arrive wait and go together in the next one."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._sent: list[Sent] = []
        self._failed: list[Failed] = []
        self._writer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def sent(self, outcome: Sent) -> None:
        self._sent.append(outcome)
        self._wake()

    def failed(self, outcome: Failed) -> None:
        self._failed.append(outcome)
        self._wake()

    def _wake(self) -> None:
        if self._writer is None and self._error is None:
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # let the sends that finished in this loop turn join the first write
            while self._sent or self._failed:
                sent, failed = self._sent, self._failed
                self._sent, self._failed = [], []
                await self._store.record_outcomes(sent, failed)
        except BaseException as err:  # the run reports it; the rows' leases expire and they are resent
            self._error = err
        finally:
            self._writer = None

    async def close(self) -> None:
        """Wait until every outcome is written; raise the write error, if any."""
        while self._writer is not None:
            await asyncio.shield(self._writer)
        if self._error is not None:
            raise self._error


@dataclass
class ReceiverHealth:
    """One receiver's recent outcomes on this instance (a deferral is neither)."""

    consecutive_failures: int = 0
    failing_since: datetime | None = None
    """When the current run of failures began."""
    last_error: str | None = None
    last_success_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures < FAILING_AFTER

    def succeeded(self, now: datetime) -> None:
        self.consecutive_failures, self.failing_since, self.last_success_at = 0, None, now

    def failed(self, now: datetime, error: str) -> None:
        self.consecutive_failures += 1
        self.failing_since = self.failing_since or now
        self.last_error = error


WAIT_BEHIND = timedelta(seconds=1)
"""A notification waiting behind an earlier one about the same obligation is due again this
long after that one's next attempt (`_in_order`)."""


class Deliverer:
    def __init__(
        self,
        store: LedgerStore,
        notifiers: Mapping[str, Notifier],
        owner: str,
        policies: Mapping[str, RetryPolicy] | None = None,
        *,
        batch: int = 200,
        lease_seconds: float = 300.0,
        instance_timeout: float = INSTANCE_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.notifiers = notifiers
        self.owner = owner
        self.policies = {**DEFAULT_POLICIES, **(policies or {})}
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.instance_timeout = instance_timeout
        """Rows leased by another instance whose last heartbeat is older than this are claimable."""
        self.health: dict[str, ReceiverHealth] = {}
        self._per_receiver: dict[str, asyncio.Semaphore] = {}
        self._rng = rng or random.Random()

    def policy(self, channel: str) -> RetryPolicy:
        return self.policies.get(channel, DEFAULT_POLICIES["webhook"])

    def claim_limit(self, receiver: str) -> int:
        """Rows one pass claims for `receiver`: a few rounds of its in-flight bound, and no
        more than about `CLAIM_EVENTS` events in all (a row holds up to `max_events`)."""
        notifier = self.notifiers.get(receiver)
        in_flight = self.policy(notifier.channel).in_flight if notifier else 1
        size = getattr(getattr(notifier, "config", None), "max_events", None) or DEFAULT_MAX_EVENTS
        return max(1, min(self.batch, 4 * in_flight, CLAIM_EVENTS // size))

    def failing(self, receivers: Iterable[str]) -> dict[str, str]:
        """Of `receivers`, those whose last attempts on this instance failed -> what is wrong."""
        out = {}
        for name in receivers:
            h = self.health.get(name)
            if h is not None and not h.healthy and h.failing_since is not None:
                out[name] = (
                    f"receiver {name}: {h.consecutive_failures} delivery attempts in a row failed since "
                    f"{h.failing_since:%Y-%m-%d %H:%M}Z; last error: {h.last_error}"
                )
        return out

    async def heartbeat(self, now: datetime) -> None:
        await self.store.heartbeat(self.owner, now)

    async def run_once(self, now: datetime, receiver: str | None = None) -> DeliveryStats:
        """Claim the rows due at `now` (of `receiver`, or of every receiver), send them
        concurrently, record every outcome."""
        limit = self.batch if receiver is None else self.claim_limit(receiver)
        return await self._run(now, limit, receiver=receiver)

    async def run_orphans(self, now: datetime) -> DeliveryStats:
        """Dead-letter the due rows of receivers the rules no longer name."""
        return await self._run(now, self.batch, other_than=list(self.notifiers))

    async def _run(
        self, now: datetime, limit: int, *, receiver: str | None = None, other_than: list[str] | None = None
    ) -> DeliveryStats:
        return await self._send(await self._claim(now, limit, receiver=receiver, other_than=other_than), now)

    async def _claim(
        self, now: datetime, limit: int, *, receiver: str | None = None, other_than: list[str] | None = None
    ) -> list[Delivery]:
        stale = now - timedelta(seconds=self.instance_timeout)
        return await self.store.claim_deliveries(
            now, self.owner, limit, self.lease_seconds, receiver=receiver, other_than=other_than, stale_before=stale
        )

    async def _send(self, rows: list[Delivery], now: datetime) -> DeliveryStats:
        """Sends claimed rows concurrently and records every outcome."""
        stats = DeliveryStats()
        stats.claimed = len(rows)
        claimed = time.monotonic()
        if rows:
            # a flush's parts started in the order of their index (the claim's may differ: `MADE_ORDER`)
            rows.sort(key=lambda d: (d.notification.created_at, d.notification.part[0]))
            rows = await self._in_order(rows, now)
            outcomes = _Outcomes(self.store)
            try:
                await asyncio.gather(*(self._deliver(d, now, stats, outcomes, claimed) for d in rows))
            finally:
                await outcomes.close()
        return stats

    async def _in_order(self, rows: list[Delivery], now: datetime) -> list[Delivery]:
        """The rows that may go now. To one receiver, what is said about an obligation goes out in
        the order it was made: a notification waits (put back, no attempt counted) while one made
        before it about the same obligation is still to be sent, in this claim or in a backoff
        after a failure; a resolution never overtakes its opening (a Slack message would show
        as open an action already resolved). Asked of the store only for notifications holding
        changes, reminders or resolutions, and only when something made before them waits; a
        claim of openings alone is sent as it is (two openings of one obligation, with no
        resolution between them to this receiver, are not ordered)."""
        go: list[Delivery] = []
        by_receiver: dict[str, list[Delivery]] = {}
        for d in rows:
            by_receiver.setdefault(d.receiver, []).append(d)
        for receiver, mine in by_receiver.items():
            follow = [d for d in mine if any(e.kind != "opened" for e in d.notification.events)]
            if not follow:  # openings alone (an initial flush): nothing of theirs to wait for
                go += mine
                continue
            follows = {d.notification.id for d in follow}
            # made at the same time (one routing pass): those of openings alone first
            mine.sort(key=lambda d: (d.notification.created_at, d.notification.id in follows, d.notification.part[0]))
            ids = [d.notification.id for d in mine]
            outside = await self.store.pending_before(receiver, max(d.notification.created_at for d in follow), ids)
            earlier: dict[str, str] = {}  # key id -> the first notification of this claim about it
            for d in mine:
                n = d.notification
                keys = {e.obligation.key_id for e in n.events}
                ahead = next((earlier[k] for k in keys if k in earlier), None)
                until = now + WAIT_BEHIND
                if ahead is None and outside and n.id in follows:
                    after = [(e.obligation.meter_id, e.obligation.key_id) for e in n.events if e.kind != "opened"]
                    found = await self.store.waits_for(receiver, n.id, n.created_at, after)
                    if found is not None:
                        ahead, until = found[0], max(found[1], now) + WAIT_BEHIND
                for k in keys:
                    earlier.setdefault(k, n.id)
                if ahead is None:
                    go.append(d)
                    continue
                note = f"waits for notification {ahead}, made before it about the same obligation"
                await self.store.defer_delivery(n.id, receiver, until, note, self.owner)
                log.info("delivery_waits", receiver=receiver, notification_id=n.id, behind=ahead, until=str(until))
        return go

    async def drain(
        self, deadline_s: float, clock: Callable[[], datetime] = utcnow, poll_interval: float = 0.5
    ) -> DeliveryStats:
        """Deliver until nothing is pending or `deadline_s` (measured on `clock`) has passed,
        every receiver on its own, so a failing one does not hold the others back."""
        total = DeliveryStats()
        start = clock()
        beat = asyncio.ensure_future(self._beat(clock))
        try:
            total.add(await self.run_orphans(start))

            async def one(receiver: str) -> None:
                # A full claim is followed by the next one at once, claimed (read and leased)
                # while its rows are sent; one left unsent when the deadline passes is released
                # as the instance stops (`stop_instance`), or its lease lapses.
                limit = self.claim_limit(receiver)
                ahead: asyncio.Future[list[Delivery]] | None = None
                try:
                    while True:
                        now = clock()
                        claimed, ahead = ahead, None
                        rows = await (claimed if claimed is not None else self._claim(now, limit, receiver=receiver))
                        if len(rows) >= limit and (clock() - start).total_seconds() < deadline_s:
                            ahead = asyncio.ensure_future(self._claim(clock(), limit, receiver=receiver))
                            await asyncio.sleep(0)  # it reaches the store before these are sent
                        stats = await self._send(rows, now)
                        total.add(stats)
                        if (clock() - start).total_seconds() >= deadline_s:
                            return
                        if not stats.claimed:
                            if not await self.store.undelivered_count(receiver):
                                return
                            await asyncio.sleep(poll_interval)
                finally:
                    if ahead is not None:
                        with contextlib.suppress(Exception):
                            await ahead

            await asyncio.gather(*(one(r) for r in list(self.notifiers)))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        total.undelivered = await self.store.undelivered_count()
        return total

    async def _beat(self, clock: Callable[[], datetime]) -> None:
        """Heartbeat while draining, so other replicas leave this instance's rows alone."""
        while True:
            await asyncio.sleep(self.instance_timeout / 3)
            try:
                await self.heartbeat(clock())
            except Exception as err:  # a missed beat only lets others take over sooner
                log.warning("heartbeat_failed", error=str(err))

    async def _deliver(
        self, d: Delivery, now: datetime, stats: DeliveryStats, outcomes: _Outcomes, claimed: float
    ) -> None:
        """One row; `claimed` is when it was claimed (`time.monotonic()`)."""
        n = d.notification
        for why in d.unreadable:  # left out: the rest is sent
            log.error("stored_part_unreadable", receiver=d.receiver, notification_id=n.id, error=why)
        stats.unreadable += len(d.unreadable)
        notifier = self.notifiers.get(d.receiver)
        if notifier is None or (d.unreadable and not n.events):
            why = "receiver not configured" if notifier is None else f"nothing of it can be read: {d.unreadable[0]}"
            dead = why[:MAX_ERROR]
            outcomes.failed(Failed(n.id, d.receiver, dead, None, now))
            stats.dead[d.receiver] += 1
            log.error(
                "delivery_failed",
                receiver=d.receiver,
                notification_id=n.id,
                attempt=d.attempts + 1,
                retryable=False,
                error=dead,
                dead=True,
            )
            return
        policy = self.policy(notifier.channel)
        gate = self._per_receiver.setdefault(d.receiver, asyncio.Semaphore(policy.in_flight))

        started = time.monotonic()

        def lease_from_now() -> datetime:
            """A whole lease from this moment, on the pass's clock (`now` is when it began)."""
            return now + timedelta(seconds=time.monotonic() - started + self.lease_seconds)

        async def save(done: dict[str, str]) -> None:
            # another instance leaves the row alone while its messages go out, however many
            await self.store.set_delivery_steps(n.id, d.receiver, done, (self.owner, lease_from_now()))

        async with gate:
            # claimed a while ago (queued behind others, or this process was paused): renewed,
            # with this instance's heartbeat, unless another instance has claimed it since, as it
            # may once the lease or the heartbeat (`instance_timeout`) is out (that one sends it)
            waited = time.monotonic() - claimed
            if waited > min(self.lease_seconds, self.instance_timeout) / 3:
                seen = now + timedelta(seconds=time.monotonic() - started)
                if not await self.store.renew_lease(n.id, d.receiver, self.owner, lease_from_now(), seen):
                    log.info("delivery_lease_lost", receiver=d.receiver, notification_id=n.id, waited=round(waited, 1))
                    return
            try:
                result = await notifier.send(
                    n, lambda kid: self.store.get_thread(d.receiver, kid), now, Steps(d.steps, save)
                )
            except DeliveryError as e:
                for key_id, external_id in e.threads.items():  # some recipients have it: replies thread under it
                    await self.store.set_thread(d.receiver, key_id, external_id)
                await self._failed(d, notifier.channel, e, now, stats, outcomes)
                return
            except Exception as e:  # a bug or an unclassified library error: retry, but say what it was
                err = DeliveryError(f"unexpected {type(e).__name__}: {scrub(str(e))}", retryable=True)
                await self._failed(d, notifier.channel, err, now, stats, outcomes)
                return
        for key_id, external_id in result.threads.items():
            await self.store.set_thread(d.receiver, key_id, external_id, replace=key_id in result.restarted)
        outcomes.sent(Sent(n.id, d.receiver, now, result.external_id))
        stats.sent[d.receiver] += 1
        self.health.setdefault(d.receiver, ReceiverHealth()).succeeded(now)
        log.info(
            "notification_sent",
            receiver=d.receiver,
            channel=notifier.channel,
            notification_id=n.id,
            attempt=d.attempts + 1,
            events=len(n.events),
            **({"resumed_after_steps": len(d.steps)} if d.steps else {}),
        )

    def next_attempt(self, d: Delivery, channel: str, err: DeliveryError, now: datetime) -> datetime | None:
        """When to try again, or None for a dead letter."""
        if not err.retryable:
            return None
        policy = self.policy(channel)
        attempt = d.attempts + 1
        delay = policy.delay(attempt, self._rng)
        if err.retry_after is not None:
            delay = max(delay, err.retry_after) if not isinstance(err, Deferred) else err.retry_after
        at = now + timedelta(seconds=delay)
        if (at - (d.retry_from or d.notification.created_at)).total_seconds() > policy.budget:
            return None
        if attempt >= policy.max_attempts and not isinstance(err, Deferred):
            return None
        return at

    async def _failed(
        self, d: Delivery, channel: str, err: DeliveryError, now: datetime, stats: DeliveryStats, outcomes: _Outcomes
    ) -> None:
        n = d.notification
        message = scrub(str(err))[:MAX_ERROR]
        at = self.next_attempt(d, channel, err, now)
        if at is None and err.retryable:
            message = f"gave up after {d.attempts + 1} attempts: {message}"[:MAX_ERROR]
        outcomes.failed(Failed(n.id, d.receiver, message, at, now, attempted=not isinstance(err, Deferred)))
        if not isinstance(err, Deferred):
            self.health.setdefault(d.receiver, ReceiverHealth()).failed(now, message)
        if isinstance(err, ReceiverGone):
            await self.store.set_receiver_disabled(d.receiver, message, now)
            stats.disabled.add(d.receiver)
        if at is None:
            stats.dead[d.receiver] += 1
        else:
            stats.failed[d.receiver] += 1
        event = "delivery_deferred" if isinstance(err, Deferred) else "delivery_failed"
        level = log.info if isinstance(err, Deferred) else log.warning if at else log.error
        level(
            event,
            receiver=d.receiver,
            channel=channel,
            notification_id=n.id,
            attempt=d.attempts + 1,
            retryable=err.retryable,
            error=message,
            dead=at is None,
            next_attempt_at=at.isoformat() if at else None,
        )
