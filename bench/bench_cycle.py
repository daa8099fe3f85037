"""Cycle benchmark: a full sweep (fetch, decode, diff, commit to SQLite on disk) against the simulator.

`python -m bench.bench_cycle [--meters 100000 1000000]` starts `alerter sim` in another process
and, for each portfolio size, runs in fresh child processes (so each peak RSS is its own):
- `fetch`: the bare fetch-and-decode loop over the unfiltered sweep (the ceiling): the same
  client and pages as the sweep, read through the poller's `read_ahead` as the sweep reads
  them, with nothing done to a page but counting its records. A page's next-page token is in
  its body, so each request waits for the previous page's decode: this loop is the chain of
  render + transfer + decode that the sweep cannot beat, only hide its own work behind;
- `sweep`: the same pages through the poller: diff and commit into an empty SQLite store;
- fetch and sweep alternate `ROUNDS` times and each is reported by its median run (the
  machine's speed drifts over a run; alternating exposes both to the same drift); each
  round's own ratio is reported too;
- `incremental` (largest size only): 1000 meters changed in the simulator, then one
  incremental cycle, with each `poll.resolution_check` strategy.
Results go to bench/results/cycle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from alerter.config import PollConfig, SourceConfig
from alerter.decoding import Page
from alerter.poller import Poller, read_ahead
from alerter.source import LeapClient
from alerter.store.sqlite import SqliteStore
from alerter.tuning import tune_process
from bench.bench_source import API_KEY, Simulator

RESULTS = Path(__file__).resolve().parent / "results" / "cycle.json"
ROUNDS = 5


class Unfiltered:
    """The worst case: the sweep reads every meter, not only those needing action."""

    def __init__(self, client: LeapClient) -> None:
        self.client = client

    def search(self, filters: dict[str, object]) -> AsyncIterator[Page]:
        return self.client.search({k: v for k, v in filters.items() if k != "partner_action_required"})

    def search_meters(
        self, meter_ids: Sequence[str], last_modified: datetime | None = None, filters: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Page]:
        return self.client.search_meters(meter_ids, last_modified, filters)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def worker(mode: str, url: str, db: str, check: str) -> dict[str, Any]:
    tune_process()  # as `alerter run` and `alerter once` do
    config = SourceConfig(base_url=url, api_key=API_KEY)
    async with LeapClient(config) as client:
        started = time.perf_counter()
        if mode == "fetch":
            records = 0
            async with contextlib.aclosing(read_ahead(client.search({}))) as pages:
                async for page in pages:
                    records += len(page.records)
            seconds = time.perf_counter() - started
            return {
                "records": records,
                "seconds": seconds,
                "records_per_s": records / seconds,
                "decode_seconds": client.stats.decode_seconds,
                "rss_mb": peak_rss_mb(),
            }
        store = SqliteStore(f"sqlite:///{db}")
        await store.open()
        try:
            poll = PollConfig(resolution_check=check)
            source = Unfiltered(client) if mode == "sweep" else client
            report = await Poller(store, source, poll).run_cycle(datetime.now(UTC))
        finally:
            await store.close()
        seconds = time.perf_counter() - started
        return {
            "kind": report.kind,
            "records": report.records,
            "pages": report.pages,
            "events": dict(report.events),
            "seconds": seconds,
            "records_per_s": report.records / seconds if seconds else 0.0,
            "requests": client.stats.requests,
            "decode_seconds": client.stats.decode_seconds,
            "rss_mb": peak_rss_mb(),
        }


async def child(mode: str, url: str, db: str, check: str = "meter_ids") -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_cycle", "--worker", mode, url, db, check, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def churn(url: str, n: int) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/_sim/churn", json={"n": n}) as r:
        r.raise_for_status()


async def run_size(meters: int, incremental: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"meters": meters}
    with tempfile.TemporaryDirectory(prefix="alerter-bench-") as tmp:
        async with Simulator(meters) as sim:
            runs: dict[str, list[dict[str, Any]]] = {"fetch": [], "sweep": []}
            for i in range(ROUNDS):
                runs["fetch"].append(await child("fetch", sim.url, ""))
                runs["sweep"].append(await child("sweep", sim.url, f"{tmp}/sweep-{i}.db"))
            for mode, done in runs.items():
                out[mode] = dict(sorted(done, key=lambda r: r["records_per_s"])[len(done) // 2])
                out[mode]["rss_mb"] = max(r["rss_mb"] for r in done)
                out[mode]["runs_records_per_s"] = [round(r["records_per_s"]) for r in done]
            out["ratio_to_fetch"] = out["sweep"]["records_per_s"] / out["fetch"]["records_per_s"]
            out["ratio_per_round"] = per_round(out)
            if incremental:
                for check in ("meter_ids", "unfiltered"):
                    db = f"{tmp}/inc-{check}.db"
                    await child("filtered", sim.url, db)  # baseline: the filtered initial sweep
                    await churn(sim.url, 1000)
                    out[f"incremental_{check}"] = await child("filtered", sim.url, db, check)
    return out


def run(sizes: Sequence[int] = (100_000, 1_000_000)) -> dict[str, Any]:
    results = {"sizes": [asyncio.run(run_size(n, n == max(sizes))) for n in sizes]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def per_round(size: dict[str, Any]) -> list[float]:
    """Each round's sweep over the fetch just before it (the two closest in time)."""
    pairs = zip(size["fetch"]["runs_records_per_s"], size["sweep"]["runs_records_per_s"], strict=True)
    return [round(sweep / fetch, 2) for fetch, sweep in pairs]


def summary(results: dict[str, Any]) -> str:
    lines = []
    for s in results["sizes"]:
        lines.append(
            f"{s['meters']:>9,} meters: fetch+decode {s['fetch']['records_per_s']:,.0f} rec/s; "
            f"sweep (fetch, decode, diff, commit) {s['sweep']['records_per_s']:,.0f} rec/s "
            f"= {s['ratio_to_fetch']:.2f} of fetch (medians of {ROUNDS} alternating runs: fetch "
            f"{s['fetch']['runs_records_per_s']}, sweep {s['sweep']['runs_records_per_s']}; "
            f"per round {per_round(s)}); peak RSS sweep {s['sweep']['rss_mb']:.0f} MB"
        )
        for check in ("meter_ids", "unfiltered"):
            inc = s.get(f"incremental_{check}")
            if inc:
                lines.append(
                    f"    incremental cycle, 1000 changed meters, resolution_check={check}: "
                    f"{inc['seconds']:.2f} s, {inc['requests']} requests, {inc['records']} records"
                )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        mode, url, db, check = sys.argv[2:6]
        print(json.dumps(asyncio.run(worker(mode, url, db, check))))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    print(summary(run(args.meters)))


if __name__ == "__main__":
    main()
