"""Real servers on loopback for every channel: a fake Slack Web API, a webhook collector, an SMTP server.

Each is an async context manager yielding an object that records what it received and can be
scripted to fail: `async with fake_slack() as slack`, `async with webhook_collector(secrets=[...])
as hook`, `async with smtp_server(auth=("user", "pw")) as smtp`.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import socket
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port


# -- Slack -----------------------------------------------------------------------------------


@dataclass
class SlackCall:
    method: str
    args: dict[str, Any]
    at: float
    token: str


@dataclass
class FakeSlack:
    """chat.postMessage, chat.update and conversations.history, recorded, with scripted faults."""

    token: str = "xoxb-test-token"
    port: int = 0
    clock: Callable[[], float] = time.monotonic
    """What stamps each call's `at` (a pacing test gives its fake clock)."""
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    faults: deque[tuple[str, str, float]] = field(default_factory=deque)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def fail(
        self, fault: str, method: str = "chat.postMessage", times: int = 1, retry_after: float = 1, after: int = 0
    ) -> None:
        """fault: `ratelimited` (429 + Retry-After), `500`, or any Slack error code (`invalid_auth`, ...);
        `after`: let that many calls of `method` succeed first."""
        self.faults.extend([(method, "ok", 0)] * after + [(method, fault, retry_after)] * times)

    def posted(self, channel: str | None = None) -> list[SlackCall]:
        return [
            c
            for c in self.calls
            if c.method == "chat.postMessage" and (channel is None or c.args["channel"] == channel)
        ]

    def updates(self) -> list[SlackCall]:
        return [c for c in self.calls if c.method == "chat.update"]

    @staticmethod
    def channel_id(name: str) -> str:
        return name if name.startswith("C") else "C" + name.lstrip("#").upper().replace("-", "")[:10]

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await request.json() if request.can_read_body else {}
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.faults and self.faults[0][0] == method and self.faults[0][1] == "ok":
            self.faults.popleft()
        elif self.faults and self.faults[0][0] == method:
            _, fault, retry_after = self.faults.popleft()
            self.calls.append(SlackCall(f"{method}!{fault}", args, self.clock(), token))
            if fault == "ratelimited":
                body = {"ok": False, "error": "ratelimited"}
                return web.json_response(body, status=429, headers={"Retry-After": f"{retry_after:g}"})
            if fault == "500":
                return web.Response(status=500, text="upstream exploded")
            return web.json_response({"ok": False, "error": fault})
        self.calls.append(SlackCall(method, args, self.clock(), token))
        if token != self.token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "chat.postMessage":
            channel = self.channel_id(args["channel"])
            ts = f"{1700000000 + next(self._ts)}.000100"
            self.messages[(channel, ts)] = {"ts": ts, **args, "channel": channel}
            return web.json_response({"ok": True, "channel": channel, "ts": ts})
        if method == "chat.update":
            key = (args["channel"], args["ts"])
            if key not in self.messages:
                return web.json_response({"ok": False, "error": "message_not_found"})
            self.messages[key].update(text=args.get("text", ""), blocks=args.get("blocks", []))
            return web.json_response({"ok": True, "channel": args["channel"], "ts": args["ts"]})
        if method == "conversations.history":
            found = self.messages.get((args["channel"], args["latest"]))
            return web.json_response({"ok": True, "messages": [found] if found else []})
        return web.json_response({"ok": False, "error": "unknown_method"})


@asynccontextmanager
async def fake_slack(token: str = "xoxb-test-token") -> AsyncIterator[FakeSlack]:
    slack = FakeSlack(token=token)
    app = web.Application()
    app.router.add_post("/api/{method}", slack.handle)
    runner, slack.port = await _serve(app)
    try:
        yield slack
    finally:
        await runner.cleanup()


# -- Webhooks --------------------------------------------------------------------------------


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    verified: bool
    status: int
    path: str


@dataclass
class WebhookCollector:
    """Verifies Standard Webhooks signatures with the reference library; scripted answers."""

    secrets: list[str]
    port: int = 0
    received: list[Received] = field(default_factory=list)
    script: deque[int | str] = field(default_factory=deque)
    """Answers to give, in order: a status code or `timeout`; 200 when empty."""
    retry_after: str | None = None
    stall: float = 2.0

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    def verify(self, raw: str, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(raw, headers)
                return True
            except WebhookVerificationError:
                continue
        return not self.secrets

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = self.script.popleft() if self.script else 200
        status = 599 if answer == "timeout" else int(answer)
        verified = self.verify(raw, headers)
        self.received.append(Received(_json(raw), headers, verified, status, request.path))
        if answer == "timeout":
            await asyncio.sleep(self.stall)
            return web.Response(status=200)
        extra = {"Retry-After": self.retry_after} if self.retry_after and status == 429 else {}
        if 300 <= status < 400:
            extra["Location"] = self.url("/elsewhere")
        return web.Response(status=status, headers=extra)


def _json(raw: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@asynccontextmanager
async def webhook_collector(secrets: list[str] | None = None) -> AsyncIterator[WebhookCollector]:
    hook = WebhookCollector(secrets=list(secrets or []))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook.handle)
    runner, hook.port = await _serve(app)
    try:
        yield hook
    finally:
        await runner.cleanup()


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class SmtpServer:
    """aiosmtpd on 127.0.0.1; `script` holds replies for the next DATA commands (e.g. `451 4.3.0 busy`)."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    script: deque[str] = field(default_factory=deque)
    cert_file: str | None = None
    refuse: dict[str, deque[str]] = field(default_factory=dict)
    """Replies to the next RCPT TO of an address (e.g. `452 4.2.2 mailbox full`); others are taken."""

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        replies = self.refuse.get(address)
        if replies:
            return replies.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.script:
            return self.script.popleft()
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append(envelope)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 made with the openssl CLI: (cert file, key file)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@asynccontextmanager
async def smtp_server(
    auth: tuple[str, str] | None = None, starttls_dir: Path | None = None, require_starttls: bool = True
) -> AsyncIterator[SmtpServer]:
    """With `auth`, AUTH PLAIN/LOGIN is checked; with `starttls_dir`, STARTTLS is offered (self-signed),
    and required unless `require_starttls` is false."""
    import ssl

    server = SmtpServer(port=_free_port())
    kwargs: dict[str, Any] = {}
    if auth is not None:

        def authenticator(srv: Any, sess: Any, env: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == auth
            return AuthResult(success=ok, handled=False)

        # AUTH is offered on plain connections; required only with STARTTLS (aiosmtpd warns otherwise)
        tls = starttls_dir is not None
        kwargs |= {"authenticator": authenticator, "auth_required": tls, "auth_require_tls": tls}
    if starttls_dir is not None:
        cert, key = self_signed_cert(starttls_dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        kwargs |= {"tls_context": ctx, "require_starttls": require_starttls}
        server.cert_file = cert
    controller = Controller(server, hostname=server.host, port=server.port, **kwargs)
    await asyncio.to_thread(controller.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(controller.stop)
