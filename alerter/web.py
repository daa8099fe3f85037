"""The operations HTTP server: /healthz, /startedz, /readyz (JSON reason when not ready) and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from alerter.http import listen_error
from alerter.metrics import Metrics

if TYPE_CHECKING:
    from alerter.console.app import ServiceView


@dataclass
class Health:
    """What readiness is decided from; the service updates it, the server only reads it."""

    interval: timedelta
    rules_loaded: bool = True
    last_success_at: datetime | None = None
    last_error: str | None = None
    auth_refused: bool = False
    leader: bool = False
    started: bool = False
    """The state store is open and migrated (`/startedz`): the server answers before that."""
    last_reload: dict[str, Any] | None = None
    """The last rules reload: `result` (ok, rejected, unstable), `at`, and `problems` when rejected."""

    def readiness(self, now: datetime) -> tuple[bool, str]:
        if not self.rules_loaded:
            return False, "rules not loaded"
        if self.auth_refused:
            return False, f"Leap refused the API key: {self.last_error or ''}".rstrip(": ")
        if self.last_success_at is None:
            return False, "no successful cycle yet" + (f": {self.last_error}" if self.last_error else "")
        age = now - self.last_success_at
        if age > 2 * self.interval:
            reason = f"no successful cycle for {int(age.total_seconds())}s"
            return False, reason + (f": {self.last_error}" if self.last_error else "")
        return True, "ok"


def make_app(
    health: Health, metrics: Metrics, clock: Callable[[], datetime], console: ServiceView | None = None
) -> web.Application:
    """The ops endpoints, and with `console` (the running service) the web console and `/api/v1/`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def startedz(_: web.Request) -> web.Response:
        # for a startup or readiness probe: a new pod whose migration still runs is not taken as
        # ready, so a rolling update keeps the old pods until it is done
        if health.started:
            return web.json_response({"started": True})
        return web.json_response({"started": False, "reason": "opening the state store (migrations)"}, status=503)

    async def readyz(_: web.Request) -> web.Response:
        now = clock()
        ok, reason = health.readiness(now)
        metrics.ready.set(1 if ok else 0)
        body = {
            "ready": ok,
            "reason": reason,
            "leader": health.leader,
            "last_success_at": health.last_success_at.isoformat() if health.last_success_at else None,
            "rules_reload": health.last_reload,
        }
        return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json")

    async def metrics_view(_: web.Request) -> web.Response:
        metrics.ready.set(1 if health.readiness(clock())[0] else 0)  # as /readyz would answer now
        resp = web.Response(body=metrics.render())
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/startedz", startedz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    if console is not None:
        from alerter.console.site import mount

        mount(app, console)
    return app


async def start_server(app: web.Application, listen: str) -> tuple[web.AppRunner, int]:
    """Bind `host:port` (port 0 picks a free one); returns the runner and the bound port.

    A port that cannot be bound (in use, not permitted, an unknown host) raises AlerterError
    with one line naming the address.
    """
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port))
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise listen_error(host or "127.0.0.1", int(port), err) from None
    bound = int(port)
    for address in runner.addresses:
        bound = int(address[1])
        break
    return runner, bound
