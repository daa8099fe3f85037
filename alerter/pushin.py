"""Leap's webhooks in: the receiving endpoint, and the metrics of push.

How this works: a request is checked in this order, each failure answered at once and counted
(`alerter_push_received_total{outcome}`): the secret header (any configured secret, compared in
constant time; the header name in any case) -> 401 `unauthorized`; the body size (over 1 MiB)
-> 413 `too_large`; the envelope (a UUID `webhook_event_id` and a `payload` with a
`webhook_event_type`) -> 400 `invalid`; an event type the service does not use -> 200
`ignored`. A `meter.enrollment.required-actions.updated` event must name its meter by UUID
(else 400 `invalid`); it is stored in the inbox under its `webhook_event_id` before the 200
(`accepted`, or `duplicate` when the id is already there). Concurrent requests share one
transaction (group commit); when it fails, each is stored alone, so one the store refuses fails
no other. The store failing answers 503 (`error`): Leap tries again later.
The payload is only a hint: the worker re-reads the meter from Leap (see pushwork). No log line
or answer carries the presented header value.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from alerter.config import WebhooksConfig
from alerter.models import is_uuid
from alerter.store.inbox import Inbox, InboxEvent

MAX_BODY = 1 << 20
"""Bytes; a larger body is refused (413)."""
REQUIRED_ACTIONS = "meter.enrollment.required-actions.updated"
USED_TYPES = frozenset({REQUIRED_ACTIONS})
_REFUSAL_LOG_EVERY = 10.0
"""Seconds between two log lines about refused requests (each is counted)."""
OUTCOMES = ("accepted", "duplicate", "ignored", "unauthorized", "too_large", "invalid", "error")

log = structlog.get_logger("alerter.push")


class PushMetrics:
    """Push's metrics, in the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.received = Counter(
            "alerter_push_received", "Leap webhook requests received, by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.received.labels(outcome)
        self.processed = Counter(
            "alerter_push_processed",
            "Inbox events processed, by outcome (done, retry, given_up)",
            ["outcome"],
            registry=r,
        )
        self.rereads = Counter(
            "alerter_push_meter_rereads", "Meters re-read from Leap because a push named them", registry=r
        )
        self.missed = Counter(
            "alerter_push_missed",
            "Changes a poll found for meters no webhook announced within the window",
            registry=r,
        )
        self.inbox_pending = Gauge("alerter_push_inbox_pending", "Inbox events waiting to be processed", registry=r)
        self.inbox_lag = Gauge(
            "alerter_push_inbox_lag_seconds", "Age of the oldest inbox event waiting to be processed", registry=r
        )


class Envelope:
    """A parsed webhook request body."""

    __slots__ = ("event_id", "event_type", "meter_id", "payload")

    def __init__(self, event_id: str, event_type: str, meter_id: str | None, payload: Any) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.meter_id = meter_id
        self.payload = payload


