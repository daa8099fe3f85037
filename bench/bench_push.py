"""Push benchmark: Leap's webhooks into `alerter run`, from a change in the simulator to the receiver.

`python -m bench.bench_push [--changes 1000] [--burst 10000]` runs `alerter run` as its own process
with `poll.interval: 5m`, `group_wait: 0s` and `source.webhooks` on, subscribed to the simulator.
1. Latency: opens `changes` actions one by one at random moments; each is pushed, stored, re-read
   and routed; reports p50/p90/p99/max from the change to the webhook's arrival.
2. Endpoint: `burst` events about 1,000 meters posted with 64 in flight (durable SQLite inbox
   writes); reports accepted events/s and the answer time p50/p99.
3. Coalescing: the same burst, processed: how many meter ids were re-read and in how many search
   requests (`meter_ids`, 1,000 a request).
Results go to bench/results/push.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from alerter.sim import Portfolio, SimServer

RESULTS = Path(__file__).resolve().parent / "results" / "push.json"
KEY = "bench-key"
SECRET = "bench-push-secret"
REQUIRED = "meter.enrollment.required-actions.updated"

CONFIG = """\
source:
  base_url: "{sim}"
  api_key: {key}
  max_retries: 0
  webhooks: {{secrets: [{secret}], listen: "127.0.0.1:{push_port}"}}
poll: {{interval: 5m, overlap: 10m, reconcile_interval: 24h, initial_sync: silent}}
state: {{url: "sqlite:///{db}"}}
http: {{listen: "127.0.0.1:{http_port}"}}
rules: rules.yaml
log: {{format: json, level: warning}}
"""
RULES = """\
receivers:
  - name: hook
    webhook: {{url: "{hook}"}}
defaults: {{group_by: [meter_id], group_wait: 0s, group_interval: 0s, remind: {{overdue: false}}}}
rules:
  - name: all
    receivers: [hook]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100) if len(values) >= 2 else values * 99
    return q[49], q[89], q[98]


async def _metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
    return 0.0


def _bodies(meters: list[str], n: int) -> list[bytes]:
    """`n` required-actions events spread over `meters`."""
    return [
        json.dumps(
            {
                "webhook_event_id": str(uuid.uuid4()),
                "payload": {
                    "webhook_event_type": REQUIRED,
                    "meter_id": meters[i % len(meters)],
                    "transmission_region": "CAISO",
                    "global_enrollment_status": "ACTIVE",
                    "required_actions": {},
                },
            }
        ).encode()
        for i in range(n)
    ]


def _by_id(request: Any) -> bool:
    return isinstance(request.body, dict) and bool(request.body.get("meter_ids"))


