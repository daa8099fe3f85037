"""What the soak test runs against: receivers that can be taken down, `alerter run` as a process
that can be killed, a PostgreSQL cluster that can be stopped, and the config that ties them.

The receivers reuse the loopback fakes of the test suite (the Slack Web API, the webhook
collector verifying Standard Webhooks signatures, aiosmtpd) and add an outage switch: while a
receiver is down, Slack answers 500, the webhook collector 503, and the SMTP server is stopped
(connections are refused) until it starts again on the same port.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import psutil
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.channels import FakeSlack, SmtpServer, WebhookCollector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, int(runner.addresses[0][1])


# -- receivers with an outage switch ---------------------------------------------------------


@dataclass
class SoakSlack(FakeSlack):
    """The fake Slack Web API; every method answers 500 while `down`."""

    down: bool = False
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            await request.read()
            self.refused += 1
            return web.Response(status=500, text="slack is down (soak)")
        return await super().handle(request)


@dataclass
class SoakHook(WebhookCollector):
    """The webhook collector; answers 503 while `down`. `at` holds each delivery's arrival time."""

    down: bool = False
    refused: int = 0
    at: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            await request.read()
            self.refused += 1
            return web.Response(status=503)
        response = await super().handle(request)
        self.at.append(time.time())
        return response


class SoakSmtp:
    """aiosmtpd with AUTH on a fixed port; `stop()` takes it down, `start()` brings it back."""

    def __init__(self, username: str, password: str) -> None:
        self.handler = SmtpServer(port=free_port())
        self.port = self.handler.port
        self.auth = (username, password)
        self._controller: Controller | None = None
        self.down_since: float | None = None

    def _authenticate(self, srv: Any, sess: Any, env: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self.auth
        return AuthResult(success=ok, handled=False)

    async def start(self) -> None:
        controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_required=False,
            auth_require_tls=False,
        )
        for _ in range(50):  # the port may linger a moment after a stop
            try:
                await asyncio.to_thread(controller.start)
                break
            except (OSError, RuntimeError):
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"the SMTP server could not listen on 127.0.0.1:{self.port} again")
        self._controller = controller
        self.down_since = None

    async def stop(self) -> None:
        if self._controller is not None:
            await asyncio.to_thread(self._controller.stop)
            self._controller = None
            self.down_since = time.time()


@dataclass
class Receivers:
    slack: SoakSlack
    hook: SoakHook
    smtp: SoakSmtp
    runners: list[web.AppRunner]

    async def close(self) -> None:
        await self.smtp.stop()
        for runner in self.runners:
            await runner.cleanup()


async def start_receivers(slack_token: str, webhook_secret: str, smtp_user: str, smtp_password: str) -> Receivers:
    slack = SoakSlack(token=slack_token)
    slack_app = web.Application()
    slack_app.router.add_post("/api/{method}", slack.handle)
    slack_runner, slack.port = await serve(slack_app)
    hook = SoakHook(secrets=[webhook_secret])
    hook_app = web.Application()
    hook_app.router.add_route("*", "/{tail:.*}", hook.handle)
    hook_runner, hook.port = await serve(hook_app)
    smtp = SoakSmtp(smtp_user, smtp_password)
    await smtp.start()
    return Receivers(slack, hook, smtp, [slack_runner, hook_runner])


# -- the service as a process ----------------------------------------------------------------


@dataclass
class Life:
    """One run of the service process, from start to its kill or stop."""

    index: int
    pid: int
    started: float
    log: Path
    ended: float | None = None
    exit_code: int | None = None


@dataclass
class Sample:
    at: float
    life: int
    rss_mb: float
    fds: int
    threads: int


