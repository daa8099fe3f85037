"""Run `alerter` as a real process, the way users and their scripts meet it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def alerter(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Result:
    """`python -m alerter ARGS` to completion."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alerter",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class Service:
    """`alerter run` in the background; `port` is read from its `service_started` log line."""

    proc: asyncio.subprocess.Process
    port: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: str, *, env: dict[str, str] | None = None, timeout: float = 30) -> Service:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alerter",
            "run",
            "-c",
            config,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        svc = cls(proc)
        svc._reader = asyncio.create_task(svc._read())
        await svc.wait_for_log("service_started", timeout)
        started = next(e for e in svc.logs if e.get("event") == "service_started")
        svc.port = int(str(started["listen"]).rpartition(":")[2])
        return svc

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode().strip()
            try:
                self.logs.append(json.loads(text))
            except ValueError:
                self.logs.append({"event": "raw", "text": text})

    async def wait_for_log(self, event: str, timeout: float = 30, count: int = 1) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            found = [e for e in self.logs if e.get("event") == event]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event!r} log line (count {count}); logs: {self.logs[-10:]}")

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}{path}") as r:
            return r.status, await r.text()

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    def text(self) -> str:
        return "\n".join(json.dumps(e) for e in self.logs)
