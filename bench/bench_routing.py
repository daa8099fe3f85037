"""Routing benchmark: 100,000 events through 50 rules, routed and grouped on one core.

`python -m bench.bench_routing [--events N]` builds a 50-rule set (equalities on `event`,
`action_type` and regions, tags, regexes, deadlines, `continue`, a fallback) and measures:
the Router alone (`route_events_per_s`; and with the index switched off), `plan` (routing +
grouping) in batches of 1,000 as the service runs it: `plan` against the stored group heads,
its write applied to an in-memory store (GroupBook: heads replaced, members appended), one
batch a second with the due groups (loaded with their members) flushed in between
(`plan_events_per_s`, `plan_and_flush_events_per_s`), and the worst case: all batches at
one instant, so groups only grow (`burst_plan_events_per_s`), then one flush of
everything. Each measurement runs `--repeat` times (3) from scratch (a new Router, no
groups) and the fastest counts, so that other work on the machine skews less. Results go
to bench/results/routing.json. Target: >= 150,000 events/s for routing + grouping.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerter.grouping import flush, plan
from alerter.models import Event, EventKind, Meter, Obligation, event_id
from alerter.routes import Router
from alerter.rulefile import RuleSet, compile_rules
from alerter.store.memory import GroupBook
from alerter.tuning import tune_process
from alerter.yamlload import parse_yaml

RESULTS = Path(__file__).resolve().parent / "results" / "routing.json"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
ACTION_TYPES = [f"ACTION_{i:02d}" for i in range(20)]
REGIONS = ["CAISO", "NYISO", "ERCOT", "PJM", "MISO", "ISONE"]
KINDS: list[EventKind] = ["opened", "opened", "opened", "changed", "reminder", "resolved"]
BATCH = 1000


def rules_yaml() -> str:
    """50 rules: the shapes real rule files have, most of them with an indexable equality."""
    lines = ["receivers:"]
    lines += [f"  - {{name: r{i}, console: {{}}}}" for i in range(10)]
    lines.append("defaults: {group_by: [action_type], group_wait: 30s, group_interval: 5m}")
    lines.append("rules:")
    for i in range(20):  # per action type and region
        region = REGIONS[i % len(REGIONS)]
        lines.append(
            f"  - {{name: type-{i}, match: {{action_type: {ACTION_TYPES[i]}, transmission_region: {region}}}, "
            f"receivers: [r{i % 10}]}}"
        )
    for i in range(8):  # vip tags on some action types, continuing
        types = ", ".join(ACTION_TYPES[i * 2 : i * 2 + 3])
        lines.append(
            f"  - {{name: vip-{i}, match: {{action_type: [{types}], tags: {{contains_any: [vip, gold]}}}}, "
            f"receivers: [r{i}], continue: true}}"
        )
    for i in range(6):  # escalations near the deadline
        lines.append(
            f"  - {{name: escalate-{i}, match: {{event: reminder, deadline: {{within: {i + 1}d}}, "
            f"transmission_region: {REGIONS[i]}}}, receivers: [r9], remind: {{before_deadline: [2d, 1d]}}}}"
        )
    for i in range(8):  # program patterns (not indexable)
        lines.append(
            f"  - {{name: program-{i}, match: {{program_identifier: {{regex: '^PROG-{i}'}}, "
            f"customer_classification: {{not: RESIDENTIAL}}}}, receivers: [r{i}], group_by: [meter_id]}}"
        )
    for i in range(7):  # resolutions and changes per region
        lines.append(
            f"  - {{name: changes-{i}, match: {{event: [changed, resolved], transmission_region: "
            f"{{in: [{REGIONS[i % 6]}]}}}}, receivers: [r{(i + 3) % 10}]}}"
        )
    lines.append("  - {name: everything-else, fallback: true, receivers: [r0]}")
    return "\n".join(lines) + "\n"


def ruleset() -> RuleSet:
    rs = compile_rules([parse_yaml(rules_yaml(), "bench.yaml", env={})])
    assert len(rs.rules) + (1 if rs.fallback else 0) == 50
    return rs


def make_events(n: int, seed: int = 7) -> list[Event]:
    rnd = random.Random(seed)
    meters = [
        Meter(
            meter_id=f"meter-{i:06d}",
            partner_reference=f"ACME-{i:06d}",
            transmission_region=rnd.choice(REGIONS),
            customer_classification=rnd.choice(["RESIDENTIAL", "COMMERCIAL"]),
            meter_type="ELECTRIC",
            load_types=("EV",),
            tags=tuple(rnd.sample(["vip", "gold", "pilot", "b2b"], rnd.randint(0, 2))),
        )
        for i in range(max(1, n // 5))
    ]
    out: list[Event] = []
    for i in range(n):
        m = meters[i % len(meters)]
        kind = rnd.choice(KINDS)
        o = Obligation(
            meter_id=m.meter_id,
            program_identifier=f"PROG-{rnd.randint(0, 15)}",
            delivery_period="2026-12",
            action_type=rnd.choice(ACTION_TYPES),
            action_code=f"CODE-{rnd.randint(0, 3)}",
            action_description="Something is needed",
            deadline=NOW + timedelta(hours=rnd.randint(-48, 24 * 30)),
            meter=m,
            status="resolved" if kind == "resolved" else "open",
            opened_at=NOW - timedelta(days=3),
            first_seen=NOW - timedelta(days=3),
            last_seen=NOW,
        )
        detail = rnd.choice(["before:2d", "before:1d", "every:3", "overdue"]) if kind == "reminder" else str(i)
        out.append(
            Event(
                id=event_id(o.key, kind, 1, detail),
                kind=kind,
                occurred_at=NOW,
                obligation=o,
                detail=detail,
            )
        )
    return out


def _timed(fn: Any) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(events: int = 100_000, repeat: int = 3) -> dict[str, Any]:
    rs = ruleset()
    evs = make_events(events)
    notified = {e.obligation.key_id: {f"r{i}" for i in range(10)} for e in evs if e.kind == "resolved"}

    def route_all(router: Router) -> int:
        return sum(len(router.route(e, NOW)) for e in evs)

    route_s, targets = min(_timed(lambda: route_all(Router(rs))) for _ in range(repeat))

    def unindexed() -> int:
        router = Router(rs)
        router._fields, router._key = (), lambda ev: ()  # every rule a candidate: the plain ordered walk
        router._entries = tuple(router._entry(r) for r in rs.rules)
        return route_all(router)

    naive_s, naive_targets = _timed(unindexed)
    assert naive_targets == targets

    by_id = {e.id: e for e in evs}

    def cycles(step: timedelta | None) -> tuple[float, float, GroupBook, int]:
        """plan per batch of 1,000 (one batch per `step`) against the group heads, its write
        applied to the book as the store commits it, then the due groups flushed, as
        `cycle.route` does; step None: one burst at a single instant, nothing flushed."""
        router = Router(rs)
        book = GroupBook()
        notes = 0
        plan_s = flush_s = 0.0
        now = NOW
        gc.collect()
        for start in range(0, len(evs), BATCH):
            t0 = time.perf_counter()
            book.apply(plan(evs[start : start + BATCH], router, book.heads, notified, [], now))
            t1 = time.perf_counter()
            plan_s += t1 - t0
            if step is not None:
                result = flush(book.due(now), by_id, now, ruleset=rs)
                book.apply(result.write())
                notes += len(result.notifications)
                flush_s += time.perf_counter() - t1
                now += step
        return plan_s, flush_s, book, notes

    runs = [
        (plan_s, flush_s, notes) for plan_s, flush_s, _, notes in (cycles(timedelta(seconds=1)) for _ in range(repeat))
    ]
    plan_s, notes = min(r[0] for r in runs), runs[0][2]
    plan_and_flush_s = min(r[0] + r[1] for r in runs)
    burst_s = min(cycles(None)[0] for _ in range(repeat - 1)) if repeat > 1 else float("inf")
    last_s, _, book, _ = cycles(None)
    burst_s = min(burst_s, last_s)
    later = NOW + timedelta(hours=1)
    final_s, final = _timed(lambda: flush(book.due(later), by_id, later, ruleset=rs))
    return {
        "events": len(evs),
        "rules": 50,
        "batch": BATCH,
        "targets": targets,
        "route_events_per_s": round(len(evs) / route_s),
        "route_unindexed_events_per_s": round(len(evs) / naive_s),
        "plan_events_per_s": round(len(evs) / plan_s),
        "plan_and_flush_events_per_s": round(len(evs) / plan_and_flush_s),
        "notifications_while_cycling": notes,
        "burst_plan_events_per_s": round(len(evs) / burst_s),
        "burst_groups": len(book.heads),
        "burst_flush_seconds": round(final_s, 3),
        "burst_notifications": len(final.notifications),
        "target_events_per_s": 150_000,
        "repeat": repeat,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    tune_process()  # as `alerter run` does before routing anything
    result = run(args.events, args.repeat)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
