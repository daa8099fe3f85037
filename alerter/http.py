"""HTTP details shared by every edge that talks HTTP (the Leap client, webhooks, Slack)."""

from __future__ import annotations

import math
import os
import socket
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from alerter.errors import AlerterError

RETRY_AFTER_MAX = 7 * 86400.0
"""The longest Retry-After taken as given: a week, past every channel's retry budget (a longer
one, or `inf`, would overflow the instant it is added to)."""


def retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds (delta-seconds, or an HTTP date counted from `now`), at most
    `RETRY_AFTER_MAX`; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return None if math.isnan(seconds) else min(max(0.0, seconds), RETRY_AFTER_MAX)


def listen_error(host: str, port: int, err: OSError) -> AlerterError:
    """`cannot listen on 127.0.0.1:8080: address already in use`."""
    if isinstance(err, socket.gaierror) or not err.errno or err.errno < 0:
        reason = err.strerror or str(err)
    else:
        reason = os.strerror(err.errno)
    return AlerterError(f"cannot listen on {host}:{port}: {reason[:1].lower()}{reason[1:]}")
