"""Retention benchmark: one purge of a SQLite state holding a backlog, with and without the
query planner's statistics.

`python -m bench.bench_purge` builds, through the store, a state of `OLD` obligations resolved
long ago (each with its opening and its resolution, routed and sent), `WAITING` of those events
still members of a group, and `PENDING` notifications not yet delivered; then times
`store.purge` (and the statistics it refreshes) on a fresh copy of that file `RUNS` times each
way: as the store plans after opening it, and with its statistics dropped (a file whose
statistics were never gathered). Each run must remove the same rows. Once, for comparison,
the old events are selected by the correlated form PostgreSQL runs (`NOT EXISTS`, one search
of the members per event) on a copy without statistics. Results go to bench/results/purge.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from msgspec.structs import replace

from alerter.models import Event, GroupState, Meter, Notification, Obligation, RoutingWrite, event_id
from alerter.store import retention, rows
from alerter.store.sqlite import SqliteStore, _sqlite_sql

RESULTS = Path(__file__).resolve().parent / "results" / "purge.json"
OLD = 25_000
WAITING = 20_000
PENDING = 50
RUNS = 3
BATCH = 2_500
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _events(i: int) -> list[Event]:
    meter = Meter(meter_id=f"meter-{i:07d}", partner_reference=f"site-{i:07d}", transmission_region="CAISO")
    opened = Obligation(
        meter_id=meter.meter_id,
        program_identifier="CEC-DSGS",
        delivery_period="CEC-DSGS_2026_DEC",
        action_type="IS_AUTHORIZED",
        action_code="AUTH_0001",
        deadline=T0 + timedelta(days=30),
        meter=meter,
        opened_at=T0,
        first_seen=T0,
        last_seen=T0,
    )
    day = T0 + timedelta(days=1)
    done = replace(opened, status="resolved", resolution="cleared", resolved_at=day, last_seen=day, version=2)
    return [
        Event(id=event_id(opened.key, "opened", 1), kind="opened", occurred_at=T0, obligation=opened),
        Event(id=event_id(done.key, "resolved", 2), kind="resolved", occurred_at=done.last_seen, obligation=done),
    ]


async def build(path: Path) -> None:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        store.set_fence(await store.try_acquire_leadership("bench"))
        group = GroupState(key="g", rule="r", receiver="ops", values={}, flush_at=T0 + timedelta(days=400))
        waiting = 0
        for start in range(0, OLD, BATCH):
            events = [e for i in range(start, min(OLD, start + BATCH)) for e in _events(i)]
            await store.commit_page([e.obligation for e in events[1::2]], events)
            members = [("g", e.id) for e in events[1::2][: max(0, WAITING - waiting)]]
            waiting += len(members)
            await store.commit_routing(
                RoutingWrite(consumed=[e.id for e in events], groups=[group] if members else (), appended=members)
            )
        notes = [
            Notification(id=f"pending-{i}", rule="r", receiver="ops", events=tuple(_events(i)[:1]), created_at=T0)
            for i in range(PENDING)
        ]
        await store.commit_routing(RoutingWrite(consumed=(), notifications=notes))
    finally:
        await store.close()


async def purge_once(built: Path, copy: Path, with_statistics: bool) -> tuple[float, dict[str, int]]:
    shutil.copy(built, copy)
    store = SqliteStore(f"sqlite:///{copy}")
    await store.open()
    try:
        store.set_fence(await store.try_acquire_leadership("bench"))
        if not with_statistics:
            with sqlite3.connect(copy) as raw:  # the store's connection reloads the schema: none left
                raw.execute("DROP TABLE sqlite_stat1")
        started = time.perf_counter()
        removed = await store.purge(T0 + timedelta(days=200))
        return time.perf_counter() - started, removed
    finally:
        await store.close()


def correlated(built: Path, copy: Path) -> float:
    """Seconds to select the old events by the correlated form (PostgreSQL's, `NOT EXISTS`),
    run once on SQLite without statistics: the search per event that SQLite's form avoids."""
    shutil.copy(built, copy)
    with sqlite3.connect(copy) as raw:
        raw.execute("DROP TABLE sqlite_stat1")
    with sqlite3.connect(copy) as raw:
        started = time.perf_counter()
        sql = _sqlite_sql(f"SELECT COUNT(*) FROM events WHERE {retention._OLD_EVENTS}")
        raw.execute(sql, (rows.instant(T0 + timedelta(days=200)),)).fetchone()
        return round(time.perf_counter() - started, 1)


async def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="alerter-bench-") as tmp:
        built = Path(tmp) / "built.db"
        await build(built)
        out: dict[str, Any] = {"old_obligations": OLD, "events_waiting_in_a_group": WAITING, "pending": PENDING}
        removed_once: dict[str, int] | None = None
        for label, with_statistics in (("with_statistics", True), ("without_statistics", False)):
            seconds = []
            for n in range(RUNS):  # each on a file of its own (a used one leaves its WAL behind)
                took, removed = await purge_once(built, Path(tmp) / f"{label}-{n}.db", with_statistics)
                assert removed_once is None or removed == removed_once, (removed, removed_once)
                removed_once = removed
                seconds.append(round(took, 3))
            out[label] = {"median_s": statistics.median(seconds), "runs_s": seconds}
        out["removed"] = removed_once
        out["correlated_form_without_statistics_s"] = correlated(built, Path(tmp) / "correlated.db")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    out = asyncio.run(run())
    print(
        f"purge of {OLD:,} old obligations ({out['removed']['events']:,} events removed), {WAITING:,} events "
        f"waiting in a group, {PENDING} pending: {out['with_statistics']['median_s']} s with the planner's "
        f"statistics, {out['without_statistics']['median_s']} s without (runs {out['with_statistics']['runs_s']}, "
        f"{out['without_statistics']['runs_s']}); the correlated form (PostgreSQL's) without statistics: "
        f"{out['correlated_form_without_statistics_s']} s to select them"
    )


if __name__ == "__main__":
    main()
