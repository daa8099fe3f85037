"""Webhooks signed per the Standard Webhooks spec; 410 disables the receiver."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from alerter.errors import DeliveryError
from alerter.http import retry_after
from alerter.models import Notification
from alerter.notifiers.base import ReceiverGone, SendResult, Steps, ThreadLookup, scrub
from alerter.receivers import WebhookConfig
from alerter.render.webhook import webhook_body

_SIGNED = ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature")


def sign(secrets: list[str] | list[Webhook], msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<sig>` per secret, space-separated (Standard Webhooks)."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return " ".join((s if isinstance(s, Webhook) else Webhook(s)).sign(msg_id, at, body) for s in secrets)


def origin(url: str) -> str:
    """Scheme, host and port only: paths and query strings of webhook URLs often carry tokens."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class WebhookNotifier:
    channel = "webhook"

    def __init__(self, receiver: str, config: WebhookConfig) -> None:
        self.receiver = receiver
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._where = origin(config.url)
        self._signers = [Webhook(s) for s in config.secrets()]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _error(self, message: str, retryable: bool, after: float | None = None) -> DeliveryError:
        return DeliveryError(
            scrub(f"webhook {self._where}: {message}", self.config.secrets()),
            retryable=retryable,
            retry_after=after,
        )

    async def send(
        self, notification: Notification, threads: ThreadLookup, now: datetime, steps: Steps | None = None
    ) -> SendResult:
        cfg = self.config
        body = orjson.dumps(webhook_body(notification)).decode()
        ts = int(time.time())  # the signature's freshness stamp: receivers check it against their own clock
        headers = {k: v for k, v in cfg.headers.items() if k.lower() not in _SIGNED}
        headers |= {
            "content-type": "application/json",
            "webhook-id": notification.id,
            "webhook-timestamp": str(ts),
        }
        if self._signers:
            headers["webhook-signature"] = sign(self._signers, notification.id, ts, body)
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        try:
            async with self._session.post(
                cfg.url,
                data=body.encode(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout.total_seconds()),
            ) as resp:
                status = resp.status
                after = retry_after(resp.headers.get("Retry-After"), now)
        except TimeoutError:
            raise self._error(f"no answer within {cfg.timeout.total_seconds():g}s", True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise self._error(f"connection failed ({type(e).__name__})", True) from None
        if 200 <= status < 300:
            return SendResult(external_id=notification.id)
        if status == 410:
            raise ReceiverGone(scrub(f"webhook {self._where}: 410 Gone, receiver disabled", cfg.secrets()))
        if 300 <= status < 400:
            raise self._error(f"HTTP {status} redirect (redirects are not followed; fix the url)", False)
        if status in (408, 425, 429) or status >= 500:
            raise self._error(f"HTTP {status}", True, after)
        raise self._error(f"HTTP {status}", False)
