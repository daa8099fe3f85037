"""Source benchmark: the client sweeping a simulated portfolio served by another process.

`python -m bench.bench_source [--meters N ...]` starts `alerter sim` in a separate process (so
the client's CPU is measured alone), sweeps the whole portfolio unfiltered with LeapClient, and
reports records/s end to end and decode-only (pydantic validation included), request latency,
the client's peak RSS, and a comparison of page decoding strategies. Results go to
bench/results/source.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from pydantic import TypeAdapter

from alerter.config import SourceConfig
from alerter.decoding import SearchResponse
from alerter.models import Record
from alerter.source import LeapClient
from alerter.tuning import tune_process

RESULTS = Path(__file__).resolve().parent / "results" / "source.json"
API_KEY = "bench-key"
SEARCH = "/v2/meters/enrollments/search"


class Simulator:
    """`alerter sim` in a child process, on a free loopback port."""

    def __init__(self, meters: int, action_rate: float = 0.05) -> None:
        self.meters = meters
        self.action_rate = action_rate
        self.url = ""
        self.startup_seconds = 0.0
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Simulator:
        started = time.perf_counter()
        args = ["--port", "0", "--meters", str(self.meters), "--action-rate", str(self.action_rate)]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alerter", "sim", *args, "--api-key", API_KEY, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        line = (await asyncio.wait_for(self._proc.stdout.readline(), 120)).decode()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = match.group(0)
        self.startup_seconds = time.perf_counter() - started
        return self

    def rss(self) -> int:
        assert self._proc is not None
        return int(psutil.Process(self._proc.pid).memory_info().rss)

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()


async def _sample_rss(peak: list[int], stop: asyncio.Event) -> None:
    me = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def _sweep(url: str) -> dict[str, Any]:
    config = SourceConfig.model_validate({"base_url": url, "api_key": API_KEY, "page_size": 500})
    peak = [0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(peak, stop))
    records = 0
    started = time.perf_counter()
    async with LeapClient(config) as client:
        async for page in client.search({}):
            records += len(page.records)
        stats = client.stats
    wall = time.perf_counter() - started
    stop.set()
    await sampler
    return {
        "records": records,
        "pages": stats.pages,
        "invalid_records": stats.invalid_records,
        "seconds": round(wall, 3),
        "records_per_s_end_to_end": round(records / wall),
        "decode_seconds": round(stats.decode_seconds, 3),
        "records_per_s_decode": round(records / stats.decode_seconds),
        "request_ms_mean": round(1000 * stats.latency_sum / max(stats.latency_count, 1), 2),
        "client_peak_rss_mb": round(peak[0] / 2**20, 1),
    }


async def _page_latency(url: str, body: dict[str, Any], repeat: int = 5) -> dict[str, float]:
    """Milliseconds for one page of 500: the first request (cold filter) and the median of the next."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(repeat + 1):
            started = time.perf_counter()
            async with http.post(url + SEARCH, json=body, headers=headers) as r:
                await r.read()
            times.append(1000 * (time.perf_counter() - started))
    return {"cold_ms": round(times[0], 1), "warm_median_ms": round(statistics.median(times[1:]), 1)}


async def _one_page(url: str) -> bytes:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + SEARCH, json={"page_size": 500}, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        return await r.read()


def compare_parsers(raw: bytes, repeat: int = 30) -> dict[str, Any]:
    """Records/s of three ways to decode one page: whole-page validate_json vs per-record validation."""
    whole = TypeAdapter(SearchResponse)
    count = len(orjson.loads(raw)["meters"])

    def validate_json() -> None:
        whole.validate_json(raw)

    def orjson_per_record() -> None:
        for item in orjson.loads(raw)["meters"]:
            Record.model_validate(item)

    def orjson_whole_python() -> None:
        whole.validate_python(orjson.loads(raw))

    out: dict[str, Any] = {"page_records": count, "page_bytes": len(raw)}
    for name, fn in (
        ("validate_json_whole_page", validate_json),
        ("orjson_loads_then_model_validate_each", orjson_per_record),
        ("orjson_loads_then_validate_python_whole", orjson_whole_python),
    ):
        fn()
        best = min(_timed(fn) for _ in range(repeat))
        out[name] = {"ms_per_page": round(1000 * best, 2), "records_per_s": round(count / best)}
    return out


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def _run(meters: int) -> dict[str, Any]:
    async with Simulator(meters) as sim:
        result: dict[str, Any] = {
            "meters": meters,
            "sim_startup_seconds": round(sim.startup_seconds, 2),
            "sim_rss_mb": round(sim.rss() / 2**20, 1),
        }
        result["page_unfiltered"] = await _page_latency(sim.url, {"page_size": 500})
        result["page_partner_action_required"] = await _page_latency(
            sim.url, {"page_size": 500, "partner_action_required": True}
        )
        result["sweep"] = await _sweep(sim.url)
        result["parsers"] = compare_parsers(await _one_page(sim.url))
    result["client_max_rss_mb_lifetime"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def run(meters: int) -> dict[str, Any]:
    """One benchmark run against a portfolio of `meters` (the bench runner's entry point)."""
    return asyncio.run(_run(meters))


def _summary(r: dict[str, Any]) -> str:
    s, p = r["sweep"], r["parsers"]
    return (
        f"{r['meters']:>9,} meters: sim ready in {r['sim_startup_seconds']}s "
        f"(RSS {r['sim_rss_mb']} MB); page of 500 {r['page_unfiltered']['warm_median_ms']} ms "
        f"(partner_action_required cold {r['page_partner_action_required']['cold_ms']} ms, "
        f"warm {r['page_partner_action_required']['warm_median_ms']} ms)\n"
        f"           sweep {s['records']:,} records in {s['seconds']}s: "
        f"{s['records_per_s_end_to_end']:,}/s end to end, {s['records_per_s_decode']:,}/s decode+validate; "
        f"client peak RSS {s['client_peak_rss_mb']} MB\n"
        f"           one page: validate_json {p['validate_json_whole_page']['records_per_s']:,}/s, "
        f"orjson+model_validate each {p['orjson_loads_then_model_validate_each']['records_per_s']:,}/s, "
        f"orjson+validate_python {p['orjson_loads_then_validate_python_whole']['records_per_s']:,}/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_source", description=__doc__)
    parser.add_argument("--meters", type=int, action="append", help="portfolio size (repeatable)")
    args = parser.parse_args(argv)
    tune_process()  # as `alerter run` and `alerter once` do
    results = {str(n): run(n) for n in args.meters or [100_000, 1_000_000]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for result in results.values():
        print(_summary(result))
    print(f"results: {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
