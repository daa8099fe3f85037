"""`alerter run` stopped (SIGTERM) when something it waits for does not answer: a poll slower
than the grace, a state store that accepts connections and answers nothing. The stop takes at
most the grace and the close (`alerter.runtime`), within the 30 s the deploy files allow, and
says what it gave up, without an error's traceback."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from alerter.runtime import CLOSE_SECONDS, GRACE_SECONDS
from alerter.sim import Portfolio, SimServer
from tests.support.proc import Service
from tests.support.service import API_KEY, config_yaml, rules_yaml, write_config

pytestmark = pytest.mark.timeout(120)
LIMIT = GRACE_SECONDS + CLOSE_SECONDS + 3  # and the interpreter's own exit


async def test_a_poll_slower_than_the_grace_is_abandoned_and_said_once(tmp_path: Path) -> None:
    async with SimServer(Portfolio(20, action_rate=0.0, seed=9), api_key=API_KEY) as sim:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
            rules_yaml("http://127.0.0.1:1/hook"),
        )
        svc = await Service.start(str(cfg))
        await svc.wait_for_log("cycle_done")
        sim.faults.add("slow", times=1000, delay=GRACE_SECONDS + 8)  # every request hangs past the grace
        await asyncio.sleep(2.5)  # the next poll (1 s apart) is waiting for its answer
        started = time.monotonic()
        code = await svc.stop(timeout=LIMIT)
        took = time.monotonic() - started
    assert code == 0 and GRACE_SECONDS <= took < LIMIT, (code, took)
    abandoned = [e for e in svc.logs if e.get("event") == "job_abandoned_at_shutdown"]
    assert "poll" in {e["job"] for e in abandoned}, svc.logs[-8:]  # and the routing step waiting for it
    assert not [e for e in svc.logs if e.get("level") in ("error", "critical")], svc.logs[-8:]
    assert svc.logs[-1]["event"] == "shutdown_complete"


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port that takes connections and never answers (a server stopped, not gone)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_stop_while_the_state_store_does_not_answer_ends_within_the_grace(tmp_path: Path) -> None:
    """PostgreSQL accepting connections but answering nothing: the service, opening its store,
    stops on SIGTERM after the grace, where it waited for the driver's connect timeout (60 s)
    and then failed."""
    async with silent_server() as port:
        cfg = write_config(
            tmp_path,
            config_yaml("http://127.0.0.1:1", f"postgresql://alerter@127.0.0.1:{port}/db", log_format="json"),
            rules_yaml("http://127.0.0.1:1/hook"),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alerter", "run", "-c", str(cfg), stderr=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(3)  # imported, listening, opening the store
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            async with asyncio.timeout(LIMIT):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
        took = time.monotonic() - started
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
    assert code == 0 and took < LIMIT, (code, took, logs[-2000:])
    assert '"stopped_while_starting"' in logs and "Traceback" not in logs, logs[-2000:]