class ServiceProcess:
    """`python -m alerter run -c CONFIG` with its stderr and stdout in one log file per life."""

    def __init__(self, config: Path, port: int, env: dict[str, str], logs: Path) -> None:
        self.config, self.port, self.env, self.logs = config, port, env, logs
        self.lives: list[Life] = []
        self.samples: list[Sample] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._file: IO[bytes] | None = None
        self._ps: psutil.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 60) -> Life:
        index = len(self.lives) + 1
        log = self.logs / f"service-{index}.log"
        self._file = log.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alerter", "run", "-c", str(self.config),
            stdout=self._file, stderr=self._file, env=self.env,
        )  # fmt: skip
        life = Life(index, self._proc.pid, time.time(), log)
        self.lives.append(life)
        self._ps = psutil.Process(self._proc.pid)
        await self._wait_healthy(timeout)
        return life

    async def _wait_healthy(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                if not self.running:
                    raise RuntimeError(f"alerter run exited at start; see {self.lives[-1].log}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"alerter run did not answer /healthz within {timeout:g}s")

    async def _ended(self, code: int) -> None:
        life = self.lives[-1]
        life.ended, life.exit_code = time.time(), code
        if self._file is not None:
            self._file.close()
            self._file = None
        self._proc, self._ps = None, None

    async def kill(self) -> None:
        """SIGKILL: no shutdown at all, as when a container is OOM-killed."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGKILL)
            await self._ended(await self._proc.wait())

    async def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        if self._proc is None or not self.running:
            return None
        proc = self._proc
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            code = None
        await self._ended(proc.returncode if code is not None and proc.returncode is not None else -9)
        return code

    def sample(self) -> Sample | None:
        if self._ps is None or not self.running or time.time() - self.lives[-1].started < 3:
            return None  # not yet running Python code: nothing to measure
        try:
            with self._ps.oneshot():
                s = Sample(
                    time.time(),
                    self.lives[-1].index,
                    self._ps.memory_info().rss / 2**20,
                    self._ps.num_fds(),
                    self._ps.num_threads(),
                )
        except psutil.Error:
            return None
        if s.rss_mb == 0:  # a process that has just died (a zombie) reports no memory
            return None
        self.samples.append(s)
        return s

    async def metrics(self) -> str | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r,
            ):
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


# -- PostgreSQL stop and start ---------------------------------------------------------------


class PostgresControl:
    """Stops and starts the cluster behind a URL, when this machine runs it (a private test cluster):
    its data directory and start options are read from the server, pg_ctl runs as the directory's owner."""

    def __init__(self, data_dir: Path, options: list[str], pg_ctl: Path, owner: str | None) -> None:
        self.data_dir, self.options, self.pg_ctl, self.owner = data_dir, options, pg_ctl, owner

    @classmethod
    async def find(cls, url: str) -> tuple[PostgresControl | None, str]:
        """(control, "") or (None, why the cluster cannot be stopped from here)."""
        try:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                data_dir = Path(await conn.fetchval("SHOW data_directory"))
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as err:
            return None, f"cannot ask the server for its data directory: {err}"
        try:
            found = await asyncio.to_thread(_inspect, data_dir)
        except OSError as err:
            return None, f"the cluster is not on this machine or not readable ({err})"
        if isinstance(found, str):
            return None, found
        options, pg_ctl, owner = found
        return cls(data_dir, options, pg_ctl, owner), ""

    def _run(self, *args: str) -> None:
        cmd = [str(self.pg_ctl), "-D", str(self.data_dir), *args]
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    async def stop(self) -> None:
        await asyncio.to_thread(self._run, "-m", "fast", "-w", "stop")

    async def start(self) -> None:
        log = str(self.data_dir.parent / "server.log")
        await asyncio.to_thread(self._run, "-w", "-t", "30", "-l", log, "-o", shlex.join(self.options), "start")


def _inspect(data_dir: Path) -> tuple[list[str], Path, str | None] | str:
    """The cluster's start options (from postmaster.opts), its pg_ctl, and the user to run it as."""
    words = shlex.split((data_dir / "postmaster.opts").read_text())
    pg_ctl = Path(words[0]).with_name("pg_ctl")
    if not pg_ctl.exists():
        return f"no pg_ctl beside {words[0]}"
    uid = data_dir.stat().st_uid
    owner = pwd.getpwuid(uid).pw_name if os.geteuid() == 0 and uid != 0 else None
    options = [w for w in words[1:] if w != str(data_dir)]
    if "-D" in options:
        options.remove("-D")
    return options, pg_ctl, owner


# -- config ----------------------------------------------------------------------------------

CONFIG = """\
source:
  base_url: {sim}
  api_key: ${{SOAK_LEAP_API_KEY}}
  timeout: 10s
  max_retries: 3
poll:
  interval: {poll}
  overlap: 10m
  reconcile_interval: {reconcile}
  initial_sync: notify
state:
  url: {state}
http:
  listen: 127.0.0.1:{port}
rules: rules.yaml
operations_receiver: ops
log:
  format: json
  level: info
"""

RULES = """\
receivers:
  - name: slack
    slack:
      token: ${{SOAK_SLACK_TOKEN}}
      channel: "#soak"
      api_url: {slack}
      min_interval: 200ms
  - name: email
    email:
      to: [soak@example.com]
      from: alerter@example.com
      smtp: {{host: 127.0.0.1, port: {smtp}, username: soak, password: "${{SOAK_SMTP_PASSWORD}}"}}
  - name: hook
    webhook: {{url: "{hook}", secret: "${{SOAK_WEBHOOK_SECRET}}"}}
  - name: ops
    webhook: {{url: "{ops}", secret: "${{SOAK_WEBHOOK_SECRET}}"}}
defaults:
  group_by: [action_type]
  group_wait: {group_wait}
  group_interval: {group_interval}
  remind: {remind}
  send_resolved: true
rules:
  - name: everything
    receivers: [slack, email, hook]
"""
