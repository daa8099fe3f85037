"""The service alerts an operations receiver about itself: each condition once when it starts
and once when it clears, through the same durable outbox as every other notification.

Conditions: Leap refused the API key; the source unreachable for 3 poll intervals; no
successful cycle for 3 poll intervals; records failing validation; dead letters waiting;
a webhook receiver disabled by a 410.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from alerter.errors import SourceError
from alerter.models import Notification, RoutingWrite

if TYPE_CHECKING:
    from alerter.poller import CycleReport
    from alerter.service import Service


class SelfAlerts:
    def __init__(self, service: Service, receiver: str | None) -> None:
        self.service = service
        self.receiver = receiver
        self.log = structlog.get_logger("alerter.selfalerts")
        self.active: dict[str, datetime] = {}
        """condition -> when it started."""
        self.first_failure: datetime | None = None
        self._pending: list[Notification] = []

    # -- inputs from the service --
    def cycle_ok(self, now: datetime, report: CycleReport) -> None:
        self.first_failure = None
        for name in ("auth_refused", "source_down", "stale"):
            self._clear(name, now)
        if report.invalid:
            self._raise(
                f"invalid_records:{now.date().isoformat()}",
                now,
                f"{report.invalid} record(s) from Leap failed validation and were skipped "
                f"(cycle {report.cycle_id}); see the `record_invalid` log lines.",
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

    # -- outputs --
    def _raise(self, name: str, now: datetime, message: str) -> None:
        if name in self.active:
            return
        self.active[name] = now
        self.log.warning("self_alert", alert=name, message=message)
        self._queue(name, now, "firing", message)

    def _clear(self, name: str, now: datetime) -> None:
        started = self.active.pop(name, None)
        if started is None:
            return
        self.log.info("self_alert_resolved", alert=name)
        self._queue(name, started, "resolved", f"{name} cleared at {now:%Y-%m-%d %H:%M}Z")

    def _queue(self, name: str, started: datetime, status: str, message: str) -> None:
        if not self.receiver:
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
