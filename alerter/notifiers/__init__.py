"""One notifier per channel behind one small protocol; their config models are in alerter.receivers."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from alerter.notifiers.base import Notifier
    from alerter.pacing import Pacers
    from alerter.receivers import ConsoleConfig, EmailConfig, SlackConfig, WebhookConfig


def build_notifier(
    name: str,
    *,
    slack: SlackConfig | None = None,
    email: EmailConfig | None = None,
    webhook: WebhookConfig | None = None,
    console: ConsoleConfig | None = None,
    stream: TextIO | None = None,
    pacers: Pacers | None = None,
) -> Notifier:
    """The notifier for a receiver with exactly one channel configured; Slack's take their
    turns from `pacers` (shared by the service's notifiers)."""
    given = [c for c in (slack, email, webhook, console) if c is not None]
    if len(given) != 1:
        raise ValueError(f"receiver {name}: configure exactly one of slack, email, webhook, console")
    if slack is not None:
        from alerter.notifiers.slack import SlackNotifier

        return SlackNotifier(name, slack, pacers)
    if email is not None:
        from alerter.notifiers.email import EmailNotifier

        return EmailNotifier(name, email)
    if webhook is not None:
        from alerter.notifiers.webhook import WebhookNotifier

        return WebhookNotifier(name, webhook)
    from alerter.notifiers.console import ConsoleNotifier

    return ConsoleNotifier(name, console, stream)
