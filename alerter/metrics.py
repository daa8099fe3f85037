"""Prometheus metrics of one service instance, in its own registry (conventional names)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

DEADLINE_BUCKETS = ("overdue", "1d", "2d", "7d", "30d", "later", "none")
"""Labels of `alerter_open_obligations` by deadline, along the reminder thresholds (1d, 2d, 7d) so
an alert can watch them. An initial-sync digest counts in words instead
(`alerter.summary.DIGEST_DEADLINE_BUCKETS`): that wording reaches receivers, these labels dashboards."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("alerter_cycles", "Polling cycles by kind and outcome", ["kind", "outcome"], registry=r)
        self.cycle_duration = Histogram(
            "alerter_cycle_duration_seconds",
            "Duration of polling cycles",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.pages = Counter("alerter_source_pages", "Pages read from Leap", registry=r)
        self.records = Counter("alerter_source_records", "Records read from Leap", registry=r)
        self.invalid_records = Counter(
            "alerter_source_invalid_records", "Records skipped because they failed validation", registry=r
        )
        self.failed_meters = Counter(
            "alerter_meters_failed", "Meters skipped because their processing (state, diff, commit) failed", registry=r
        )
        self.events = Counter("alerter_events", "Obligation events by type", ["type"], registry=r)
        self.notifications = Counter(
            "alerter_notifications", "Notifications created by receiver", ["receiver"], registry=r
        )
        self.deliveries = Counter(
            "alerter_deliveries",
            "Delivery attempts by receiver and status",
            ["receiver", "status"],
            registry=r,
        )
        self.retries = Counter("alerter_delivery_retries", "Delivery retries scheduled", ["receiver"], registry=r)
        self.dead_letters = Gauge("alerter_dead_letters", "Dead-lettered deliveries waiting", registry=r)
        self.undelivered = Gauge("alerter_undelivered", "Deliveries pending or waiting for a retry", registry=r)
        self.open_obligations = Gauge(
            "alerter_open_obligations",
            "Open obligations by action type and deadline bucket",
            ["action_type", "deadline"],
            registry=r,
        )
        self.last_success = Gauge(
            "alerter_last_successful_cycle_timestamp_seconds",
            "Unix time of the last successful polling cycle",
            registry=r,
        )
        self.leader = Gauge("alerter_leader", "1 while this instance holds the polling lease", registry=r)
        self.receiver_healthy = Gauge(
            "alerter_receiver_healthy",
            "0 while a receiver's last delivery attempts (3 or more in a row) failed on this instance",
            ["receiver"],
            registry=r,
        )
        self.receiver_failures = Gauge(
            "alerter_receiver_consecutive_failures",
            "Delivery attempts to a receiver that failed in a row on this instance",
            ["receiver"],
            registry=r,
        )
        self.receiver_undelivered = Gauge(
            "alerter_receiver_undelivered", "Deliveries pending or waiting for a retry, by receiver", ["receiver"],
            registry=r,
        )  # fmt: skip
        self.receiver_oldest_undelivered = Gauge(
            "alerter_receiver_oldest_undelivered_seconds",
            "Age of a receiver's oldest undelivered notification (0 when none)",
            ["receiver"],
            registry=r,
        )
        self.ready = Gauge("alerter_ready", "1 while /readyz answers 200", registry=r)
        self.rules_reloads = Counter(
            "alerter_rules_reload", "Rules reloads by result (ok, rejected, unstable)", ["result"], registry=r
        )
        self.unrouted = Counter(
            "alerter_events_unrouted", "Events no rule took (none matched, no fallback rule)", ["type"], registry=r
        )
        self.silences_skipped = Counter(
            "alerter_silences_skipped", "Stored silences that cannot be applied (counted once each)", registry=r
        )
        self.events_unreadable = Counter(
            "alerter_events_unreadable",
            "Stored events (or notifications) that cannot be read, by the step that skipped them",
            ["step"],
            registry=r,
        )

    def receiver_health(self, receiver: str, healthy: bool, failures: int) -> None:
        self.receiver_healthy.labels(receiver).set(1 if healthy else 0)
        self.receiver_failures.labels(receiver).set(failures)

    def set_receivers(
        self,
        now: datetime,
        configured: Iterable[str],
        health: Mapping[str, tuple[bool, int]],
        undelivered: Mapping[str, int],
        oldest: Mapping[str, datetime],
    ) -> None:
        """Every receiver's delivery gauges, replacing those of receivers no longer configured.
        health: receiver -> (healthy, consecutive failures); oldest: its oldest undelivered notification."""
        gauges = (self.receiver_healthy, self.receiver_failures, self.receiver_undelivered,
                  self.receiver_oldest_undelivered)  # fmt: skip
        for gauge in gauges:
            gauge.clear()
        configured = set(configured)
        for name in sorted(configured | set(oldest) | set(undelivered)):
            if name in configured:
                self.receiver_health(name, *health.get(name, (True, 0)))
            self.receiver_undelivered.labels(name).set(undelivered.get(name, 0))
            age = (now - oldest[name]).total_seconds() if name in oldest else 0.0
            self.receiver_oldest_undelivered.labels(name).set(max(0.0, age))

    def watch_source(self, stats: Callable[[], Any]) -> None:
        """Export the source client's own counters (requests, retries, latency) at scrape time."""
        self.registry.register(_SourceCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def deadline_bucket(seconds_left: float | None) -> str:
    """Which DEADLINE_BUCKETS entry a deadline `seconds_left` from now falls in."""
    if seconds_left is None:
        return "none"
    if seconds_left < 0:
        return "overdue"
    for label, days in (("1d", 1), ("2d", 2), ("7d", 7), ("30d", 30)):
        if seconds_left <= days * 86400:
            return label
    return "later"


class _SourceCollector(Collector):
    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats()
        yield CounterMetricFamily("alerter_source_requests", "HTTP requests sent to Leap", value=st.requests)
        yield CounterMetricFamily("alerter_source_retries", "Requests to Leap retried", value=st.retries)
        yield SummaryMetricFamily(
            "alerter_source_request_duration_seconds",
            "Latency of requests to Leap",
            count_value=st.latency_count,
            sum_value=st.latency_sum,
        )
