"""Simulator benchmark: how fast one simulator process serves pages of 500 meters.

`python -m bench.bench_sim [--meters N] [--pages P]` builds a portfolio in this process and times
rendering unfiltered pages of 500 (the search endpoint's work minus HTTP), filtered page selection
(`partner_action_required`, `last_modified_date_time`, cold, cached and after a mutation), then
starts `alerter sim` in a separate process and sweeps it unfiltered over HTTP with a client that
does no JSON decoding (the token is cut from the page's tail), so the figure is the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from datetime import timedelta
from typing import Any

import aiohttp
import orjson

from alerter.sim import Portfolio
from alerter.sim.query import Searcher, parse_search
from bench.bench_source import API_KEY, SEARCH, Simulator

PAGE = 500
_TOKEN = b'"next_page_token":"'


def _token(raw: bytes) -> str | None:
    at = raw.rfind(_TOKEN, len(raw) - 200)
    return None if at < 0 else raw[at + len(_TOKEN) : raw.index(b'"', at + len(_TOKEN))].decode()


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(1000 * statistics.fmean(ordered), 2),
        "p50": round(1000 * ordered[len(ordered) // 2], 2),
        "p99": round(1000 * ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 2),
    }


def in_process(meters: int, pages: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    portfolio = Portfolio(meters, seed=1)
    build = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    searcher = Searcher(portfolio)
    token: str | None = None
    times: list[float] = []
    records = 0
    while pages is None or len(times) < pages:
        request = parse_search({"page_size": PAGE, **({"page_token": token} if token else {})})
        t = time.perf_counter()
        raw = searcher.page_json(request)
        times.append(time.perf_counter() - t)
        records += raw.count(b'{"meter_id":')
        token = _token(raw)
        if token is None:
            break
    filters: dict[str, Any] = {}
    since = (portfolio.now() - timedelta(days=30)).isoformat().replace("+00:00", "Z")
    for name, body in (
        ("partner_action_required", {"partner_action_required": True}),
        ("last_modified_date_time", {"last_modified_date_time": since}),
    ):
        request = parse_search({"page_size": PAGE, **body})
        cold = _timed(lambda: searcher.page_json(request))  # noqa: B023
        warm = _timed(lambda: searcher.page_json(request))  # noqa: B023
        portfolio.touch(portfolio.meter_id(meters // 2))
        mutated = _timed(lambda: searcher.page_json(request))  # noqa: B023
        filters[name] = {"cold_ms": cold, "cached_ms": warm, "after_a_mutation_ms": mutated}
    return {
        "build_seconds": round(build, 2),
        "max_rss_mb_after_build": round(rss, 1),
        "pages": len(times),
        "records": records,
        "records_per_s": round(records / sum(times)),
        "page_ms": _ms(times),
        "filtered_first_page": filters,
    }


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return round(1000 * (time.perf_counter() - started), 2)


async def over_http(meters: int, pages: int | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with Simulator(meters) as sim, aiohttp.ClientSession() as http:
        url = sim.url + SEARCH
        token: str | None = None
        times: list[float] = []
        records = 0
        started = time.perf_counter()
        while pages is None or len(times) < pages:
            body = orjson.dumps({"page_size": PAGE, **({"page_token": token} if token else {})})
            t = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as r:
                raw = await r.read()
                assert r.status == 200, raw[:200]
            times.append(time.perf_counter() - t)
            records += raw.count(b'{"meter_id":')
            token = _token(raw)
            if token is None:
                break
        wall = time.perf_counter() - started
        return {
            "sim_startup_seconds": round(sim.startup_seconds, 2),
            "sim_rss_mb_after_sweep": round(sim.rss() / 2**20, 1),
            "pages": len(times),
            "records": records,
            "records_per_s": round(records / wall),
            "request_ms": _ms(times),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sim", description=__doc__)
    parser.add_argument("--meters", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=None, help="pages per sweep (default: the whole portfolio)")
    args = parser.parse_args(argv)
    local = in_process(args.meters, args.pages)
    print(
        f"{args.meters:,} meters: built in {local['build_seconds']}s, max RSS {local['max_rss_mb_after_build']} MB\n"
        f"  in process: {local['records']:,} records in {local['pages']} pages of {PAGE}: "
        f"{local['records_per_s']:,} records/s; page ms {local['page_ms']}"
    )
    for name, figures in local["filtered_first_page"].items():
        print(f"  in process, first page with {name}: {figures}")
    remote = asyncio.run(over_http(args.meters, args.pages))
    print(
        f"  over HTTP (alerter sim in another process): {remote['records']:,} records in {remote['pages']} pages: "
        f"{remote['records_per_s']:,} records/s; request ms {remote['request_ms']}; "
        f"sim ready in {remote['sim_startup_seconds']}s, RSS {remote['sim_rss_mb_after_sweep']} MB after the sweep"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
