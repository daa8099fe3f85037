"""Cost benchmark: a whole `alerter once` process against the simulator, every meter (or 5 %)
carrying partner actions, delivering to a local webhook collector.

`python -m bench.bench_cost [--quick]` measures, each in a fresh process (peak RSS from
`wait4`, wall time from start to exit), `RUNS` times (the run with the median wall time is
reported, with every run's time):
- `digest` at 10,000 and 100,000 meters, all with actions (`initial_sync: digest`);
- `notify` at 20,000 and 100,000 meters, all with actions, `group_by: [action_type]`;
- `digest` at 1,000,000 meters, 5 % with actions;
- `silent` at 200,000 meters, all with actions, beside the bare fetch+decode loop on the
  same pages in the same run (bench.bench_cycle's `fetch` worker);
and the SQLite file's bytes per open obligation. Beside a PostgreSQL server
(ALERTER_TEST_POSTGRES_URL set, as `make bench` does), `notify` at 100,000 meters also runs with
its state there, in a schema of its own (`PG_SHAPES`). Results go to bench/results/cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

import alerter
from bench.bench_cycle import child
from bench.bench_source import API_KEY, Simulator
from bench.pgstate import pg_schema

RESULTS = Path(__file__).resolve().parent / "results" / "cost.json"


class Collector:
    """A webhook sink on loopback: counts requests, events and the largest body."""

    def __init__(self) -> None:
        self.requests = self.events = self.largest = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        self.largest = max(self.largest, len(body))
        self.events += len(json.loads(body)["data"]["events"])
        return web.Response()

    async def __aenter__(self) -> Collector:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def write_config(tmp: Path, sim_url: str, hook_url: str, mode: str, state: str = "") -> Path:
    (tmp / "rules.yaml").write_text(
        f"receivers:\n  - name: sink\n    webhook: {{url: {hook_url}}}\n"
        "rules:\n  - {name: all, group_by: [action_type], receivers: [sink]}\n"
    )
    path = tmp / f"config-{mode}.yaml"
    path.write_text(
        f"source: {{base_url: {sim_url}, api_key: {API_KEY}}}\npoll: {{initial_sync: {mode}}}\n"
        f"state: {{url: '{state or f'sqlite:///{tmp}/state-{mode}.db'}'}}\nrules: rules.yaml\n"
        "log: {format: json, level: warning}\n"
    )
    return path


def run_once(config: Path) -> dict[str, Any]:
    """`alerter once` in a child process, its own peak RSS (wait4) and wall time."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alerter", "once", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "exit": proc.returncode,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def store_size(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        open_ = c.execute("SELECT COUNT(*) FROM obligations WHERE status = 'open'").fetchone()[0]
        payload = c.execute("SELECT AVG(LENGTH(payload)) FROM events").fetchone()[0]
    size = db.stat().st_size
    return {
        "obligations": open_,
        "bytes": size,
        "bytes_per_obligation": round(size / max(1, open_)),
        "payload_bytes": round(payload or 0),  # an event's stored payload, on average
    }


def compiled() -> None:
    """The alerter's modules compiled to bytecode once, as an installed package's are (an
    editable install under PYTHONDONTWRITEBYTECODE would compile them in every process)."""
    compileall.compile_dir(Path(alerter.__file__).parent, quiet=1)


async def one(meters: int, rate: float, mode: str, fetch_too: bool = False, postgres: str = "") -> dict[str, Any]:
    """One run; with `postgres` (a server's URL), the state is kept there, in a fresh schema."""
    compiled()
    with tempfile.TemporaryDirectory(prefix="alerter-bench-") as tmp:
        async with (
            Simulator(meters, action_rate=rate) as sim,
            Collector() as hook,
            pg_schema(postgres, "bench_cost") as state,
        ):
            config = write_config(Path(tmp), sim.url, hook.url, mode, state)
            out: dict[str, Any] = {"meters": meters, "action_rate": rate, "mode": mode}
            out["store"] = "postgres" if state else "sqlite"
            if fetch_too:
                out["fetch"] = await child("fetch", sim.url, "")
            out |= await asyncio.get_running_loop().run_in_executor(None, run_once, config)
            out |= await pg_size(state) if state else store_size(Path(tmp) / f"state-{mode}.db")
            out["webhooks"], out["events_sent"], out["largest_body"] = hook.requests, hook.events, hook.largest
            if fetch_too:
                out["records_per_s"] = round(meters / out["seconds"])
                out["ratio_to_fetch"] = round(out["records_per_s"] / out["fetch"]["records_per_s"], 2)
            return out


async def pg_size(state: str) -> dict[str, Any]:
    """Open obligations and the bytes of the schema's tables (with their indexes and TOAST)."""
    server, _, schema = state.partition("?schema=")
    conn = await asyncpg.connect(server)
    try:
        open_ = await conn.fetchval(f"SELECT COUNT(*) FROM \"{schema}\".obligations WHERE status = 'open'")
        payload = await conn.fetchval(f'SELECT AVG(octet_length(payload)) FROM "{schema}".events')
        size = await conn.fetchval(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
    finally:
        await conn.close()
    return {
        "obligations": open_,
        "bytes": size,
        "bytes_per_obligation": round(size / max(1, open_)),
        "payload_bytes": round(payload or 0),
    }


SHAPES = (
    (10_000, 1.0, "digest"),
    (100_000, 1.0, "digest"),
    (20_000, 1.0, "notify"),
    (100_000, 1.0, "notify"),
    (1_000_000, 0.05, "digest"),
    (200_000, 1.0, "silent"),
)


PG_SHAPES = ((100_000, 1.0, "notify"),)
"""Run with the state on PostgreSQL too, when a server is at hand (ALERTER_TEST_POSTGRES_URL)."""


RUNS = 3
"""Each shape runs this many times; its figures are those of the run with the median wall time
(this machine's speed drifts by 10-30 % within minutes), its peak RSS the highest of all."""


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    chosen = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
    chosen["runs_seconds"] = [r["seconds"] for r in runs]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return chosen


def run(
    shapes: tuple[tuple[int, float, str], ...] = SHAPES,
    runs: int = RUNS,
    pg_shapes: tuple[tuple[int, float, str], ...] = PG_SHAPES,
) -> list[dict[str, Any]]:
    postgres = os.environ.get("ALERTER_TEST_POSTGRES_URL", "")
    todo = [(shape, "") for shape in shapes] + ([(shape, postgres) for shape in pg_shapes] if postgres else [])
    results = [
        median_of([asyncio.run(one(n, rate, mode, fetch_too=mode == "silent", postgres=pg)) for _ in range(runs)])
        for (n, rate, mode), pg in todo
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def summary(results: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{r['mode']:>6} {r['meters']:>9,} meters × {r['action_rate']:.0%} on {r.get('store', 'sqlite')}: "
        f"{r['obligations']:,} obligations, "
        f"{r['seconds']} s wall (runs {r.get('runs_seconds', [r['seconds']])}), {r['cpu_seconds']} CPU-s, "
        f"peak RSS {r['peak_rss_mb']} MB, "
        f"{r['bytes_per_obligation']} B/obligation, {r['webhooks']} webhooks (largest {r['largest_body']:,} B)"
        + (f", {r['records_per_s']:,} rec/s = {r['ratio_to_fetch']} of bare fetch" if "fetch" in r else "")
        for r in results
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the smaller shapes, once each")
    args = parser.parse_args()
    if args.quick:
        print(summary(run(tuple(s for s in SHAPES if s[0] <= 20_000), 1, ())))
    else:
        print(summary(run()))


if __name__ == "__main__":
    main()
