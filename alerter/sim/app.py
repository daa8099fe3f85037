"""The simulator's HTTP side: Leap's enrollment endpoints, the `/_sim/` control API, SimServer, serve()."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from alerter.errors import ConfigError
from alerter.http import listen_error
from alerter.sim.churn import run_churn
from alerter.sim.faults import Fault, Faults, corrupt
from alerter.sim.portfolio import Portfolio
from alerter.sim.push import BODY, Pusher, install
from alerter.sim.query import UUID_PATTERN, BadRequest, Searcher, parse_search

INTERNAL_ERROR = "An error happened whilst processing your request"
_HTML = "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center></body></html>"
_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
_OPS = ("open", "change", "resolve", "archive", "touch")
MAX_CHURN = 10_000.0


@dataclass(frozen=True)
class RequestLog:
    """One request the Leap API side answered (newest last in `SimServer.requests`)."""

    method: str
    path: str
    body: Any
    status: int


@dataclass
class _State:
    portfolio: Portfolio
    searcher: Searcher
    api_key: str
    faults: Faults
    requests: deque[RequestLog]


STATE = web.AppKey("state", _State)
INVALID = web.RequestKey("invalid", Fault)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, title: str, details: dict[str, Any] | None = None) -> web.Response:
    return _json({"title": title, "status": status, "details": details or {}}, status)


def _fault_response(fault: Fault) -> web.Response | None:
    code = int(fault.kind) if fault.kind.isdigit() else 0
    if code == 429:
        return _json(
            {"title": "Too Many Requests", "status": 429, "details": {}},
            429,
            {"Retry-After": str(fault.retry_after)},
        )
    if code == 500:
        return _json(INTERNAL_ERROR, 500)
    if code in _REASONS:
        html = _HTML.format(code=code, reason=_REASONS[code])
        return web.Response(text=html, status=code, content_type="text/html")
    if code == 401:
        return _error(401, "Unauthorized")
    if code == 403:
        return _error(403, "You do not have the necessary permissions for this operation")
    return None


@web.middleware
async def _leap_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults, then Bearer auth, then the handler; every answer is logged in `requests`."""
    if not request.path.startswith(("/v2/", "/v1.1/")):
        return await handler(request)
    state = request.app[STATE]
    body: Any = None
    if request.method in ("POST", "PUT"):
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
    request[BODY] = body
    response = await _answer(request, handler, state)
    state.requests.append(RequestLog(request.method, request.path, body, response.status))
    return response


async def _answer(request: web.Request, handler: Handler, state: _State) -> web.StreamResponse:
    fault = state.faults.take()
    if fault is not None:
        if fault.kind == "disconnect":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=599)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault.kind in ("invalid_record", "not_found", "skipped"):
            request[INVALID] = fault
        else:
            injected = _fault_response(fault)
            if injected is not None:
                return injected
    if request.headers.get("Authorization") != f"Bearer {state.api_key}":
        return _error(401, "Unauthorized")
    try:
        return await handler(request)
    except BadRequest as err:
        return _error(400, err.title, err.details)


async def _search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = request[BODY]
    if isinstance(body, str) or (body is None and request.content_length):
        raise BadRequest("Bad Request", {"error": "the request body is not valid JSON"})
    search = parse_search({} if body is None else body)
    fault = request.get(INVALID)
    if fault is not None and fault.kind == "not_found":
        if isinstance(body, dict) and fault.meter_id in body.get("meter_ids", ()):
            return _error(404, "Meter not found", {"meter_id": fault.meter_id})
        fault = None
    named = isinstance(body, dict) and bool(body.get("meter_ids"))
    if fault is None or (fault.kind == "skipped" and named):
        return web.Response(body=state.searcher.page_json(search), content_type="application/json")
    meters, token = state.searcher.page(search)
    if fault.kind == "skipped":
        meters = [m for m in meters if m.get("meter_id") != fault.meter_id]
        fault = replace(fault, count=0)  # nothing else broken
    if meters and fault.meter_id is None and fault.record >= len(meters):
        fault = replace(fault, record=len(meters) - 1, count=1)  # a short page: its last record
    meters = [corrupt(m, fault.invalid) if fault.breaks(i, m) else m for i, m in enumerate(meters)]
    page: dict[str, Any] = {"meters": meters}
    if token is not None:
        page["next_page_token"] = token
    return _json(page)


async def _get(request: web.Request) -> web.Response:
    state = request.app[STATE]
    meter_id = request.match_info["meter_id"]
    if not _is_uuid(meter_id):
        raise BadRequest("Meter id is not a UUID", {"meter_id": meter_id})
    index = state.portfolio.index_of(meter_id)
    if index is None:
        return _error(404, "Meter not found", {"meter_id": meter_id})
    fault = request.get(INVALID)
    if fault is None or fault.kind != "invalid_record" or fault.meter_id not in (None, meter_id):
        return web.Response(body=state.portfolio.json(index).encode(), content_type="application/json")
    return _json(corrupt(state.portfolio.record(index), fault.invalid))


def _is_uuid(value: str) -> bool:
    return bool(UUID_PATTERN.match(value))


# --- the /_sim/ control API ------------------------------------------------------------------------


