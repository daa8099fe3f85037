"""What an operator sees of a running `alerter run`: the readiness gauge without anyone asking
`/readyz`, a SIGTERM that lets the poll in flight finish, a failing state store counted and
named, a SIGHUP while it starts, a state command pointed at no state.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerter.sim import Portfolio, SimServer
from tests.support.proc import Service, alerter
from tests.support.service import API_KEY, config_yaml, load, rules_yaml, running, write_config

pytestmark = pytest.mark.timeout(120)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return None


@asynccontextmanager
async def _serving(tmp_path: Path, seed: int) -> AsyncIterator[tuple[SimServer, Service]]:
    """`alerter run` on a 1 s poll against the simulator, after its first cycle; stopped with 0."""
    async with SimServer(Portfolio(20, action_rate=0.0, seed=seed), api_key=API_KEY) as sim:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
            rules_yaml("http://127.0.0.1:1/hook"),
        )
        svc = await Service.start(str(cfg))
        try:
            await svc.wait_for_log("cycle_done")
            yield sim, svc
        finally:
            assert await svc.stop() == 0


async def test_the_ready_gauge_follows_readiness_without_readyz_being_asked(tmp_path: Path) -> None:
    async with _serving(tmp_path, 1) as (sim, svc):
        assert _metric((await svc.get("/metrics"))[1], "alerter_ready") == 1.0
        sim.faults.add("503", times=1000)  # Leap down: not ready after two intervals
        for _ in range(100):
            if _metric((await svc.get("/metrics"))[1], "alerter_ready") == 0.0:
                break
            await asyncio.sleep(0.1)
        assert _metric((await svc.get("/metrics"))[1], "alerter_ready") == 0.0


async def test_a_cycle_slower_than_two_intervals_is_ready_once_done(tmp_path: Path) -> None:
    """A poll of 3 s on a 1 s interval: it succeeded just now, not 3 s ago."""
    async with _serving(tmp_path, 4) as (sim, svc):
        done = sum(e.get("event") == "cycle_done" for e in svc.logs)
        sim.faults.add("slow", times=1, delay=3.0)
        await svc.wait_for_log("cycle_done", count=done + 1)
        status, body = await svc.get("/readyz")
        assert status == 200, body
        last = _metric((await svc.get("/metrics"))[1], "alerter_last_successful_cycle_timestamp_seconds")
        assert last is not None and time.time() - last < 2


async def test_sigterm_lets_the_poll_in_flight_finish(tmp_path: Path) -> None:
    async with _serving(tmp_path, 2) as (sim, svc):
        done = sum(e.get("event") == "cycle_done" for e in svc.logs)
        sim.faults.add("slow", times=1, delay=2.0)
        before = len(sim.requests)
        for _ in range(100):  # the next poll's request is being answered, slowly
            if len(sim.requests) > before:
                break
            await asyncio.sleep(0.02)
        assert await svc.stop() == 0
    assert sum(e.get("event") == "cycle_done" for e in svc.logs) == done + 1, svc.logs[-8:]
    assert not any("CancelledError" in str(e) for e in svc.logs), [e for e in svc.logs if "Cancelled" in str(e)]


async def test_a_failing_state_store_is_counted_and_named_by_readyz(tmp_path: Path) -> None:
    async with _serving(tmp_path, 3) as (_, svc):
        with sqlite3.connect(tmp_path / "s.db") as c:  # from now on the store refuses every cycle's writes
            for op in ("INSERT", "UPDATE"):
                c.execute(
                    f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON meta "
                    "BEGIN SELECT RAISE(ABORT, 'disk is full (as a test says)'); END"
                )
        name = 'alerter_cycles_total{kind="unknown",outcome="store_error"}'
        for _ in range(100):
            status, body = await svc.get("/readyz")
            if status == 503 and (_metric((await svc.get("/metrics"))[1], name) or 0) >= 1:
                break
            await asyncio.sleep(0.1)
        assert status == 503, body
        assert "state store" in orjson.loads(body)["reason"] and "disk is full" in orjson.loads(body)["reason"]


async def test_a_state_file_removed_under_a_running_service_fails_its_writes_and_says_so(tmp_path: Path) -> None:
    """The state's directory deleted (or the file replaced) while the service runs: it would go
    on writing to a file nobody reads again, and another process could start on the path."""
    async with _serving(tmp_path, 6) as (_, svc):
        moved = tmp_path / "elsewhere"
        moved.mkdir()
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            if (tmp_path / name).exists():
                (tmp_path / name).rename(moved / name)
        for _ in range(100):
            status, body = await svc.get("/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503, body
        assert "was removed or replaced while open" in orjson.loads(body)["reason"], body
        assert _metric((await svc.get("/metrics"))[1], 'alerter_cycles_total{kind="unknown",outcome="store_error"}')


@asynccontextmanager
async def starting(tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`alerter run` (JSON logs on stderr, a 1 h poll) just launched against the simulator."""
    async with SimServer(Portfolio(20, action_rate=0.0, seed=4), api_key=API_KEY) as sim:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1h"),
            rules_yaml("http://127.0.0.1:1/hook"),
        )
        yield await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alerter", "run", "-c", str(cfg), stderr=asyncio.subprocess.PIPE
        )


