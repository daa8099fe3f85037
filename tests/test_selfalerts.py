"""Self-alert notifications render on every channel and fire once per condition start and end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from alerter.errors import SourceError
from alerter.models import Notification
from alerter.poller import CycleReport
from alerter.receivers import EmailConfig, SlackConfig
from alerter.render.console import summary
from alerter.render.email import render_email
from alerter.render.slack import render_slack
from alerter.render.webhook import webhook_body
from alerter.selfalerts import SelfAlerts
from alerter.web import Health

NOW = datetime(2026, 11, 28, 10, tzinfo=UTC)
ALERT = Notification(
    id="a1",
    kind="alert",
    rule="alerter-self",
    receiver="ops",
    group={"alert": "auth_refused", "status": "firing", "message": "Leap refused the API key (403)"},
    events=(),
    created_at=NOW,
)


def test_alert_renders_on_every_channel() -> None:
    slack = render_slack(ALERT, SlackConfig(token="xoxb-1", channel="#ops"), NOW)
    assert "Leap refused the API key" in slack.text
    mail = render_email(
        ALERT,
        EmailConfig.model_validate({"to": ["a@example.com"], "from": "b@example.com", "smtp": {"host": "h"}}),
        NOW,
    )
    assert "Leap refused the API key" in mail.subject
    body = webhook_body(ALERT)
    assert (body["type"], body["data"]["group"]["alert"]) == ("alerter.alert", "auth_refused")
    assert "Leap refused the API key" in summary(ALERT, NOW)


def fake_service() -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(poll=SimpleNamespace(interval=timedelta(minutes=5))),
        health=Health(interval=timedelta(minutes=5)),
        leader=True,
    )


def test_conditions_fire_once_and_clear_once() -> None:
    alerts = SelfAlerts(fake_service(), "ops")
    refused = SourceError("Leap refused the API key (401)", auth=True)
    for minute in range(3):
        alerts.cycle_failed(NOW + timedelta(minutes=minute), refused)
    assert [n.group["status"] for n in alerts._pending] == ["firing"]
    alerts.cycle_ok(NOW + timedelta(minutes=10), CycleReport("c", "incremental"))
    assert [n.group["status"] for n in alerts._pending] == ["firing", "resolved"]
    assert len({n.id for n in alerts._pending}) == 2


def test_source_down_only_after_three_intervals() -> None:
    alerts = SelfAlerts(fake_service(), "ops")
    down = SourceError("Leap API failed after 3 attempts: connection refused")
    alerts.cycle_failed(NOW, down)
    alerts.cycle_failed(NOW + timedelta(minutes=10), down)
    assert alerts._pending == []
    alerts.cycle_failed(NOW + timedelta(minutes=15), down)
    assert [n.group["alert"] for n in alerts._pending] == ["source_down"]


def test_without_an_operations_receiver_only_logs() -> None:
    alerts = SelfAlerts(fake_service(), None)
    alerts.cycle_failed(NOW, SourceError("refused", auth=True))
    assert alerts._pending == []
    assert "auth_refused" in alerts.active


def test_a_failing_receiver_fires_once_and_clears_and_the_operations_receiver_is_only_logged() -> None:
    alerts = SelfAlerts(fake_service(), "ops")
    for minute in range(3):
        alerts.receivers_failing(
            NOW + timedelta(minutes=minute), {"crm": "receiver crm: 5 attempts failed", "ops": "HTTP 500"}
        )
    assert {"receiver_failing:crm", "receiver_failing:ops"} <= set(alerts.active)
    assert [(n.group["alert"], n.group["status"]) for n in alerts._pending] == [("receiver_failing", "firing")]
    alerts.receivers_failing(NOW + timedelta(minutes=5), {})
    assert [n.group["status"] for n in alerts._pending] == ["firing", "resolved"]
    assert all("crm" in n.group["message"] for n in alerts._pending)
    assert not alerts.active


def _statuses(alerts: SelfAlerts, alert: str) -> list[str]:
    return [n.group["status"] for n in alerts._pending if n.group["alert"] == alert]


def test_skipped_records_stay_raised_while_they_come_and_clear_with_a_clean_sweep() -> None:
    alerts = SelfAlerts(fake_service(), "ops")
    bad = CycleReport("c1", "incremental", invalid=2, skipped_meters=["m-1", "m-2"])
    alerts.cycle_ok(NOW, bad)
    (firing,) = alerts._pending
    assert firing.group["status"] == "firing"
    assert "2 record(s)" in firing.group["message"] and "m-1, m-2" in firing.group["message"]
    # more come: still raised, counted, not sent again; a quiet incremental cycle proves nothing
    alerts.cycle_ok(NOW + timedelta(minutes=5), CycleReport("c2", "incremental", failed=1, skipped_meters=["m-3"]))
    alerts.cycle_ok(NOW + timedelta(minutes=10), CycleReport("c3", "incremental"))
    alerts.cycle_ok(NOW + timedelta(minutes=15), CycleReport("c4", "reconcile", invalid=1, skipped_meters=["m-1"]))
    assert _statuses(alerts, "invalid_records") == ["firing"]
    assert alerts.skipped == 4
    # a full sweep that skips nothing clears it, saying how many were skipped meanwhile
    alerts.cycle_ok(NOW + timedelta(hours=1), CycleReport("c5", "reconcile"))
    assert _statuses(alerts, "invalid_records") == ["firing", "resolved"]
    assert "4 skipped" in alerts._pending[-1].group["message"]
    # and when invalid records come back, it fires anew (a new notification id)
    alerts.cycle_ok(NOW + timedelta(hours=2), CycleReport("c6", "incremental", invalid=1, unidentified=1))
    assert _statuses(alerts, "invalid_records") == ["firing", "resolved", "firing"]
    assert len({n.id for n in alerts._pending}) == 3


def test_a_sweep_left_incomplete_raises_until_a_complete_one() -> None:
    alerts = SelfAlerts(fake_service(), "ops")
    alerts.cycle_ok(NOW, CycleReport("c1", "reconcile", invalid=1, unidentified=1, incomplete=True))
    assert _statuses(alerts, "sweep_incomplete") == ["firing"]
    assert "resolved nothing by absence" in alerts._pending[-1].group["message"]
    alerts.cycle_ok(NOW + timedelta(minutes=5), CycleReport("c2", "incremental"))  # not a sweep: no news
    alerts.cycle_ok(NOW + timedelta(days=1), CycleReport("c3", "reconcile", invalid=1, unidentified=1, incomplete=True))
    assert _statuses(alerts, "sweep_incomplete") == ["firing"]
    alerts.cycle_ok(NOW + timedelta(days=2), CycleReport("c4", "reconcile"))
    assert _statuses(alerts, "sweep_incomplete") == ["firing", "resolved"]