async def _processed(session: aiohttp.ClientSession, port: int, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _metric(session, port, 'alerter_push_processed_total{outcome="done"}') >= count:
            return
        await asyncio.sleep(0.2)


async def measure(changes: int, burst: int, seed: int = 5) -> dict[str, Any]:
    rng = random.Random(seed)
    portfolio = Portfolio(5000, action_rate=0.01, seed=seed)
    meters = [portfolio.meter_id(i) for i in range(portfolio.size) if not portfolio.record(i)["is_archived"]]
    opened: dict[tuple[str, str], float] = {}
    arrived: dict[tuple[str, str], float] = {}
    all_arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        now = time.monotonic()
        for e in body["data"]["events"]:
            if e["type"] == "action.opened":
                arrived.setdefault((e["meter"]["meter_id"], e["action"]["action_code"]), now)
        if len(arrived) >= changes:
            all_arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    push_port, http_port = _free_port(), _free_port()
    result: dict[str, Any] = {"changes": changes, "poll_interval_s": 300, "burst": burst}
    with tempfile.TemporaryDirectory(prefix="alerter-push-") as tmp:
        async with SimServer(portfolio, api_key=KEY) as sim, aiohttp.ClientSession() as session:
            config = CONFIG.format(
                sim=sim.url, key=KEY, secret=SECRET, push_port=push_port, http_port=http_port, db=f"{tmp}/state.db"
            )
            await asyncio.to_thread(Path(tmp, "rules.yaml").write_text, RULES.format(hook=hook_url))
            await asyncio.to_thread(Path(tmp, "config.yaml").write_text, config)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "alerter", "run", "-c", f"{tmp}/config.yaml", stderr=asyncio.subprocess.DEVNULL
            )
            receiver = f"http://127.0.0.1:{push_port}/leap/webhooks"
            try:
                await asyncio.sleep(4)  # the initial sync (silent) has run
                sub = {
                    "event_types": [REQUIRED],
                    "headers": [{"name": "x-api-key", "value": SECRET}],
                    "receiver_url": receiver,
                }
                auth = {"Authorization": f"Bearer {KEY}"}
                async with session.post(f"{sim.url}/v1.1/webhooks", json=sub, headers=auth) as r:
                    assert r.status == 200, await r.text()

                # 1. change -> receiver
                for i, meter in enumerate(rng.sample(meters, changes)):
                    code = f"PUSH_{i:04d}"
                    portfolio.open_action(meter, action_type="IS_AUTHORIZED", action_code=code)
                    opened[(meter, code)] = time.monotonic()
                    await asyncio.sleep(rng.uniform(0.0, 0.02))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived.wait(), 60)
                delays = sorted(arrived[k] - opened[k] for k in opened if k in arrived)
                p50, p90, p99 = _quantiles(delays)
                result.update(
                    arrived=len(delays), p50_s=p50, p90_s=p90, p99_s=p99, max_s=delays[-1] if delays else None
                )
                sim.push.subscriptions.clear()

                # 2. and 3. a burst straight at the endpoint, then its processing
                await asyncio.sleep(1)
                rereads_before = await _metric(session, http_port, "alerter_push_meter_rereads_total")
                sim.requests.clear()
                targets = rng.sample(meters, 1000)
                bodies = _bodies(targets, burst)
                answers: list[float] = []
                statuses: list[int] = []
                queue = iter(bodies)
                headers = {"x-api-key": SECRET, "Content-Type": "application/json"}

                async def client() -> None:
                    for body in queue:
                        t0 = time.perf_counter()
                        async with session.post(receiver, data=body, headers=headers) as r:
                            await r.read()
                            statuses.append(r.status)
                        answers.append(time.perf_counter() - t0)

                started = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(64)))
                elapsed = time.perf_counter() - started
                a50, _, a99 = _quantiles(sorted(answers))
                result.update(
                    accepted=sum(1 for s in statuses if s == 200),
                    accepted_per_s=sum(1 for s in statuses if s == 200) / elapsed,
                    answer_p50_ms=a50 * 1000,
                    answer_p99_ms=a99 * 1000,
                )
                await _processed(session, http_port, changes + burst)
                rereads = await _metric(session, http_port, "alerter_push_meter_rereads_total") - rereads_before
                searches = [r for r in list(sim.requests) if r.path.endswith("/search")]
                result.update(
                    live_meter_rereads=int(rereads),
                    live_search_requests=sum(1 for r in searches if _by_id(r)),
                )

                # 3. the same burst landing while Leap fails the re-reads: it waits, then goes at once
                rereads_before = await _metric(session, http_port, "alerter_push_meter_rereads_total")
                sim.requests.clear()
                sim.faults.add("503", times=1_000_000)
                queue = iter(_bodies(targets, burst))
                await asyncio.gather(*(client() for _ in range(64)))
                sim.faults.clear()
                await _processed(session, http_port, changes + 2 * burst)
                rereads = await _metric(session, http_port, "alerter_push_meter_rereads_total") - rereads_before
                searches = [r for r in list(sim.requests) if r.path.endswith("/search")]
                result.update(
                    burst_meters=len(targets),
                    burst_meter_rereads=int(rereads),
                    burst_search_requests=sum(
                        1 for r in searches if isinstance(r.body, dict) and r.body.get("meter_ids")
                    ),
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    await runner.cleanup()
    return result


def run(changes: int = 1000, burst: int = 10_000) -> dict[str, Any]:
    result = asyncio.run(measure(changes, burst))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=10_000)
    args = parser.parse_args()
    r = run(args.changes, args.burst)
    print(
        f"change -> webhook with push, {r['arrived']}/{r['changes']} arrived, poll.interval 5m: "
        f"p50 {r['p50_s']:.3f}s  p90 {r['p90_s']:.3f}s  p99 {r['p99_s']:.3f}s  max {r['max_s']:.3f}s\n"
        f"endpoint: {r['accepted']}/{r['burst']} accepted, {r['accepted_per_s']:,.0f}/s, "
        f"answer p50 {r['answer_p50_ms']:.1f} ms p99 {r['answer_p99_ms']:.1f} ms\n"
        f"burst of {r['burst']} events for {r['burst_meters']} meters as it arrives: {r['live_meter_rereads']} "
        f"meter re-reads in {r['live_search_requests']} search requests; landed while Leap failed: "
        f"{r['burst_meter_rereads']} meter re-reads in {r['burst_search_requests']} successful search requests"
    )


if __name__ == "__main__":
    main()
