"""The Notifier protocol: send one notification to one receiver and say how it went."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from alerter.errors import DeliveryError
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


class ReceiverGone(DeliveryError):
    """The receiver said it is gone for good (webhook 410): delivery disables it."""

    disable_receiver = True

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class Deferred(DeliveryError):
    """The channel is busy (paced or rate limited): try again after `retry_after`; not the
    receiver's fault, so delivery does not count it against the retry budget's attempts."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retryable=True, retry_after=retry_after)


_URL = re.compile(r"(?P<base>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)(?P<rest>[?#][^\s'\"<>]*)?")
_USERINFO = re.compile(r"://[^/@\s]*@")


def scrub_url(url: str) -> str:
    """A URL fit for a log line: no query string, fragment or user:password."""
    return _USERINFO.sub("://", _URL.sub(lambda m: m.group("base"), url))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove known secrets and URL query strings from a message before it is logged or stored."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return scrub_url(text)
