"""Delivery benchmark: webhook throughput through the outbox worker, and Slack pacing per channel.

`python -m bench.bench_delivery [--notifications N] [--slack-window S]` runs two measurements
on loopback and writes bench/results/delivery.json:

1. N webhook notifications queued in a SQLite ledger (a file, WAL) and delivered by the
   Deliverer to a local collector in a child process, signed; reports notifications/s and checks every one
   arrived once with a valid signature (sampled verification with the reference library).
2. Five Slack channels served at once by a fake Web API, each with a backlog larger than
   the window allows; reports messages per second per channel over the window and the
   smallest gap between two messages in one channel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from alerter.delivery import Deliverer, RetryPolicy
from alerter.models import Event, Meter, Notification, Obligation, RoutingWrite, event_id
from alerter.notifiers.base import Notifier
from alerter.notifiers.slack import SlackNotifier
from alerter.notifiers.webhook import WebhookNotifier
from alerter.receivers import SlackConfig, WebhookConfig
from alerter.store import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "delivery.json"
SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789").decode()
NOW = datetime(2026, 11, 28, 10, tzinfo=UTC)


def make_notification(i: int, receiver: str) -> Notification:
    meter = Meter(meter_id=f"meter-{i:06d}", partner_reference=f"REF-{i:06d}", transmission_region="CAISO")
    o = Obligation(
        meter_id=meter.meter_id, program_identifier="CAISO_DRAM", delivery_period="2026-12",
        action_type="IS_AUTHORIZED", action_code="AUTH_0001", action_description="Re-authorize",
        deadline=NOW, meter=meter, opened_at=NOW, first_seen=NOW, last_seen=NOW,
    )  # fmt: skip
    e = Event(id=event_id(o.key, "opened", 1), kind="opened", occurred_at=NOW, obligation=o)
    return Notification(id=f"bench-{receiver}-{i:06d}", rule="bench", receiver=receiver, events=(e,), created_at=NOW)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


def collector_app() -> web.Application:
    """The webhook receiver: counts ids, verifies a sample of signatures with the reference library."""
    ids: dict[str, int] = defaultdict(int)
    bad = 0
    verifier = Webhook(SECRET)

    async def collect(request: web.Request) -> web.Response:
        nonlocal bad
        raw = await request.text()
        msg_id = request.headers["webhook-id"]
        if ids[msg_id] == 0 and len(ids) % 50 == 0:
            try:
                verifier.verify(raw, dict(request.headers))
            except Exception:
                bad += 1
        ids[msg_id] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        dupes = sum(n - 1 for n in ids.values())
        return web.json_response({"unique": len(ids), "duplicates": dupes, "signature_failures_in_sample": bad})

    app = web.Application()
    app.router.add_post("/hook", collect)
    app.router.add_get("/stats", stats)
    return app


async def serve_collector() -> None:
    runner, port = await _serve(collector_app())
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await runner.cleanup()


async def bench_webhooks(count: int, concurrency: int, batch: int) -> dict[str, Any]:
    """The collector runs in a child process, so the measured CPU is the delivery side's."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bench_delivery", "--collector",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    port = int((await child.stdout.readline()).decode())
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/bench.db")
        await store.open()
        notes = [make_notification(i, "crm") for i in range(count)]
        for start in range(0, count, 1000):
            await store.commit_routing(RoutingWrite(consumed=[], notifications=notes[start : start + 1000]))
        cfg = WebhookConfig.model_validate({"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET})
        notifier = WebhookNotifier("crm", cfg)
        policy = RetryPolicy(base=10, cap=3600, max_attempts=20, budget=43200, in_flight=concurrency)
        worker = Deliverer(store, {"crm": notifier}, "bench", {"webhook": policy}, batch=batch)
        started = time.perf_counter()
        sent = 0
        while (stats := await worker.run_once(NOW)).claimed:
            sent += sum(stats.sent.values())
        elapsed = time.perf_counter() - started
        await notifier.close()
        left = await store.undelivered_count()
        await store.close()
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/stats") as resp:
        received = await resp.json()
    child.stdin.close()
    await child.wait()
    return {
        "notifications": count,
        "delivered": sent,
        "received_unique": received["unique"],
        "duplicates": received["duplicates"],
        "signature_failures_in_sample": received["signature_failures_in_sample"],
        "undelivered": left,
        "seconds": round(elapsed, 3),
        "per_second": round(sent / elapsed, 1),
        "concurrency": concurrency,
        "batch": batch,
    }


async def bench_slack(window: float, channels: int) -> dict[str, Any]:
    posts: dict[str, list[float]] = defaultdict(list)
    ts = itertools.count(1)

    async def api(request: web.Request) -> web.Response:
        args = await request.json()
        posts[args["channel"]].append(time.monotonic())
        return web.json_response({"ok": True, "channel": args["channel"], "ts": f"{next(ts)}.0001"})

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", api)
    runner, port = await _serve(app)
    backlog = int(window * 2) + 5
    notifiers: list[Notifier] = []
    tasks = []

    async def no_threads(key_id: str) -> str | None:
        return None

    for c in range(channels):
        cfg = SlackConfig.model_validate(
            {"token": "xoxb-bench", "channel": f"C{c:04d}", "api_url": f"http://127.0.0.1:{port}/api/",
             "max_wait": f"{window * 4}s"}
        )  # fmt: skip
        notifier = SlackNotifier(f"slack-{c}", cfg)
        notifiers.append(notifier)
        tasks += [
            asyncio.ensure_future(notifier.send(make_notification(i, f"s{c}"), no_threads, NOW)) for i in range(backlog)
        ]
    started = time.monotonic()
    await asyncio.sleep(window)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for n in notifiers:
        await n.close()
    await runner.cleanup()
    per_channel: dict[str, dict[str, Any]] = {}
    for channel, times in sorted(posts.items()):
        inside = [t for t in times if t - started <= window]
        gaps = [b - a for a, b in itertools.pairwise(inside)]
        per_channel[channel] = {
            "messages": len(inside),
            "per_second": round(len(inside) / window, 3),
            "min_gap_s": round(min(gaps), 3) if gaps else None,
        }
    return {
        "window_s": window,
        "channels": channels,
        "backlog_per_channel": backlog,
        "per_channel": per_channel,
        "max_per_second": max((c["per_second"] for c in per_channel.values()), default=0.0),
        "all_channels_served": len(per_channel) == channels and all(c["messages"] > 0 for c in per_channel.values()),
    }


def run(
    notifications: int = 10_000, concurrency: int = 64, batch: int = 500, slack_window: float = 30.0
) -> dict[str, Any]:
    import logging

    import structlog

    # one log line per notification is the service's behaviour, but not what is measured here
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def both() -> dict[str, Any]:
        webhooks = await bench_webhooks(notifications, concurrency, batch)
        slack = await bench_slack(slack_window, 5)
        return {"webhook": webhooks, "slack": slack}

    result = asyncio.run(both())
    result["targets"] = {
        "webhook_per_second_min": 1000,
        "slack_per_channel_per_second_max": 1.2,
        "met": result["webhook"]["per_second"] >= 1000
        and result["webhook"]["received_unique"] == notifications
        and result["slack"]["max_per_second"] <= 1.2
        and result["slack"]["all_channels_served"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_delivery", description=__doc__)
    p.add_argument("--notifications", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--slack-window", type=float, default=30.0, help="seconds (shorter for a quick run)")
    args = p.parse_args(argv)
    if args.collector:
        asyncio.run(serve_collector())
        return 0
    result = run(args.notifications, args.concurrency, args.batch, args.slack_window)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