async def _sim_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    data = orjson.loads(raw) if raw else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _control(fn: Callable[[web.Request, _State, dict[str, Any]], Any]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        try:
            result = fn(request, state, await _sim_body(request))
        except KeyError as err:
            return _error(404, "Not found", {"error": str(err.args[0]) if err.args else "not found"})
        except (TypeError, ValueError) as err:
            return _error(400, "Bad Request", {"error": str(err)})
        return _json(result)

    return handler


def _sim_meter(request: web.Request, state: _State, _: dict[str, Any]) -> Any:
    return state.portfolio.meter(request.match_info["meter_id"])


def _sim_mutate(request: web.Request, state: _State, body: dict[str, Any]) -> Any:
    meter_id, op = request.match_info["meter_id"], request.match_info["op"]
    p = state.portfolio
    ops: dict[str, Callable[..., Any]] = {
        "open": p.open_action,
        "change": p.change_action,
        "resolve": p.resolve_action,
        "archive": p.archive,
        "touch": p.touch,
    }
    if op not in ops:
        raise KeyError(f"unknown operation {op!r}; one of {', '.join(_OPS)}")
    result = ops[op](meter_id, **body)
    return {"result": result, "meter": p.meter(meter_id)}


def _sim_clock(request: web.Request, state: _State, body: dict[str, Any]) -> Any:
    if request.method == "POST":
        state.portfolio.advance(float(body.get("advance", 0)))
    return {"now": state.portfolio.now().isoformat().replace("+00:00", "Z")}


def _sim_churn(request: web.Request, state: _State, body: dict[str, Any]) -> Any:
    p, n = state.portfolio, int(body.get("n", 10))
    changes = p.partner_churn(n) if body.get("partner") else p.random_churn(n)
    return {"changes": [asdict(ch) for ch in changes]}


def _sim_faults(request: web.Request, state: _State, body: dict[str, Any]) -> Any:
    if request.method == "DELETE":
        state.faults.clear()
    elif request.method == "POST":
        state.faults.add(**body)
    return {"faults": state.faults.pending()}


def build_app(
    portfolio: Portfolio,
    *,
    api_key: str,
    faults: Faults | None = None,
    requests: deque[RequestLog] | None = None,
    pusher: Pusher | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_leap_api], client_max_size=16 * 1024 * 1024)
    app[STATE] = _State(
        portfolio,
        Searcher(portfolio),
        api_key,
        Faults() if faults is None else faults,
        deque(maxlen=2000) if requests is None else requests,
    )
    app.router.add_post("/v2/meters/enrollments/search", _search)
    app.router.add_get("/v2/meters/{meter_id}/enrollments", _get)
    app.router.add_get("/_sim/meters/{meter_id}", _control(_sim_meter))
    app.router.add_post("/_sim/meters/{meter_id}/{op}", _control(_sim_mutate))
    app.router.add_route("*", "/_sim/clock", _control(_sim_clock))
    app.router.add_post("/_sim/churn", _control(_sim_churn))
    app.router.add_route("*", "/_sim/faults", _control(_sim_faults))
    install(app, pusher or Pusher(portfolio))  # Leap's webhooks: subscriptions and pushes
    return app


class SimServer:
    """The simulator on a loopback port: `async with SimServer(portfolio) as srv: srv.url`."""

    def __init__(
        self,
        portfolio: Portfolio | None = None,
        *,
        api_key: str = "sim-key",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.portfolio = portfolio if portfolio is not None else Portfolio()
        self.api_key = api_key
        self.faults = Faults()
        self.requests: deque[RequestLog] = deque(maxlen=2000)
        self.push = Pusher(self.portfolio)
        self.app = build_app(
            self.portfolio, api_key=api_key, faults=self.faults, requests=self.requests, pusher=self.push
        )
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as err:  # a busy port: one line (exit 1), and nothing left running
            await self.stop()
            raise listen_error(self._host, self._port, err) from None
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def serve(host: str, port: int, meters: int, action_rate: float, seed: int, api_key: str, churn: float = 0.0) -> None:
    """Runs the simulator until Ctrl-C or SIGTERM, after printing one line with its URL; with
    `churn` > 0 it opens, reschedules and resolves about that many partner actions a second."""
    asyncio.run(_serve(host, port, meters, action_rate, seed, api_key, churn))


async def _serve(host: str, port: int, meters: int, action_rate: float, seed: int, api_key: str, churn: float) -> None:
    if not 0 <= churn <= MAX_CHURN:
        raise ConfigError([f"alerter: --churn: changes a second, from 0 (static) to {MAX_CHURN:g}; not {churn:g}"])
    started = time.perf_counter()
    portfolio = Portfolio(meters, action_rate=action_rate, seed=seed)
    async with SimServer(portfolio, api_key=api_key, host=host, port=port) as server:
        needing = portfolio.columns.has_partner.count(1)
        activity = f"{churn:g} partner changes a second" if churn else "static: no changes unless asked (/_sim/...)"
        print(
            f"Leap simulator at {server.url} ({meters} meters, {needing} need partner action;"
            f" api key {api_key!r}; {activity}; ready in {time.perf_counter() - started:.1f}s)",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.gather(stop.wait(), run_churn(portfolio, churn, stop))
