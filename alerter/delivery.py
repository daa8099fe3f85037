"""The outbox worker: claim due ledger rows, send, classify the outcome, back off, dead-letter.

How this works: `run_once(now)` leases up to `batch` due rows (a lease, not a lock: a worker
that dies mid-send loses its lease and another worker resends with the same idempotency
key). Each row is sent under a global semaphore and a small per-receiver one, so a slow or
paced receiver holds only a few slots. Success records new thread roots, then marks the
row sent. A retryable failure schedules the next attempt with exponential backoff and
full jitter (never sooner than the receiver's Retry-After); past the channel's attempt or
time budget the row becomes a dead letter. A permanent failure is a dead letter at once;
a 410 also disables the receiver. A `Deferred` send (a busy Slack channel) is rescheduled
without counting against the attempt budget.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from alerter.errors import DeliveryError
from alerter.notifiers.base import Deferred, Notifier, ReceiverGone, scrub
from alerter.store.base import Delivery, Store

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
    "webhook": RetryPolicy(base=10, cap=3600, max_attempts=20, budget=12 * 3600, in_flight=32),
    "slack": RetryPolicy(base=2, cap=300, max_attempts=10, budget=6 * 3600, in_flight=2),
    "email": RetryPolicy(base=30, cap=1800, max_attempts=12, budget=12 * 3600, in_flight=4),
    "console": RetryPolicy(base=1, cap=10, max_attempts=3, budget=600, in_flight=1),
}
MAX_ERROR = 500


@dataclass
class DeliveryStats:
    """What one run (or a drain) did, by receiver; feeds metrics and `alerter once`'s exit code."""

    claimed: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    """Retryable failures rescheduled (including deferrals)."""
    dead: Counter[str] = field(default_factory=Counter)
    disabled: set[str] = field(default_factory=set)
    undelivered: int | None = None
    """Pending rows left after `drain` (None after a single run)."""

    def add(self, other: DeliveryStats) -> None:
        self.claimed += other.claimed
        self.sent.update(other.sent)
        self.failed.update(other.failed)
        self.dead.update(other.dead)
        self.disabled |= other.disabled


def utcnow() -> datetime:
    return datetime.now(UTC)


class Deliverer:
    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        owner: str,
        policies: Mapping[str, RetryPolicy] | None = None,
        *,
        concurrency: int = 64,
        batch: int = 200,
        lease_seconds: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.notifiers = notifiers
        self.owner = owner
        self.policies = {**DEFAULT_POLICIES, **(policies or {})}
        self.batch = batch
        self.lease_seconds = lease_seconds
        self._slots = asyncio.Semaphore(concurrency)
        self._per_receiver: dict[str, asyncio.Semaphore] = {}
        self._rng = rng or random.Random()

    def policy(self, channel: str) -> RetryPolicy:
        return self.policies.get(channel, DEFAULT_POLICIES["webhook"])

    async def run_once(self, now: datetime) -> DeliveryStats:
        """Claim the rows due at `now`, send them concurrently, record every outcome."""
        stats = DeliveryStats()
        rows = await self.store.claim_deliveries(now, self.owner, self.batch, self.lease_seconds)
        stats.claimed = len(rows)
        if rows:
            await asyncio.gather(*(self._deliver(d, now, stats) for d in rows))
        return stats

    async def drain(
        self, deadline_s: float, clock: Callable[[], datetime] = utcnow, poll_interval: float = 0.5
    ) -> DeliveryStats:
        """Run until nothing is pending or `deadline_s` (measured on `clock`) has passed."""
        total = DeliveryStats()
        start = clock()
        while True:
            total.add(await self.run_once(clock()))
            total.undelivered = await self.store.undelivered_count()
            if total.undelivered == 0 or (clock() - start).total_seconds() >= deadline_s:
                return total
            await asyncio.sleep(poll_interval)

    async def _deliver(self, d: Delivery, now: datetime, stats: DeliveryStats) -> None:
        n = d.notification
        notifier = self.notifiers.get(d.receiver)
        if notifier is None:
            await self.store.mark_failed(n.id, d.receiver, "receiver not configured", None)
            stats.dead[d.receiver] += 1
            log.error(
                "delivery_failed",
                receiver=d.receiver,
                notification_id=n.id,
                attempt=d.attempts + 1,
                retryable=False,
                error="receiver not configured",
                dead=True,
            )
            return
        policy = self.policy(notifier.channel)
        gate = self._per_receiver.setdefault(d.receiver, asyncio.Semaphore(policy.in_flight))
        async with gate, self._slots:
            try:
                result = await notifier.send(n, lambda kid: self.store.get_thread(d.receiver, kid))
            except DeliveryError as e:
                await self._failed(d, notifier.channel, e, now, stats)
                return
            except Exception as e:  # a bug or an unclassified library error: retry, but say what it was
                err = DeliveryError(f"unexpected {type(e).__name__}: {scrub(str(e))}", retryable=True)
                await self._failed(d, notifier.channel, err, now, stats)
                return
        for key_id, external_id in result.threads.items():
            await self.store.set_thread(d.receiver, key_id, external_id)
        await self.store.mark_sent(n.id, d.receiver, now, result.external_id)
        stats.sent[d.receiver] += 1
        log.info(
            "notification_sent",
            receiver=d.receiver,
            channel=notifier.channel,
            notification_id=n.id,
            attempt=d.attempts + 1,
            events=len(n.events),
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
        if (at - d.notification.created_at).total_seconds() > policy.budget:
            return None
        if attempt >= policy.max_attempts and not isinstance(err, Deferred):
            return None
        return at

    async def _failed(self, d: Delivery, channel: str, err: DeliveryError, now: datetime, stats: DeliveryStats) -> None:
        n = d.notification
        message = scrub(str(err))[:MAX_ERROR]
        at = self.next_attempt(d, channel, err, now)
        if at is None and err.retryable:
            message = f"gave up after {d.attempts + 1} attempts: {message}"[:MAX_ERROR]
        await self.store.mark_failed(n.id, d.receiver, message, at)
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
