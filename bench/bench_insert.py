"""Insert benchmark: a poll's obligation rows written the way the SQLite store writes them
(`_insert_rows`: a few hundred rows per statement) against row by row (`executemany`), each
alone and beside a busy main thread.

`python -m bench.bench_insert` writes obligation rows (built by the store's own
`sqlite.obligation_row`) into a fresh state file with its full schema (all of an incremental
cycle's indexes; an initial sync writes without the secondary ones), in transactions of
2,500 rows, from a
worker thread as the store's connection thread does; "beside a busy thread", the main thread
runs Python code meanwhile (as it decodes pages during a poll's commit). Row by row beside a
busy thread is so slow that it writes fewer rows; every figure is µs per row. "In key order"
writes each transaction's rows sorted by primary key, as the store's page commit does. The
thread writes at the switch interval the product sets (`alerter.tuning`), and once more, multi-row
beside a busy thread, at the interpreter's default (5 ms): every statement gives the GIL up,
and taking it back waits for the busy thread to be asked to let go.
Results go to bench/results/insert.json.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerter.models import Meter, Obligation
from alerter.store import sqlite as sqlite_store
from alerter.store.sqlite import SqliteStore
from alerter.tuning import SWITCH_INTERVAL

DEFAULT_SWITCH_INTERVAL = 0.005
"""The interpreter's own switch interval, beside the product's (`SWITCH_INTERVAL`)."""
RESULTS = Path(__file__).resolve().parent / "results" / "insert.json"
ROWS = 100_000
ROWS_BESIDE_BUSY_ONE_BY_ONE = 2_000
BATCH = 2_500


def obligation_rows(n: int) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        meter = Meter(meter_id=str(uuid.uuid4()), partner_reference="site-1", transmission_region="CAISO")
        ob = Obligation(
            meter_id=meter.meter_id,
            program_identifier="CEC-DSGS",
            delivery_period="CEC-DSGS_2026_DEC",
            action_type="IS_AUTHORIZED",
            action_code="AUTH_0001",
            action_description="End customer must re-authorize meter.",
            deadline=now,
            meter=meter,
            opened_at=now,
            first_seen=now,
            last_seen=now,
        )
        out.append(sqlite_store.obligation_row(ob, now))
    return out


def fresh_file(tmp: Path, name: str) -> sqlite3.Connection:
    path = tmp / f"{name}.db"

    async def create() -> None:  # the product's schema and page size
        store = SqliteStore(f"sqlite:///{path}")
        await store.open()
        await store.close()

    asyncio.run(create())
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA cache_size = -16384"):
        db.execute(pragma)
    return db


def write(db: sqlite3.Connection, data: list[tuple[Any, ...]], multi_row: bool, ordered: bool = False) -> None:
    sql = sqlite_store._UPSERT_OBLIGATION_Q
    texts = {r[sqlite_store._DESCRIPTION - 1] for r in data}  # what the upsert looks a number up in
    db.executemany(sqlite_store._ADD_DESCRIPTION, [(t,) for t in texts])
    for i in range(0, len(data), BATCH):
        db.execute("BEGIN IMMEDIATE")
        if ordered:  # as the store's page commit does: each transaction's rows in key order
            sqlite_store._commit_page(db, data[i : i + BATCH], set(), [], [])
        elif multi_row:
            sqlite_store._insert_rows(db, sql, data[i : i + BATCH])
        else:
            db.executemany(sql, data[i : i + BATCH])
        db.execute("COMMIT")


def measure(
    tmp: Path,
    data: list[tuple[Any, ...]],
    multi_row: bool,
    busy: bool,
    ordered: bool = False,
    switch: float = SWITCH_INTERVAL,
) -> float:
    """µs per row, written from a worker thread while the main thread idles or spins, at the
    interpreter's switch interval `switch` (the product's, set by `tune_process`, by default)."""
    name = f"{'multi' if multi_row else 'single'}-{'busy' if busy else 'alone'}{'-ordered' if ordered else ''}"
    db = fresh_file(tmp, name)
    took: list[float] = []
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch)

    def worker() -> None:
        started = time.perf_counter()
        write(db, data, multi_row, ordered)
        took.append(time.perf_counter() - started)

    thread = threading.Thread(target=worker)
    thread.start()
    while busy and thread.is_alive():
        sum(range(1000))  # Python code holding the GIL, as a page's decode and diff do
    thread.join()
    sys.setswitchinterval(before)
    db.close()
    return round(took[0] / len(data) * 1e6, 2)


def run() -> dict[str, Any]:
    data = obligation_rows(ROWS)
    with tempfile.TemporaryDirectory(prefix="alerter-bench-") as tmp:
        out = {
            "rows": ROWS,
            "rows_one_by_one_beside_busy": ROWS_BESIDE_BUSY_ONE_BY_ONE,
            "us_per_row": {
                "multi_row_alone": measure(Path(tmp), data, True, False),
                "multi_row_in_key_order_alone": measure(Path(tmp), data, True, False, ordered=True),
                "one_by_one_alone": measure(Path(tmp), data, False, False),
                "multi_row_beside_busy_thread": measure(Path(tmp), data, True, True),
                "multi_row_beside_busy_thread_at_5_ms_switch": measure(
                    Path(tmp), data, True, True, switch=DEFAULT_SWITCH_INTERVAL
                ),
                "one_by_one_beside_busy_thread": measure(Path(tmp), data[:ROWS_BESIDE_BUSY_ONE_BY_ONE], False, True),
            },
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    out = run()
    print(", ".join(f"{k.replace('_', ' ')}: {v} µs/row" for k, v in out["us_per_row"].items()))


if __name__ == "__main__":
    main()
