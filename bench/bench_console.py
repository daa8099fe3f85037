"""Console benchmark: `/obligations` and `/api/v1/obligations` over 100,000 open obligations.

`python -m bench.bench_console [--obligations N]` fills a store (SQLite; PostgreSQL too when
ALERTER_TEST_POSTGRES_URL is set, as `make bench` does) with N open obligations over 8
regions, 10 action types and 12 programs (5% without a deadline), runs ANALYZE as a live
database's maintenance would, serves the console on 127.0.0.1 and times requests from a
loopback client (so the figure bounds the server's time from above): the first, middle and
last page (50 rows, the total counted each time), unfiltered and filtered by region and
action type, and a search by partner_reference. Each request runs 7 times; the median and
the worst count. Results go to bench/results/console.json. Target: every page <= 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from alerter.config import Config
from alerter.console.core import cursor_after
from alerter.models import Meter, Obligation
from alerter.rulefile import RuleSet
from alerter.store import open_store
from alerter.store.base import Store
from alerter.web import Health, make_app, start_server
from bench.pgstate import pg_schema

RESULTS = Path(__file__).resolve().parent / "results" / "console.json"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
REGIONS = ["CAISO", "NYISO", "ERCOT", "PJM", "MISO", "ISONE", "SPP", "SERC"]
ACTIONS = [f"ACTION_{i:02d}" for i in range(10)]
PROGRAMS = [f"PROG-{i:02d}" for i in range(12)]
RUNS = 7
TARGET_MS = 300.0


@dataclass
class BenchService:
    """What the console reads from a running service, without the poller."""

    store: Store
    config: Config
    health: Health = field(default_factory=lambda: Health(interval=timedelta(minutes=5)))
    ruleset: RuleSet = field(default_factory=RuleSet)
    leader: bool = True
    clock: Callable[[], datetime] = lambda: NOW


def obligations(n: int) -> list[Obligation]:
    out = []
    for i in range(n):
        meter = Meter(
            meter_id=f"meter-{i:07d}",
            partner_reference=f"site-{i:07d}",
            transmission_region=REGIONS[i % len(REGIONS)],
            tags=("vip",) if i % 50 == 0 else (),
        )
        deadline = None if i % 20 == 0 else NOW + timedelta(hours=(i * 7919) % (24 * 120) - 24 * 10)
        out.append(
            Obligation(
                meter_id=meter.meter_id,
                program_identifier=PROGRAMS[i % len(PROGRAMS)],
                delivery_period=f"{PROGRAMS[i % len(PROGRAMS)]}_2027_JAN",
                action_type=ACTIONS[(i // 3) % len(ACTIONS)],
                action_code=f"CODE_{i % 4}",
                action_description="Do the thing.",
                deadline=deadline,
                meter=meter,
                opened_at=NOW - timedelta(days=3),
                first_seen=NOW - timedelta(days=3),
                last_seen=NOW,
            )
        )
    return out


def _order(o: Obligation) -> tuple[bool, datetime, str]:
    return (o.deadline is None, o.deadline or NOW, o.key_id)


async def fill(store: Store, rows: list[Obligation]) -> None:
    for start in range(0, len(rows), 5000):
        await store.commit_page(rows[start : start + 5000], [])


async def analyze(url: str) -> None:
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("ANALYZE")
        return
    import asyncpg

    base, _, query = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": query})
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def cursor_before(rows: list[Obligation], index: int) -> str | None:
    """The cursor whose page starts at `rows[index]` (rows in listing order)."""
    if index <= 0:
        return None
    o = rows[index - 1]
    return cursor_after(o).encode()


async def timed(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> dict[str, Any]:
    times = []
    total = None
    for _ in range(RUNS):
        start = time.perf_counter()
        async with session.get(url, params=params) as resp:
            body = await resp.read()
            assert resp.status == 200, (url, resp.status, body[:300])
        times.append((time.perf_counter() - start) * 1000)
        if url.endswith("/api/v1/obligations"):
            total = json.loads(body)["total"]
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "total": total}


async def measure(url: str, rows: list[Obligation]) -> dict[str, Any]:
    store = open_store(url)
    await store.open()
    try:
        store.set_fence(await store.try_acquire_leadership("bench"))
        started = time.perf_counter()
        await fill(store, rows)
        fill_s = time.perf_counter() - started
    finally:
        await store.close()
    await analyze(url)
    # opened again, as a service restarted over this state: a connection plans with the
    # statistics it read at open (or gathered itself), not those another one gathered later
    store = open_store(url)
    await store.open()
    try:
        store.set_fence(await store.try_acquire_leadership("bench"))
        config = Config.model_validate({"source": {"api_key": "x"}, "state": {"url": url}})
        service = BenchService(store, config)
        app = make_app(service.health, _metrics(), lambda: NOW, console=service)
        runner, port = await start_server(app, "127.0.0.1:0")
        try:
            return {"fill_s": round(fill_s, 1), "requests": await _requests(f"http://127.0.0.1:{port}", rows)}
        finally:
            await runner.cleanup()
    finally:
        await store.close()


def _metrics() -> Any:
    from alerter.metrics import Metrics

    return Metrics()


async def _requests(base: str, rows: list[Obligation]) -> dict[str, dict[str, Any]]:
    listing = sorted(rows, key=_order)
    caiso = [o for o in listing if o.meter.transmission_region == "CAISO" and o.action_type == ACTIONS[1]]
    cases: dict[str, tuple[dict[str, str], list[Obligation]]] = {
        "all": ({}, listing),
        "region+action_type": ({"transmission_region": "CAISO", "action_type": ACTIONS[1]}, caiso),
    }
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        for path in ("/api/v1/obligations", "/obligations"):
            for name, (params, selected) in cases.items():
                for where, index in (("first", 0), ("middle", len(selected) // 2), ("last", len(selected) - 50)):
                    q = dict(params)
                    cursor = cursor_before(selected, index)
                    if cursor:
                        q["cursor"] = cursor
                    out[f"{path} {name} {where} page"] = await timed(session, base + path, q)
            out[f"{path} search partner_reference"] = await timed(session, base + path, {"q": "site-0054321"})
    return out


async def run(n: int) -> dict[str, Any]:
    rows = obligations(n)
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        backends["sqlite"] = await measure(f"sqlite:///{tmp}/state.db", rows)
    pg = os.environ.get("ALERTER_TEST_POSTGRES_URL")
    if pg:
        async with pg_schema(pg, "bench") as state:
            backends["postgres"] = await measure(state, rows)
    worst = max(r["median_ms"] for b in backends.values() for r in b["requests"].values())
    return {
        "obligations": n,
        "backends": backends,
        "worst_median_ms": worst,
        "target_ms": TARGET_MS,
        "runs": RUNS,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--obligations", type=int, default=100_000)
    args = parser.parse_args()
    result = asyncio.run(run(args.obligations))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
