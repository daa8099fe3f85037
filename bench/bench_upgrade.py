"""Upgrade benchmark: the first open of a SQLite state file written before schema step 13.

`python -m bench.bench_upgrade` builds, through the store, a state of `OBLIGATIONS` open
obligations with their opening events, linked `PART` to a notification; then turns it into the
state file the version before step 13 left: every stored instant back to ISO text, the links
as a table of ids with its index by notification as it was, and each obligation's
description, meter and times in its row (steps 13, 14, 17 and 19 not applied). It times
`SqliteStore.open()` on a fresh copy of that file `RUNS` times, the migration included (each
instant rewritten once, the links numbered, the obligations' table rebuilt by key id: steps
13-19), and checks what the open left: every instant packed, every obligation readable.
Results go to bench/results/upgrade.json.
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

import orjson

from alerter.models import Event, Meter, Notification, Obligation, RoutingWrite, event_id
from alerter.store import rows, schema
from alerter.store.sqlite import SqliteStore

RESULTS = Path(__file__).resolve().parent / "results" / "upgrade.json"
OBLIGATIONS = 100_000
PART = 500
BATCH = 5_000
RUNS = 3
BEFORE = 13
"""The first schema step the state file predates (`schema._PACKED_TIMES`)."""
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _event(i: int) -> Event:
    meter = Meter(meter_id=f"meter-{i:07d}", partner_reference=f"site-{i:07d}", transmission_region="CAISO")
    o = Obligation(
        meter_id=meter.meter_id,
        program_identifier="CEC-DSGS",
        delivery_period="CEC-DSGS_2026_DEC",
        action_type="IS_AUTHORIZED",
        action_code="AUTH_0001",
        action_description="End customer must re-authorize the meter.",
        deadline=T0 + timedelta(days=30 + i % 60),
        meter=meter,
        opened_at=T0,
        first_seen=T0,
        last_seen=T0 + timedelta(seconds=i),
    )
    return Event(id=event_id(o.key, "opened", 1), kind="opened", occurred_at=o.last_seen, obligation=o)


def _whole_meter(stored: bytes, reference: str, region: str) -> bytes:
    """A meter's array as SQLite kept it before schema step 19: every attribute, as text."""
    m = rows.meter_from_row("", stored, {"partner_reference": reference, "transmission_region": region})
    attributes = (m.customer_classification, m.meter_type, m.load_types, m.tags, m.customer_group)
    return orjson.dumps(
        [m.partner_reference, m.transmission_region, *attributes, m.global_enrollment_status, m.is_archived]
    )


async def build(path: Path) -> None:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        store.set_fence(await store.try_acquire_leadership("bench"))
        for start in range(0, OBLIGATIONS, BATCH):
            events = [_event(i) for i in range(start, min(OBLIGATIONS, start + BATCH))]
            await store.commit_page([e.obligation for e in events], events)
            notes = tuple(
                Notification(
                    id=f"n-{start + k}", rule="r", receiver="ops", events=tuple(events[k : k + PART]), created_at=T0
                )
                for k in range(0, len(events), PART)
            )
            await store.commit_routing(RoutingWrite(consumed=[e.id for e in events], notifications=notes))
    finally:
        await store.close()
    with sqlite3.connect(path) as db:  # as the version before step 13 left it
        db.create_function("whole_meter", 3, _whole_meter)
        db.execute(  # step 19's forms back as they were: each description, meter and time in the row
            "UPDATE obligations SET "
            "action_description = (SELECT text FROM descriptions WHERE id = action_description), "
            "first_seen = COALESCE(first_seen, opened_at), last_seen = COALESCE(last_seen, opened_at), "
            "meter = whole_meter(meter, partner_reference, transmission_region)"
        )
        db.execute("DROP TABLE descriptions")
        db.create_function("iso", 1, lambda b: rows.iso(rows.read_ts(b)))
        for table, columns in schema.INSTANT_COLUMNS.items():
            db.execute(f"UPDATE {table} SET " + ", ".join(f"{c} = iso({c})" for c in columns))
        db.execute("CREATE TABLE links AS SELECT * FROM notification_events")  # step 17's links as they were
        db.execute("DROP VIEW notification_events")
        db.execute("DROP TABLE notification_links")
        db.execute("ALTER TABLE links RENAME TO notification_events")
        db.execute("CREATE INDEX notification_events_by_notification ON notification_events (notification_id)")
        db.execute("ALTER TABLE deliveries DROP COLUMN retry_from")  # step 16's
        db.execute("DELETE FROM schema_version WHERE version >= ?", (BEFORE,))
    db.close()
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    db.close()


async def open_once(built: Path, copy: Path) -> float:
    shutil.copy(built, copy)
    store = SqliteStore(f"sqlite:///{copy}")
    started = time.perf_counter()
    await store.open()
    took = time.perf_counter() - started
    try:
        assert len(await store.open_obligations(limit=OBLIGATIONS)) == OBLIGATIONS
    finally:
        await store.close()
    with sqlite3.connect(copy) as db:
        kinds = {k for (k,) in db.execute("SELECT DISTINCT typeof(deadline) FROM obligations")}
        version = db.execute(schema.CURRENT_VERSION).fetchone()[0]
    db.close()
    assert kinds == {"blob"} and version == len(schema.MIGRATIONS), (kinds, version)
    return took


async def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="alerter-bench-") as tmp:
        built = Path(tmp) / "built.db"
        await build(built)
        seconds = [round(await open_once(built, Path(tmp) / f"open-{n}.db"), 2) for n in range(RUNS)]
        out = {
            "obligations": OBLIGATIONS,
            "links": OBLIGATIONS,
            "file_mb": round(built.stat().st_size / 2**20),
            "median_s": statistics.median(seconds),
            "runs_s": seconds,
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    out = asyncio.run(run())
    print(
        f"first open after the upgrade to schema {len(schema.MIGRATIONS)} of a {out['file_mb']} MB state "
        f"({OBLIGATIONS:,} open obligations, their events and links): {out['median_s']} s (runs {out['runs_s']})"
    )


if __name__ == "__main__":
    main()
