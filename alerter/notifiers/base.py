"""The Notifier protocol: send one notification to one receiver and say how it went."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
    """New thread roots: obligation key id -> external id, for later updates and replies (a root
    already stored is kept)."""
    restarted: dict[str, str] = field(default_factory=dict)
    """Those of `threads` that replace the stored ones: an obligation opened again after its
    resolution starts a new thread, which its next resolution and reminders answer in."""


class Steps:
    """The messages of one notification already sent to one receiver (step name -> external
    id), for a channel that sends a notification as several messages (Slack: a post per
    thread, an update of each original). Each step is saved (by delivery: durably, on the
    ledger row) as soon as it succeeds, so a retry after a partial failure sends only the rest."""

    def __init__(
        self, done: Mapping[str, str] | None = None, save: Callable[[dict[str, str]], Awaitable[None]] | None = None
    ) -> None:
        self._done = dict(done or {})
        self._save = save

    def get(self, step: str) -> str | None:
        return self._done.get(step)

    async def done(self, step: str, external_id: str) -> None:
        self._done[step] = external_id
        if self._save is not None:
            await self._save(dict(self._done))

    def __len__(self) -> int:
        return len(self._done)


class Notifier(Protocol):
    """Raises DeliveryError(retryable=...) on failure; never puts a secret in a message.

    `now` is the moment of sending (what messages say about time); `steps` carries what an
    earlier attempt of the same notification already sent, where a channel sends several messages.
    """

    receiver: str
    channel: str
    """`slack`, `email`, `webhook` or `console`: picks the retry policy and pacing."""

    async def send(
        self, notification: Notification, threads: ThreadLookup, now: datetime, steps: Steps | None = None
    ) -> SendResult: ...

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
