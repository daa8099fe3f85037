"""`make soak`: `alerter run` for a set time under churn and faults, then exactly-once, flat memory
and clean logs are checked, and the figures go to bench/results/soak.json.

`python -m bench.soak [--duration 10m] [--store sqlite|postgres] [--faults LIST] [--rate 1]`

What runs: the Leap simulator, a fake Slack Web API, a webhook collector (signatures verified)
and an SMTP server with AUTH, all on 127.0.0.1 in this process; `alerter run` as a real child
process with a 2 s poll, a 2-minute reconcile sweep, Slack, email and webhook receivers for every
event and a webhook operations receiver for the service's own alerts. Secrets are random per
run and reach the service through the environment.

What happens: for `--duration`, actions open, change and resolve through the simulator's control
API (about `--rate` a second). Every `--leap-every` seconds a small Leap fault is queued (500,
429, slow answers, invalid records, 503, a dropped connection, 502, in rotation). Spread over
the run, one at a time: the service is killed with SIGKILL and started again (first, so that
the process after it lives through the second half, where memory is judged), Slack answers 500,
webhooks 503, the SMTP server stops, Leap answers 503 to everything, all receivers are down at
once, and (`--store postgres`, with a cluster this process can stop) PostgreSQL stops for
`--pg-outage`. Each outage lasts `--outage` (at most 80 % of the gap between them); a Slack or
webhook outage lasts on until a delivery has run into it (at most 60 s more). RSS, open
descriptors and threads are sampled every few seconds.

At the end the churn stops and the soak waits (up to `--settle`) until the service has polled
after the last change, nothing is unrouted, grouped or pending in its state, and no receiver
has heard anything for a while. A process killed mid-delivery leaves its claimed rows leased
(300 s today), so the wait after a kill can last that long; the figures show it. The service is
then stopped with SIGTERM and the checks run (see bench/soak_checks.py for how exactly-once is
judged). Exit status 1 when exactly-once, flat memory or the secrets check fails (and, with
`--require-json-logs`, when a log line is not JSON); 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from alerter.durations import parse_duration
from alerter.models import key_id
from alerter.sim import Portfolio, SimServer
from bench import soak_checks as checks
from bench.soak_churn import SCENES, Churn, Scenes, open_actions
from bench.soak_report import Run, figures, summary
from bench.soak_world import CONFIG, RULES, PostgresControl, Receivers, ServiceProcess, free_port, start_receivers

RESULTS = Path(__file__).resolve().parent / "results"
ALL_FAULTS = ("leap", *SCENES)


def _seconds(value: str) -> float:
    try:
        return parse_duration(value).total_seconds()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=_seconds, default=600.0, help="churn and faults this long (default 10m)")
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--postgres-url", default=os.environ.get("ALERTER_TEST_POSTGRES_URL", ""))
    p.add_argument("--rate", type=float, default=1.0, help="churn operations per second (default 1)")
    p.add_argument("--meters", type=int, default=3000)
    p.add_argument("--action-rate", type=float, default=0.02, help="share of meters with actions at start")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--poll", type=_seconds, default=2.0, help="poll.interval (default 2s)")
    p.add_argument("--spacing", type=_seconds, default=10.0, help="least time between ops on one action")
    p.add_argument("--faults", default=",".join(ALL_FAULTS), help=f"comma list of {', '.join(ALL_FAULTS)}, or none")
    p.add_argument("--outage", type=_seconds, default=45.0, help="how long each outage lasts (default 45s)")
    p.add_argument("--pg-outage", type=_seconds, default=30.0)
    p.add_argument("--leap-every", type=_seconds, default=15.0)
    p.add_argument("--settle", type=_seconds, default=600.0, help="longest wait for quiescence (default 10m)")
    p.add_argument("--min-settle", type=_seconds, default=65.0, help="shortest wait (a reminder run; default 65s)")
    p.add_argument("--quiet", type=_seconds, default=10.0, help="no arrivals this long before settling")
    p.add_argument("--sample-every", type=_seconds, default=5.0)
    p.add_argument("--max-rss-growth", type=float, default=10.0, help="MB over the second half (default 10)")
    p.add_argument("--max-fd-growth", type=int, default=10)
    p.add_argument("--require-json-logs", action="store_true", help="fail when a log line is not JSON")
    p.add_argument("--no-reminders", action="store_true", help="rules without deadline reminders")
    p.add_argument("--output", type=Path, default=None, help="default bench/results/soak[-postgres].json")
    p.add_argument("--keep", action="store_true", help="keep the working directory (config, state, logs)")
    args = p.parse_args(argv)
    faults = [] if args.faults == "none" else [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        p.error(f"unknown fault {unknown[0]!r}; one of {', '.join(ALL_FAULTS)}")
    if args.store != "postgres" and "postgres" in faults:
        faults.remove("postgres")
    if args.store == "postgres" and not args.postgres_url:
        p.error("--store postgres needs --postgres-url or ALERTER_TEST_POSTGRES_URL (see scripts/with-postgres.sh)")
    args.faults = faults
    if args.output is None:
        args.output = RESULTS / ("soak.json" if args.store == "sqlite" else "soak-postgres.json")
    return args


def _secrets() -> dict[str, str]:
    return {
        "leap_api_key": "leap-" + secrets.token_hex(16),
        "slack_token": "xoxb-" + secrets.token_hex(16),
        "smtp_password": "pw-" + secrets.token_hex(12),
        "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    }


def _arrivals(r: Receivers) -> int:
    return len(r.hook.received) + len(r.slack.calls) + len(r.smtp.handler.messages)


async def _sampler(service: ServiceProcess, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        service.sample()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _settle(state: checks.StateReader, r: Receivers, t_stop: float, args: argparse.Namespace) -> dict[str, Any]:
    """Waits until the service has polled after the last change and everything went out."""
    last_n, last_change = _arrivals(r), time.time()
    backlog: dict[str, Any] = {}
    while time.time() < t_stop + args.settle:
        await asyncio.sleep(2)
        now = time.time()
        if (n := _arrivals(r)) != last_n:
            last_n, last_change = n, now
        try:
            backlog = await state.backlog()
        except Exception as err:  # a busy or restarting store: ask again
            backlog = {"error": str(err)[:200]}
            continue
        polled = (backlog["last_cycle_at"] or 0) > t_stop + args.poll
        empty = backlog["unrouted"] == backlog["grouped"] == backlog["pending"] == 0
        if polled and empty and now - t_stop >= args.min_settle and now - last_change >= args.quiet:
            return {"settled": True, "seconds": round(now - t_stop, 1), "backlog": backlog}
    return {"settled": False, "seconds": round(time.time() - t_stop, 1), "backlog": backlog}


async def _drop_schema(url: str) -> None:
    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def soak(args: argparse.Namespace, workdir: Path) -> Run:
    rng = random.Random(args.seed)
    keys = _secrets()
    portfolio = Portfolio(args.meters, action_rate=args.action_rate, seed=args.seed)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.store == "sqlite":
        state_url = f"sqlite:///{workdir / 'state.db'}"
    else:
        state_url = f"{args.postgres_url}?schema=soak_{uuid.uuid4().hex[:10]}"
    pg: PostgresControl | None = None
    skipped: dict[str, str] = {}
    if "postgres" in args.faults:
        pg, why = await PostgresControl.find(args.postgres_url)
        if pg is None:
            skipped["postgres"] = why
    async with SimServer(portfolio, api_key=keys["leap_api_key"]) as sim:
        r = await start_receivers(keys["slack_token"], keys["webhook_secret"], "soak", keys["smtp_password"])
        port = free_port()
        rules = RULES.format(
            slack=r.slack.api_url, smtp=r.smtp.port, hook=r.hook.url("/hook"), ops=r.hook.url("/ops"),
            group_wait="2s", group_interval="5s",
            remind="{}" if args.no_reminders else "{before_deadline: [2d, 1d], overdue: true}",
        )  # fmt: skip
        (workdir / "rules.yaml").write_text(rules)
        config = workdir / "config.yaml"
        config.write_text(
            CONFIG.format(sim=sim.url, poll=f"{args.poll:g}s", reconcile="2m", state=state_url, port=port)
        )
        env = {**os.environ, **{f"SOAK_{k.upper()}": v for k, v in keys.items()}}
        service = ServiceProcess(config, port, env, logs)
        state = checks.StateReader(state_url)
        churn = Churn(portfolio, sim.url, rng, args.spacing)
        scenes_run = [s for s in SCENES if s in args.faults and s not in skipped]
        slot = args.duration / (len(scenes_run) + 2)
        outage = min(args.outage, slot * 0.8)
        scenes = Scenes(sim.url, r, service, pg, outage, min(args.pg_outage, slot * 0.8), args.leap_every)
        scenes.skipped.update(skipped)
        stop_sampling = asyncio.Event()
        started = time.time()
        try:
            await service.start()
            sampler = asyncio.create_task(_sampler(service, args.sample_every, stop_sampling))
            t0 = time.time()
            end = t0 + args.duration
            background = []
            if "leap" in args.faults:
                background.append(asyncio.create_task(_guarded(scenes, "leap", 0, scenes.leap_faults(end))))
            for i, scene in enumerate(scenes_run):
                background.append(asyncio.create_task(_guarded(scenes, scene, t0 + slot * (i + 1), scenes.run(scene))))
            async with aiohttp.ClientSession() as session:
                while time.time() < end:
                    await churn.step(session)
                    await asyncio.sleep(min(rng.expovariate(args.rate), max(0.0, end - time.time())))
            await asyncio.gather(*background)
            t_stop = time.time()
            if not service.running:  # it died by itself (or a restart failed): bring it back to drain
                scenes.skipped["service_exit"] = f"exited with {service.lives[-1].exit_code}; started again"
                await service.start()
            settle = await _settle(state, r, t_stop, args)
            metrics_text = await service.metrics()
            sigterm_exit = await service.stop()
            stop_sampling.set()
            await sampler
            final_backlog = await state.backlog()
            ledger = await checks.Ledger.read(state)
        finally:
            stop_sampling.set()
            await service.stop()
            await r.close()
        truth = {key_id(k): (a["enrollment_deadline_date_time"], a["action_description"])
                 for k, a in open_actions(portfolio).items()}  # fmt: skip
    if args.store == "postgres":
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await _drop_schema(state_url)
    return Run(started, t0, outage, keys, r, service, churn, scenes, settle, final_backlog, ledger, truth,
               metrics_text, sigterm_exit)  # fmt: skip


async def _guarded(scenes: Scenes, scene: str, at: float, job: Coroutine[Any, Any, None]) -> None:
    """Runs a scene at `at`; a scene that fails is noted, and the soak goes on."""
    try:
        await asyncio.sleep(max(0.0, at - time.time()))
        await job
    except Exception as err:
        scenes.skipped[scene] = f"failed: {type(err).__name__}: {err}"[:300]
    finally:
        job.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns on every AUTH
    workdir = Path(tempfile.mkdtemp(prefix="alerter-soak-"))
    try:
        result = figures(args, asyncio.run(soak(args, workdir)))
    finally:
        if args.keep:
            print(f"working directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"figures: {args.output}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
