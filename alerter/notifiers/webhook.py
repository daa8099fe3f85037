"""Webhooks signed per the Standard Webhooks spec; 410 disables the receiver."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook

from alerter import templates
from alerter.config import STRICT, Duration
from alerter.errors import DeliveryError
from alerter.http import retry_after
from alerter.models import Notification
from alerter.notifiers.base import ReceiverGone, SendResult, Steps, ThreadLookup, scrub

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class WebhookConfig(BaseModel):
    model_config = STRICT

    url: str
    secret: SecretStr | list[SecretStr] | None = None
    """`whsec_<base64>`; a list while a secret rotates (one signature per secret)."""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=15)
    max_events: int = Field(500, ge=1)
    """A larger group or digest is sent as several notifications (`data.part`)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("webhook url must start with http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        for s in [] if value is None else value if isinstance(value, list) else [value]:
            key = s.get_secret_value().removeprefix("whsec_")
            # the signing library would skip characters that are not base64 and sign with another key
            valid = _BASE64.fullmatch(key) is not None
            try:
                Webhook(s.get_secret_value())
            except Exception:
                valid = False
            if not valid:
                raise ValueError("webhook secret must be whsec_ followed by base64 (A-Z, a-z, 0-9, +, /)")
        return value

    def secrets(self) -> list[str]:
        s = self.secret
        return [x.get_secret_value() for x in ([] if s is None else s if isinstance(s, list) else [s])]


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
        body = orjson.dumps(templates.webhook_body(notification)).decode()
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
                after = retry_after(resp.headers.get("Retry-After"))
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
