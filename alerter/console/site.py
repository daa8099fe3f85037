"""The console mounted on the service's HTTP server: its static files, JSON API and pages."""

from __future__ import annotations

from aiohttp import web

from alerter.console import api, pages
from alerter.console.app import Console, ServiceView, static


def mount(app: web.Application, service: ServiceView) -> Console:
    """Add the console's pages and API to `app`; logs one warning when they stay closed."""
    console = Console(service)
    if console.access.mode == "closed":
        console.log.warning(
            "console_closed",
            listen=service.config.http.listen,
            reason="no http.auth: the console and API answer 401 beyond loopback; "
            "/healthz, /startedz, /readyz, /metrics stay open",
        )
    app.router.add_get("/static/console/{name}", static)
    api.add_routes(app, console)
    pages.add_routes(app, console)
    return console
