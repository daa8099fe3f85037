"""The console's HTTP side: mounts the pages and `/api/v1/` on the service's aiohttp app.

Every console route goes through `guard`: it finds who is asking (see auth.py), answers 401
without a credential and 403 for a mutation without its CSRF token (or in read-only mode),
and sets the security headers (a Content-Security-Policy without inline script,
X-Frame-Options DENY, nosniff, no referrer across origins). `/healthz`, `/readyz` and
`/metrics` are not console routes and stay open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jinja2
import orjson
import structlog
from aiohttp import web

from alerter.console.auth import CSRF_COOKIE, SESSION_TTL, Access, Identity, csrf_ok
from alerter.durations import format_duration
from alerter.reminders import RemindPolicy
from alerter.store.console import ConsoleStore

if TYPE_CHECKING:
    from alerter.config import Config
    from alerter.rulefile import RuleSet
    from alerter.store.base import Store

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC = ("console.css", "console.js")
SESSION_COOKIE_MAX_AGE = int(SESSION_TTL.total_seconds())
Kind = Literal["page", "api"]
Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


class ServiceView(Protocol):
    """What the console reads from the running service (a Service satisfies it)."""

    store: Store
    config: Config
    ruleset: RuleSet
    health: Any
    leader: bool

    @property
    def clock(self) -> Callable[[], datetime]: ...


class Console:
    """The console's shared state on one app: the service, its store queries, access, templates."""

    def __init__(self, service: ServiceView) -> None:
        self.service = service
        self.store = ConsoleStore(service.store)
        self._listen = service.config.http.listen  # the socket bound at start: a reload cannot move it
        self._access = Access(service.config.http.auth, self._listen, self.store)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("alerter.console", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["duration"] = format_duration
        self.env.filters["remind"] = _remind
        self.log = structlog.get_logger("alerter.console")

    @property
    def access(self) -> Access:
        """Who may do what, under the config in force: a reload that revokes a token or a user
        (or changes a password) applies at the next request."""
        auth = self.service.config.http.auth
        if self._access.auth is not auth:
            self._access = Access(auth, self._listen, self.store)
        return self._access

    def now(self) -> datetime:
        return self.service.clock()

    def render(
        self, request: web.Request, ident: Identity | None, template: str, status: int = 200, **ctx: Any
    ) -> web.Response:
        ctx.setdefault("csrf", ident.csrf if ident else "")
        body = self.env.get_template(template).render(
            ident=ident,
            path=request.path,
            mode=self.access.mode,
            **ctx,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def guard(
        self, kind: Kind, handler: Handler, *, write: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            resp = await self._guarded(kind, handler, write, request)
            secure(resp)
            return resp

        return guarded

    async def _guarded(self, kind: Kind, handler: Handler, write: bool, request: web.Request) -> web.StreamResponse:
        if self.access.mode == "closed":
            msg = "the console needs http.auth when the service listens beyond loopback"
            return self.error(request, kind, 401, msg)
        headers = {k.lower(): v for k, v in request.headers.items()}
        ident = await self.access.identify(headers, dict(request.cookies), self.now())
        if ident is None:
            if kind == "api":
                resp = json_error(401, "missing or wrong credential")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="alerter"'
                return resp
            return await self.login_page(request, status=401)
        if request.method not in ("GET", "HEAD"):
            if write and not ident.can_write:
                return self.error(request, kind, 403, "read-only: configure http.auth to change anything")
            # a forged request can only change something through a write (the API's other POST,
            # a silence preview, reads): the pages' forms carry the token whatever they do
            if ident.via != "token" and (write or kind == "page"):
                given = request.headers.get("X-CSRF-Token")
                if given is None and kind == "page":
                    form = await request.post()
                    value = form.get("csrf")
                    given = value if isinstance(value, str) else None
                if not csrf_ok(ident.csrf, given):
                    return self.error(request, kind, 403, "missing or wrong CSRF token: reload the page and retry")
        try:
            out = await handler(request, ident)
        except web.HTTPException as exc:
            if exc.status >= 400 and kind == "api":
                return json_error(exc.status, exc.text or exc.reason)
            raise
        if ident.new_csrf_cookie and ident.csrf:
            set_cookie(request, out, CSRF_COOKIE, ident.csrf, http_only=True)
        return out

    def error(self, request: web.Request, kind: Kind, status: int, message: str) -> web.Response:
        if kind == "api":
            return json_error(status, message)
        return self.render(request, None, "error.html", status=status, message=message, title=str(status))

    async def login_page(self, request: web.Request, status: int = 200, problem: str = "") -> web.Response:
        import secrets

        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = len(token) < 20
        if fresh:
            token = secrets.token_urlsafe(24)
        nxt = request.query.get("next") or (request.path_qs if request.method == "GET" else "/")
        resp = self.render(
            request, None, "login.html", status=status, problem=problem, next=safe_next(nxt), csrf=token, title="Log in"
        )
        if fresh:
            set_cookie(request, resp, CSRF_COOKIE, token, http_only=True)
        secure(resp)
        return resp


def safe_next(value: str) -> str:
    """A local path to go back to after logging in (never another site): a path alone, of
    printable ASCII without spaces (a browser drops a tab or a newline between the two slashes of
    `/<tab>/evil.example`, and follows `//evil.example` to that site)."""
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or value.startswith("/login")
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        return "/"
    return value


def secure(resp: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)


def is_https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() == "https"


def set_cookie(
    request: web.Request,
    resp: web.StreamResponse,
    name: str,
    value: str,
    *,
    http_only: bool,
    max_age: int | None = None,
) -> None:
    resp.set_cookie(
        name, value, path="/", httponly=http_only, samesite="Lax", secure=is_https(request), max_age=max_age
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status, content_type="application/json"
    )


def json_error(status: int, message: str) -> web.Response:
    resp = json_response({"error": message}, status)
    secure(resp)
    return resp


def _remind(policy: RemindPolicy) -> str:
    """A rule's reminders as its file writes them: `every 24h, before 7d/2d/1d, overdue`."""
    parts = [f"every {format_duration(policy.every)}"] if policy.every else []
    if policy.before_deadline:
        parts.append("before " + "/".join(format_duration(t) for t in policy.before_deadline))
    if policy.overdue:
        parts.append("overdue")
    return ", ".join(parts) or "none"


def _when(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert isinstance(value, datetime)
    return value.strftime("%Y-%m-%d %H:%M UTC")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    data = resources.files("alerter.console").joinpath("static").joinpath(name).read_bytes()
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    resp = web.Response(body=data, content_type=kind, charset="utf-8")
    secure(resp)
    resp.headers["Cache-Control"] = "max-age=300"
    return resp
