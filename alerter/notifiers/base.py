"""The Notifier protocol: send one notification to one receiver and say how it went."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from alerter.models import Notification

ThreadLookup = Callable[[str], Awaitable[str | None]]
"""obligation key id -> external id of the first message this receiver got about it."""


@dataclass(frozen=True)
class SendResult:
    external_id: str | None = None
    """Slack `channel:ts`, email Message-ID, webhook-id."""
    threads: dict[str, str] = field(default_factory=dict)
    """New thread roots: obligation key id -> external id, for later updates and replies."""


class Notifier(Protocol):
    """Raises DeliveryError(retryable=...) on failure; never puts a secret in a message."""

    receiver: str
    channel: str
    """`slack`, `email`, `webhook` or `console`: picks the retry policy and pacing."""

    async def send(self, notification: Notification, threads: ThreadLookup) -> SendResult: ...

    async def close(self) -> None: ...
