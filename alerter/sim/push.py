"""The simulator's webhooks: Leap's Webhook Subscription API (v1.1) and pushes when meters change.

How this works: `GET/POST /v1.1/webhooks`, `PUT/DELETE /v1.1/webhooks/{id}` and
`POST /v1.1/webhooks/{id}/test` keep subscriptions in memory (Bearer auth and injected faults as
on the enrollment endpoints). A watcher follows the portfolio's change log; each change of a
meter sends one `meter.enrollment.required-actions.updated` event (a new `webhook_event_id`,
the meter's current partner actions, `{}` once none is left) to every subscription of that
type, with the subscription's headers. An attempt succeeds on a 2xx within `timeout` (10 s);
failed ones are tried again on Leap's schedule (after 1, 2, 4, 8, 16, 29 min, 1, 2, 4 h: 10
attempts), every delay multiplied by `time_scale` (tests compress hours into milliseconds).
Push faults, each used by the next new event(s): `drop` (never sent), `duplicate` (sent twice,
one id), `delay` (first attempt after `delay` s), `reorder` (held until the next event is sent).
Control: `GET /_sim/push` (stats, subscriptions, faults), `POST /_sim/push` (`time_scale`,
`timeout`), `POST|DELETE /_sim/push/faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from alerter.sim.portfolio import Portfolio

REQUIRED_ACTIONS = "meter.enrollment.required-actions.updated"
EVENT_TYPES = (
    "meter.created",
    "connect_session.updated",
    "connect_session.authorization_updated",
    "meter.enrollment.global-status.updated",
    "meter.enrollment.participation-status.updated",
    REQUIRED_ACTIONS,
    "meter.enrollment.group.updated",
)
SCHEDULE = (60.0, 120.0, 240.0, 480.0, 960.0, 1740.0, 3600.0, 7200.0, 14400.0)
"""Seconds before attempts 2..10, after the attempt before."""
FAULT_KINDS = frozenset({"drop", "duplicate", "delay", "reorder"})
WATCH_EVERY = 0.005
CONCURRENCY = 64


@dataclass
class Subscription:
    webhook_id: str
    event_types: list[str]
    headers: list[dict[str, str]]
    receiver_url: str


@dataclass
class PushFault:
    kind: str
    times: int = 1
    delay: float = 1.0


@dataclass
class Attempt:
    """One try to deliver an event (newest last in `Pusher.attempts`)."""

    webhook_event_id: str
    webhook_id: str
    meter_id: str | None
    number: int
    status: int | None
    error: str | None
    changed_at: float
    """`time.monotonic()` when the change was seen (sent events: the watcher's time)."""
    at: float


@dataclass
class Pusher:
    """Subscriptions, the watcher and the deliveries of one simulator."""

    portfolio: Portfolio
    time_scale: float = 1.0
    timeout: float = 10.0
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    faults: deque[PushFault] = field(default_factory=deque)
    attempts: deque[Attempt] = field(default_factory=lambda: deque(maxlen=200_000))
    stats: Counter[str] = field(default_factory=Counter)
    _held: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None
    _limit: asyncio.Semaphore | None = None

    # -- faults --
    def add_fault(self, kind: str, times: int = 1, delay: float = 1.0) -> PushFault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown push fault {kind!r}; one of {', '.join(sorted(FAULT_KINDS))}")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = PushFault(kind, times, float(delay))
        self.faults.append(fault)
        return fault

    def _take_fault(self) -> PushFault | None:
        if not self.faults:
            return None
        head = self.faults[0]
        head.times -= 1
        if head.times <= 0:
            self.faults.popleft()
        return head

    # -- running --
    async def context(self, _: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the watcher runs while the simulator serves."""
        self._session = aiohttp.ClientSession()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        watcher = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watcher.cancel()
            for task in (watcher, *self._tasks):
                task.cancel()
            for task in (watcher, *self._tasks):
                with contextlib.suppress(BaseException):
                    await task
            await self._session.close()

    async def _watch(self) -> None:
        seen = len(self.portfolio.changed)
        while True:
            await asyncio.sleep(WATCH_EVERY)
            log = self.portfolio.changed
            if len(log) == seen:
                continue
            changed, seen = log[seen:], len(log)
            if any(REQUIRED_ACTIONS in s.event_types for s in self.subscriptions.values()):
                for index in changed:
                    self.emit(self.event(index))

    def event(self, index: int) -> dict[str, Any]:
        """The required-actions payload of a meter as it is now."""
        meter = self.portfolio.record(index)
        payload: dict[str, Any] = {
            "webhook_event_type": REQUIRED_ACTIONS,
            "meter_id": meter["meter_id"],
            "transmission_region": meter["transmission_region"],
            "global_enrollment_status": meter["global_enrollment_status"],
            "meter_type": meter["meter_type"],
            "required_actions": {"partner": partner} if (partner := meter["required_actions"]["partner"]) else {},
        }
        if meter.get("partner_reference"):
            payload["partner_reference"] = meter["partner_reference"]
        return payload

    def emit(self, payload: dict[str, Any]) -> None:
        """One new event to every subscription of its type, with the next push fault applied."""
        changed_at = time.monotonic()
        fault = self._take_fault()
        if fault is not None:
            self.stats[f"fault_{fault.kind}"] += 1
        subs = [s for s in self.subscriptions.values() if payload["webhook_event_type"] in s.event_types]
        if not subs or (fault is not None and fault.kind == "drop"):
            self.stats["dropped" if subs else "unsubscribed"] += 1
            return
        self.stats["events"] += 1
        held, self._held = self._held, []
        for sub in subs:
            envelope = {"webhook_event_id": str(uuid.uuid4()), "payload": payload}
            copies = 2 if fault is not None and fault.kind == "duplicate" else 1
            for copy in range(copies):
                first_delay = fault.delay if fault is not None and fault.kind == "delay" else 0.0
                first_delay += 0.05 * copy

                async def deliver(s: Subscription = sub, e: dict[str, Any] = envelope, d: float = first_delay) -> None:
                    await self._deliver(s, e, changed_at, d)

                if fault is not None and fault.kind == "reorder":
                    self._held.append(deliver)
                else:
                    self._spawn(deliver, then=held)
                    held = []

    def _spawn(self, deliver: Callable[[], Awaitable[None]], then: list[Callable[[], Awaitable[None]]]) -> None:
        async def run() -> None:
            await deliver()
            for later in then:  # events held back (`reorder`) go after this one
                await later()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sub: Subscription, envelope: dict[str, Any], changed_at: float, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        body = orjson.dumps(envelope)
        for number in range(1, len(SCHEDULE) + 2):
            status, error = await self._post(sub, body)
            meter_id = envelope["payload"].get("meter_id")
            self.attempts.append(
                Attempt(
                    envelope["webhook_event_id"],
                    sub.webhook_id,
                    meter_id,
                    number,
                    status,
                    error,
                    changed_at,
                    time.monotonic(),
                )
            )
            if status is not None and 200 <= status < 300:
                self.stats["delivered"] += 1
                return
            self.stats["failed_attempts"] += 1
            if number > len(SCHEDULE):
                break
            await asyncio.sleep(SCHEDULE[number - 1] * self.time_scale)
        self.stats["given_up"] += 1

    async def _post(self, sub: Subscription, body: bytes) -> tuple[int | None, str | None]:
        assert self._session is not None and self._limit is not None
        headers = {"Content-Type": "application/json", **{h["name"]: h["value"] for h in sub.headers}}
        async with self._limit:
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout)
                async with self._session.post(sub.receiver_url, data=body, headers=headers, timeout=timeout) as r:
                    await r.read()
                    return r.status, None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                return None, f"{type(err).__name__}: {err}"[:200]

    async def test(self, sub: Subscription, payload: dict[str, Any]) -> dict[str, Any]:
        """Leap's test call: one envelope now, no retry; the receiver's answer."""
        started = time.perf_counter()
        status, error = await self._post(sub, orjson.dumps({"webhook_event_id": str(uuid.uuid4()), "payload": payload}))
        if status is None:
            return {"is_successful": False, "error": error or "no response"}
        return {
            "is_successful": 200 <= status < 300,
            "status_code": status,
            "response_time_ms": int((time.perf_counter() - started) * 1000),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "time_scale": self.time_scale,
            "timeout": self.timeout,
            "subscriptions": [asdict(s) for s in self.subscriptions.values()],
            "faults": [asdict(f) for f in self.faults],
            "stats": dict(self.stats),
            "in_flight": len(self._tasks),
        }


# --- the subscription API ------------------------------------------------------------------------

PUSHER = web.AppKey("pusher", Pusher)


BODY = web.RequestKey("body", object)
"""A request's parsed JSON body, set by the simulator's Leap middleware."""


def _error(status: int, error: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": error, "message": message}), status=status, content_type="application/json"
    )


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _not_found() -> web.Response:
    return _error(404, "Not Found", "The specified resource was not found")


def _subscription(webhook_id: str, body: Any) -> Subscription | str:
    """A WebhookRequest body as a subscription, or what is wrong with it."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    types, headers, url = body.get("event_types"), body.get("headers", []), body.get("receiver_url")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        return "event_types must be a non-empty list of event types"
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        return f"unknown event types: {', '.join(unknown)}"
    if not isinstance(headers, list) or not all(
        isinstance(h, dict) and isinstance(h.get("name"), str) and isinstance(h.get("value"), str) for h in headers
    ):
        return "headers must be a list of {name, value}"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "receiver_url must be an http(s) URL"
    return Subscription(
        webhook_id, list(dict.fromkeys(types)), [{"name": h["name"], "value": h["value"]} for h in headers], url
    )


async def _list(request: web.Request) -> web.Response:
    pusher = request.app[PUSHER]
    return _json({"webhooks": [asdict(s) for s in pusher.subscriptions.values()]})


async def _create(request: web.Request) -> web.Response:
    sub = _subscription(str(uuid.uuid4()), request[BODY])
    if isinstance(sub, str):
        return _error(400, "Bad Request", sub)
    request.app[PUSHER].subscriptions[sub.webhook_id] = sub
    return _json({"webhook_id": sub.webhook_id})


async def _update(request: web.Request) -> web.Response:
    pusher, webhook_id = request.app[PUSHER], request.match_info["webhook_id"]
    if webhook_id not in pusher.subscriptions:
        return _not_found()
    sub = _subscription(webhook_id, request[BODY])
    if isinstance(sub, str):
        return _error(400, "Bad Request", sub)
    pusher.subscriptions[webhook_id] = sub
    return _json({"webhook_id": webhook_id})


async def _delete(request: web.Request) -> web.Response:
    pusher = request.app[PUSHER]
    if pusher.subscriptions.pop(request.match_info["webhook_id"], None) is None:
        return _not_found()
    return _json({"message": "Operation completed successfully"})


async def _test(request: web.Request) -> web.Response:
    pusher = request.app[PUSHER]
    sub = pusher.subscriptions.get(request.match_info["webhook_id"])
    if sub is None:
        return _not_found()
    body = request[BODY]
    if not isinstance(body, dict) or body.get("webhook_event_type") not in EVENT_TYPES:
        return _error(400, "Bad Request", "the body must be an event with a known webhook_event_type")
    return _json(await pusher.test(sub, body))


# --- the /_sim/push control API --------------------------------------------------------------------


async def _control(request: web.Request) -> web.Response:
    pusher = request.app[PUSHER]
    try:
        body = orjson.loads(await request.read() or b"{}")
        if request.method == "POST":
            if "time_scale" in body:
                pusher.time_scale = float(body["time_scale"])
            if "timeout" in body:
                pusher.timeout = float(body["timeout"])
    except (ValueError, TypeError) as err:
        return _error(400, "Bad Request", str(err))
    return _json(pusher.describe())


async def _faults(request: web.Request) -> web.Response:
    pusher = request.app[PUSHER]
    if request.method == "DELETE":
        pusher.faults.clear()
    elif request.method == "POST":
        try:
            body = orjson.loads(await request.read() or b"{}")
            pusher.add_fault(str(body.get("kind")), int(body.get("times", 1)), float(body.get("delay", 1.0)))
        except (ValueError, TypeError, AttributeError) as err:
            return _error(400, "Bad Request", str(err))
    return _json({"faults": [asdict(f) for f in pusher.faults]})


def install(app: web.Application, pusher: Pusher) -> None:
    """Adds the subscription API, the push control API and the watcher to a simulator app."""
    app[PUSHER] = pusher
    app.router.add_get("/v1.1/webhooks", _list)
    app.router.add_post("/v1.1/webhooks", _create)
    app.router.add_put("/v1.1/webhooks/{webhook_id}", _update)
    app.router.add_delete("/v1.1/webhooks/{webhook_id}", _delete)
    app.router.add_post("/v1.1/webhooks/{webhook_id}/test", _test)
    app.router.add_route("*", "/_sim/push", _control)
    app.router.add_route("*", "/_sim/push/faults", _faults)
    app.cleanup_ctx.append(pusher.context)