def parse_envelope(raw: bytes) -> Envelope | str:
    """The envelope, or why the body is not one (pure)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "the body is not JSON"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    event_id, payload = body.get("webhook_event_id"), body.get("payload")
    if not is_uuid(event_id):  # Leap's definition: `format: uuid`
        return "webhook_event_id is missing or not a UUID"
    if not isinstance(payload, dict):
        return "payload is missing or not an object"
    event_type = payload.get("webhook_event_type")
    if not isinstance(event_type, str) or not event_type:
        return "payload.webhook_event_type is missing or not a string"
    meter_id = payload.get("meter_id")
    if event_type in USED_TYPES and not is_uuid(meter_id):
        return "payload.meter_id is missing or not a UUID"
    return Envelope(event_id, event_type, meter_id if isinstance(meter_id, str) else None, payload)


def authorized(presented: str | None, secrets: list[bytes]) -> bool:
    """Whether the header value is one of the secrets, compared in constant time."""
    if presented is None:
        return False
    value = presented.encode("utf-8", "surrogateescape")  # a header's bytes as they came
    ok = False
    for secret in secrets:  # every secret is compared: the time does not tell which one matched
        ok |= hmac.compare_digest(value, secret)
    return ok


class _GroupCommit:
    """Events waiting for the inbox, written together: one transaction per batch, not per request."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._queue: list[tuple[InboxEvent, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, event: InboxEvent) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                fresh = await self.inbox.add([e for e, _ in batch])
            except Exception as err:
                if len(batch) == 1:
                    _, future = batch[0]
                    if not future.done():
                        future.set_exception(err)
                    continue
                # one event the store will not take must not fail the others: each is tried alone
                for event, future in batch:
                    await self._alone(event, future)
                continue
            for (_, future), new in zip(batch, fresh, strict=True):
                if not future.done():
                    future.set_result(new)

    async def _alone(self, event: InboxEvent, future: asyncio.Future[bool]) -> None:
        try:
            new = (await self.inbox.add([event]))[0]
        except Exception as err:
            if not future.done():
                future.set_exception(err)
        else:
            if not future.done():
                future.set_result(new)


class Receiver:
    """The endpoint: `mount(app)` adds `POST {path}`; `config()` is read per request (a reload
    that changes the secrets applies at once)."""

    def __init__(
        self,
        config: Callable[[], WebhooksConfig | None],
        inbox: Inbox,
        metrics: PushMetrics,
        clock: Callable[[], datetime],
        wake: Callable[[], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.wake = wake
        self._commit = _GroupCommit(inbox)
        self._logged_at = -_REFUSAL_LOG_EVERY
        self._refused = 0

    def mount(self, app: web.Application, path: str) -> None:
        app.router.add_post(path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        cfg = self.config()
        if cfg is None:
            raise web.HTTPNotFound()
        secrets = [s.get_secret_value().encode() for s in cfg.secrets]
        if not authorized(request.headers.get(cfg.header), secrets):
            present = cfg.header in request.headers
            return self._refuse(
                401, "unauthorized", f"{'wrong' if present else 'missing'} {cfg.header} header", request
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._refuse(413, "too_large", f"body over {MAX_BODY} bytes", request)
        raw = await _read(request)
        if raw is None:
            return self._refuse(413, "too_large", f"body over {MAX_BODY} bytes", request)
        envelope = parse_envelope(raw)
        if isinstance(envelope, str):
            return self._refuse(400, "invalid", envelope, request)
        if envelope.event_type not in USED_TYPES or envelope.meter_id is None:
            self.metrics.received.labels("ignored").inc()
            return _answer(200, {"status": "ignored", "webhook_event_type": envelope.event_type})
        event = InboxEvent(
            envelope.event_id,
            envelope.meter_id,
            envelope.event_type,
            self.clock(),
            orjson.dumps(envelope.payload).decode(),
        )
        try:
            new = await self._commit.add(event)
        except Exception as err:
            self.metrics.received.labels("error").inc()
            log.error("webhook_not_stored", webhook_event_id=event.event_id, error=str(err))
            return _answer(503, {"error": "Service Unavailable", "message": "the event could not be stored"})
        self.metrics.received.labels("accepted" if new else "duplicate").inc()
        if new:
            self.wake()
        log.debug("webhook_received", webhook_event_id=event.event_id, meter_id=event.meter_id, duplicate=not new)
        return _answer(200, {"status": "accepted" if new else "duplicate"})

    def _refuse(self, status: int, outcome: str, reason: str, request: web.Request) -> web.Response:
        self.metrics.received.labels(outcome).inc()
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= _REFUSAL_LOG_EVERY:
            log.warning("webhook_refused", status=status, reason=reason, remote=request.remote, refused=self._refused)
            self._logged_at, self._refused = now, 0
        return _answer(status, {"error": outcome, "message": reason})


async def _read(request: web.Request) -> bytes | None:
    """The body, or None once it passes MAX_BODY (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
