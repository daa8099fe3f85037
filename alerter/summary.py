"""An initial-sync digest's summary (pure): counts by action type, region and deadline bucket.

A digest larger than a receiver's `max_events` is sent in parts; every part carries the
summary of the whole digest, so `Summary` is fed event by event (or obligation by
obligation) and read once at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from alerter.models import Event

DIGEST_DEADLINE_BUCKETS = ("overdue", "within 7 days", "within 30 days", "later", "no deadline")
"""How an initial-sync digest counts its backlog by deadline, in words a reader scans once.
Not the Prometheus labels of `alerter.metrics.deadline_bucket` (`1d`, `2d`, `7d`, ... which
follow the reminder thresholds for alerting on a gauge): the digest's wording is part of
what Slack, email and webhook receivers get, so the two schemes stay apart."""


def digest_deadline_bucket(deadline: datetime | None, at: datetime) -> str:
    """Which DIGEST_DEADLINE_BUCKETS entry a deadline falls in, seen from `at`."""
    if deadline is None:
        return "no deadline"
    days = (deadline - at).total_seconds() / 86400
    return "overdue" if days < 0 else "within 7 days" if days <= 7 else "within 30 days" if days <= 30 else "later"


class Summary:
    """Counts over a digest's events, deadline buckets as of `at`."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.total = 0
        self._meters: set[str] = set()
        self._types: Counter[str] = Counter()
        self._regions: Counter[str] = Counter()
        self._buckets: Counter[str] = Counter()

    def add(self, event: Event) -> None:
        o = event.obligation
        self.total += 1
        self._meters.add(o.meter_id)
        self._types[o.action_type] += 1
        self._regions[o.meter.transmission_region or "(none)"] += 1
        self._buckets[digest_deadline_bucket(o.deadline, self.at)] += 1

    def extend(self, events: Iterable[Event]) -> Summary:
        for e in events:
            self.add(e)
        return self

    def counts(self) -> dict[str, Any]:
        """`{"total", "meters", "by_action_type", "by_region", "by_deadline"}` (the webhook's `counts`)."""
        return {
            "total": self.total,
            "meters": len(self._meters),
            "by_action_type": dict(self._types.most_common()),
            "by_region": dict(self._regions.most_common()),
            "by_deadline": {b: self._buckets[b] for b in DIGEST_DEADLINE_BUCKETS if self._buckets[b]},
        }
