"""Latency benchmark: from an action appearing in the simulator to its webhook arriving.

`python -m bench.bench_latency [--actions 200]` runs `alerter run` as its own process with
`poll.interval: 2s` and `group_wait: 0s` against the simulator and a webhook collector in this
process, opens actions one by one at random moments, and reports p50/p90/p99/max of the
delay. Results go to bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from alerter.sim import Portfolio, SimServer

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
KEY = "bench-key"

CONFIG = """\
source: {{base_url: "{sim}", api_key: {key}}}
poll: {{interval: 2s, overlap: 1m, reconcile_interval: 24h, initial_sync: silent}}
state: {{url: "sqlite:///{db}"}}
http: {{listen: "127.0.0.1:0"}}
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


async def measure(actions: int, seed: int = 5) -> dict[str, Any]:
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
        if len(arrived) >= actions:
            all_arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    with tempfile.TemporaryDirectory(prefix="alerter-latency-") as tmp:
        async with SimServer(portfolio, api_key=KEY) as sim:
            config = CONFIG.format(sim=sim.url, key=KEY, db=f"{tmp}/state.db")
            await asyncio.to_thread(Path(tmp, "rules.yaml").write_text, RULES.format(hook=hook_url))
            await asyncio.to_thread(Path(tmp, "config.yaml").write_text, config)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "alerter", "run", "-c", f"{tmp}/config.yaml", stderr=asyncio.subprocess.DEVNULL
            )
            try:
                await asyncio.sleep(4)  # the initial sync (silent) has run
                for i, meter in enumerate(rng.sample(meters, actions)):
                    code = f"BENCH_{i:04d}"
                    portfolio.open_action(meter, action_type="IS_AUTHORIZED", action_code=code)
                    opened[(meter, code)] = time.monotonic()
                    await asyncio.sleep(rng.uniform(0.0, 0.1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_arrived.wait(), 30)
            finally:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    await runner.cleanup()
    delays = sorted(arrived[k] - opened[k] for k in opened if k in arrived)
    q = statistics.quantiles(delays, n=100) if len(delays) >= 2 else delays * 99
    return {
        "actions": actions,
        "arrived": len(delays),
        "poll_interval_s": 2,
        "p50_s": q[49],
        "p90_s": q[89],
        "p99_s": q[98],
        "max_s": delays[-1] if delays else None,
    }


def run(actions: int = 200) -> dict[str, Any]:
    result = asyncio.run(measure(actions))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actions", type=int, default=200)
    r = run(parser.parse_args().actions)
    print(
        f"action -> webhook, {r['arrived']}/{r['actions']} arrived, poll.interval 2s: "
        f"p50 {r['p50_s']:.2f}s  p90 {r['p90_s']:.2f}s  p99 {r['p99_s']:.2f}s  max {r['max_s']:.2f}s"
    )


if __name__ == "__main__":
    main()
