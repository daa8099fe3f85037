"""The service alerts an operations receiver about itself: each condition once when it starts
and once when it clears, through the same durable outbox as every other notification.

Conditions: Leap refused the API key; the source unreachable for 3 poll intervals; no
successful cycle for 3 poll intervals; records skipped (`invalid_records`: failing validation,
or a meter whose processing failed); a sweep left incomplete by a record without a readable
meter id (`sweep_incomplete`: resolutions by absence held back); dead letters waiting; a
webhook receiver disabled by a 410; a receiver failing (its last 3 or more delivery
attempts failed). An alert about the operations receiver itself is only logged: it cannot
be told through itself, and queueing it there would feed its own failures.

Skipped records start `invalid_records` in any cycle; it stays raised while they keep coming
(the count of records skipped meanwhile is kept, and logged with each cycle that adds to it)
and clears with the first full sweep (initial or reconcile) that skips none, since only a
sweep reads every record again. `sweep_incomplete` clears with the next complete sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import structlog

from alerter.errors import SourceError
from alerter.models import Notification, RoutingWrite

if TYPE_CHECKING:
    from alerter.config import Config
    from alerter.poller import CycleReport
    from alerter.store.base import RoutingStore
    from alerter.web import Health


class AlertingService(Protocol):
    """What self-alerts read of the service and write through it (the service implements it)."""

    @property
    def config(self) -> Config: ...
    @property
    def health(self) -> Health: ...
    @property
    def leader(self) -> bool: ...
    @property
    def store(self) -> RoutingStore: ...
    def wake_delivery(self, receivers: Iterable[str] | None = None) -> None: ...


class SelfAlerts:
    def __init__(self, service: AlertingService, receiver: str | None) -> None:
        self.service = service
        self.receiver = receiver
        self.log = structlog.get_logger("alerter.selfalerts")
        self.active: dict[str, datetime] = {}
        """condition -> when it started."""
        self.first_failure: datetime | None = None
        self.skipped = 0
        """Records skipped since `invalid_records` was raised."""
        self._pending: list[Notification] = []

    # -- inputs from the service --
    def cycle_ok(self, now: datetime, report: CycleReport) -> None:
        self.first_failure = None
        for name in ("auth_refused", "source_down", "stale"):
            self._clear(name, now)
        self._skipped_records(now, report)
        if report.kind == "incremental":
            return
        if report.incomplete:
            self._raise(
                "sweep_incomplete",
                now,
                f"the {report.kind} sweep (cycle {report.cycle_id}) resolved nothing by absence: "
                f"{report.unidentified} record(s) without a readable meter_id failed validation.",
            )
        else:
            self._clear("sweep_incomplete", now)

    def _skipped_records(self, now: datetime, report: CycleReport) -> None:
        count = report.invalid + report.failed
        if not count:
            if report.kind != "incremental" and "invalid_records" in self.active:
                self._clear(
                    "invalid_records",
                    now,
                    f"invalid_records cleared at {now:%Y-%m-%d %H:%M}Z: a full sweep skipped no record "
                    f"({self.skipped} skipped while it lasted).",
                )
            return
        if "invalid_records" in self.active:
            self.skipped += count
            self.log.warning("self_alert_ongoing", alert="invalid_records", skipped=count, since_raised=self.skipped)
            return
        self.skipped = count
        named = report.skipped_meters
        more = count - report.unidentified - len(named)
        meters = f"; meters {', '.join(named)}{f' (+{more} more)' if more > 0 else ''}" if named else ""
        self._raise(
            "invalid_records",
            now,
            f"{count} record(s) from Leap skipped in the {report.kind} cycle {report.cycle_id}: "
            f"{report.invalid} failed validation ({report.unidentified} without a readable meter_id), "
            f"{report.failed} could not be processed{meters}. See the `record_invalid` and `meter_failed` log lines.",
        )

    def cycle_failed(self, now: datetime, err: SourceError) -> None:
        self.first_failure = self.first_failure or now
        interval = self.service.config.poll.interval
        if err.auth:
            self._raise("auth_refused", now, str(err))
        elif now - self.first_failure >= 3 * interval:
            self._raise("source_down", now, f"Leap unreachable since {self.first_failure:%Y-%m-%d %H:%M}Z: {err}")
        last = self.service.health.last_success_at
        if last is not None and now - last >= 3 * interval:
            self._raise("stale", now, f"no successful cycle since {last:%Y-%m-%d %H:%M}Z")

    async def ledger_state(self, now: datetime, dead: int, disabled: dict[str, str]) -> None:
        if dead:
            self._raise("dead_letters", now, f"{dead} notification(s) in the dead-letter list (`alerter dlq list`)")
        else:
            self._clear("dead_letters", now)
        for name, reason in disabled.items():
            self._raise(f"receiver_disabled:{name}", now, f"receiver {name} is disabled: {reason}")
        for key in [k for k in self.active if k.startswith("receiver_disabled:")]:
            if key.split(":", 1)[1] not in disabled:
                self._clear(key, now)
        await self.flush()

    def receivers_failing(self, now: datetime, failing: dict[str, str]) -> None:
        """failing: receiver -> what is wrong; a receiver no longer listed has recovered."""
        for name, message in failing.items():
            self._raise(f"receiver_failing:{name}", now, message)
        for key in [k for k in self.active if k.startswith("receiver_failing:")]:
            if key.split(":", 1)[1] not in failing:
                self._clear(key, now)

    # -- outputs --
    def _raise(self, name: str, now: datetime, message: str) -> None:
        if name in self.active:
            return
        self.active[name] = now
        self.log.warning("self_alert", alert=name, message=message)
        self._queue(name, now, "firing", message)

    def _clear(self, name: str, now: datetime, message: str | None = None) -> None:
        started = self.active.pop(name, None)
        if started is None:
            return
        self.log.info("self_alert_resolved", alert=name)
        self._queue(name, started, "resolved", message or f"{name} cleared at {now:%Y-%m-%d %H:%M}Z")

    def _queue(self, name: str, started: datetime, status: str, message: str) -> None:
        kind, _, subject = name.partition(":")
        if not self.receiver or (kind.startswith("receiver_") and subject == self.receiver):
            return
        raw = f"{name}\x1f{started.isoformat()}\x1f{status}"
        self._pending.append(
            Notification(
                id=hashlib.sha256(raw.encode()).hexdigest()[:32],
                kind="alert",
                rule="alerter-self",
                receiver=self.receiver,
                group={"alert": name.split(":", 1)[0], "status": status, "message": message},
                events=(),
                created_at=started,
            )
        )

    async def flush(self) -> None:
        """Write queued self-alerts to the outbox (the leader's store is fenced; skip otherwise)."""
        if not self._pending or not self.service.leader:
            return
        notes, self._pending = self._pending, []
        try:
            await self.service.store.commit_routing(RoutingWrite(consumed=(), notifications=notes))
        except Exception as err:  # never let reporting a problem become the problem
            self.log.error("self_alert_not_queued", error=str(err))
            return
        self.service.wake_delivery([n.receiver for n in notes])
