"""HTTP details shared by every edge that talks HTTP (the Leap client, webhooks, Slack)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from alerter.errors import AlerterError


def retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds (delta-seconds, or an HTTP date counted from `now`); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def listen_error(host: str, port: int, err: OSError) -> AlerterError:
    """`cannot listen on 127.0.0.1:8080: address already in use`."""
    if isinstance(err, socket.gaierror) or not err.errno or err.errno < 0:
        reason = err.strerror or str(err)
    else:
        reason = os.strerror(err.errno)
    return AlerterError(f"cannot listen on {host}:{port}: {reason[:1].lower()}{reason[1:]}")