async def test_sigterm_while_the_service_starts_stops_it_cleanly(tmp_path: Path) -> None:
    """A SIGTERM during the imports (a rollout replacing a pod just started): exit 0 once the
    service can stop, where SIGTERM's default action ended it (143) without a word."""
    async with starting(tmp_path) as proc:
        await asyncio.sleep(0.25)  # importing: the service's own handlers are not in place yet
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
    assert code == 0, (code, logs[-1500:])
    assert '"shutdown_complete"' in logs or '"stopped_while_starting"' in logs, logs[-1500:]


async def test_sighup_while_the_service_starts_does_not_kill_it(tmp_path: Path) -> None:
    async with starting(tmp_path) as proc:
        assert proc.stderr is not None
        await asyncio.sleep(0.3)  # importing, opening the store
        proc.send_signal(signal.SIGHUP)
        started = False
        try:
            async with asyncio.timeout(30):
                async for line in proc.stderr:
                    if b'"service_started"' in line:
                        started = True
                        break
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
        assert started and code == 0, code


async def test_a_state_command_pointed_at_no_state_fails_and_makes_none(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/typo.db"), rules_yaml("http://127.0.0.1:1/h")
    )
    result = await alerter("silence", "add", "-c", str(cfg), "action_type=IS_AUTHORIZED", "--reason", "x")
    assert result.code == 2 and result.stdout == ""  # a config naming no state: as a bad config
    assert result.stderr.strip().splitlines() == [
        f"alerter: no state file at {tmp_path}/typo.db: check state.url (a relative path is read from the "
        "working directory) or start `alerter run` (or `alerter once`) first"
    ], result.stderr
    assert not (tmp_path / "typo.db").exists()


async def test_a_scrape_during_the_gauges_refresh_sees_the_open_obligations(tmp_path: Path) -> None:
    async with SimServer(Portfolio(20, action_rate=0.5, seed=5), api_key=API_KEY) as sim:
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml("http://x/h"))
        async with running(load(cfg)) as svc:
            await svc.run_cycle(flush_all=True)
            await svc.refresh_gauges()
            series = [line for line in svc.metrics.render().decode().splitlines() if "open_obligations{" in line]
            assert series
            counted = svc.store.count_open
            asked, answer = asyncio.Event(), asyncio.Event()

            async def slow() -> Any:  # the count waits behind a poll's commit
                asked.set()
                await answer.wait()
                return await counted()

            svc.store.count_open = slow  # type: ignore[method-assign]
            refresh = asyncio.create_task(svc.refresh_gauges())
            await asyncio.wait_for(asked.wait(), 5)
            during = [line for line in svc.metrics.render().decode().splitlines() if "open_obligations{" in line]
            answer.set()
            await refresh
    assert during == series


async def test_a_leader_that_lost_its_lease_says_so_before_its_next_poll(tmp_path: Path) -> None:
    import asyncpg

    from alerter.store.postgres import PostgresStore
    from tests.support.service import state_url

    async with (
        SimServer(Portfolio(10, action_rate=0.0, seed=6), api_key=API_KEY) as sim,
        state_url("postgres", tmp_path) as url,
    ):
        cfg = write_config(tmp_path, config_yaml(sim.url, url, interval="5m"), rules_yaml("http://x/h"))
        async with running(load(cfg)) as svc:
            await svc.run_cycle(flush_all=True)
            store = svc.store
            assert svc.leader and isinstance(store, PostgresStore) and store._leader_conn is not None
            admin = await asyncpg.connect(store._dsn)
            try:  # its lock session ends (a network cut): another replica may lead now
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", store._leader_conn.get_server_pid())
            finally:
                await admin.close()
            async with svc._step:  # a poll under way (it holds the step for as long as it runs)
                await asyncio.wait_for(svc.follow_step(), 5)  # every 15 s, the next poll up to 5 min away
            assert not svc.leader and not svc.health.leader
            assert _metric(svc.metrics.render().decode(), "alerter_leader") == 0.0


async def test_a_state_store_out_of_reach_is_counted_and_named_though_the_election_is_what_fails(
    tmp_path: Path,
) -> None:
    from alerter.errors import StoreError

    async with SimServer(Portfolio(10, action_rate=0.0, seed=7), api_key=API_KEY) as sim:
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml("http://x/h"))
        async with running(load(cfg)) as svc:
            await svc.run_cycle(flush_all=True)

            async def unreachable(owner: str) -> int | None:
                raise StoreError("state store postgresql://db/alerter: connection refused")

            svc.leader = False  # deposed: the next cycle elects first
            svc.store.try_acquire_leadership = unreachable  # type: ignore[method-assign]
            with pytest.raises(StoreError):
                await svc.run_cycle(flush_all=True)
            assert svc.health.last_error == "state store postgresql://db/alerter: connection refused"
            name = 'alerter_cycles_total{kind="unknown",outcome="store_error"}'
            assert _metric(svc.metrics.render().decode(), name) == 1.0
