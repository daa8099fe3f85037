"""Self-alert notifications render on every channel and fire once per condition start and end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from alerter.errors import SourceError
from alerter.models import Notification
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
    alerts.cycle_ok(NOW + timedelta(minutes=10), SimpleNamespace(invalid=0, cycle_id="c"))  # type: ignore[arg-type]
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
