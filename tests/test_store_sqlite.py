"""SQLite specifics: one alerter per file (also across processes), crash durability, URLs, migrations."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from alerter.errors import StoreError
from alerter.models import Event, Obligation, RoutingWrite, Silence
from alerter.sim import Portfolio, SimServer
from alerter.store import open_store, rows, schema
from alerter.store import sqlite as sqlite_store
from alerter.store.postgres import PostgresStore
from alerter.store.sqlite import PAGE_SIZE, SqliteStore
from alerter.store.sqlledger import LINKED_EVENTS, WAITS_FOR
from alerter.store.sqlobligations import DUE_REMINDERS, OPEN_IN_KEY_ORDER
from tests.support.channels import webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config
from tests.support.stores import (
    DEADLINE,
    T0,
    event,
    notification,
    obligation,
    opened,
    outbox,
    sqlite_state_at,
)

# A second alerter: opens the store, commits one page, says so, then waits to be killed.
CHILD = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from alerter.errors import StoreError
from alerter.models import Obligation, RoutingWrite
from alerter.models import Event, Meter, Obligation, event_id
from alerter.store import open_store

async def main() -> None:
    store = open_store(sys.argv[1])
    try:
        await store.open()
    except StoreError as err:
        print(err, flush=True)
        sys.exit(3)
    t = datetime(2026, 11, 1, tzinfo=UTC)
    o = Obligation(meter_id="m9", program_identifier="P", delivery_period="D", action_type="T",
                   action_code="C", meter=Meter(meter_id="m9"), opened_at=t, first_seen=t, last_seen=t)
    e = Event(id=event_id(o.key, "opened", 1), kind="opened", occurred_at=t, obligation=o)
    await store.commit_page([o], [e], {"watermark": "w9"})
    print("committed", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def child(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_a_second_store_on_the_same_file_refuses_to_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with opened(SqliteStore(url)):
        with pytest.raises(
            StoreError, match=rf"state file .*state\.db is in use by another alerter \(pid {os.getpid()}\)"
        ):
            await SqliteStore(url).open()
        proc = await child(url)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 3
        assert f"is in use by another alerter (pid {os.getpid()})" in out.decode()
    async with opened(SqliteStore(url)) as store:  # released on close
        assert await store.is_empty()


async def test_a_killed_process_keeps_its_commits_and_frees_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    proc = await child(url)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"committed\n"
        with pytest.raises(StoreError, match=rf"in use by another alerter \(pid {proc.pid}\)"):
            await SqliteStore(url).open()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    async with opened(SqliteStore(url)) as store:
        assert await store.get_meta("watermark") == "w9"
        assert [o.meter_id for o in await store.open_obligations()] == ["m9"]
        assert len(await store.pending_events()) == 1


async def test_wal_journal_and_idempotent_migrations(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    for _ in range(2):
        async with opened(SqliteStore(f"sqlite:///{path}")) as store:
            o = obligation()
            await store.commit_page([o], [event(o)])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [
            (v,) for v in range(1, len(schema.MIGRATIONS) + 1)
        ]
        db.execute("INSERT INTO schema_version VALUES (99)")
    db.close()
    with pytest.raises(StoreError, match=r"schema version 99 .* upgrade alerter"):
        await SqliteStore(f"sqlite:///{path}").open()


async def test_a_new_file_gets_large_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # a state file made with SQLite's default page size
        db.execute("PRAGMA page_size = 4096")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE kept (x)")
    db.close()
    for path in (new, old):
        async with opened(SqliteStore(f"sqlite:///{path}")) as store:
            o = obligation()
            await store.commit_page([o], [event(o)])
            assert list(await store.load_obligations([o.meter_id])) == [o.key]
    for path, size in ((new, PAGE_SIZE), (old, 4096)):
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA page_size").fetchone() == (size,)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()


async def test_migrating_moves_pending_group_ids_to_member_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # a state file written by a version-1 alerter
        db.execute(schema.CREATE_VERSION_TABLE)
        for statement in schema.statements(1, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (1)")
        group = "INSERT INTO groups VALUES (?, 'r1', 'ops', '{}', '2026-11-01T12:00:00.000000+00:00', NULL, ?)"
        db.execute(group, ("g1", '["e3", "e1", "e2"]'))
        db.execute(group, ("g2", "[]"))
    db.close()
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        assert [(g.key, g.pending, g.waiting) for g in await store.load_groups()] == [
            ("g1", ("e3", "e1", "e2"), True),
            ("g2", (), False),
        ]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT DISTINCT pending FROM groups").fetchall() == [("[]",)]
    db.close()


async def test_migrating_keeps_told_rows_and_links_clustered_on_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "v10.db"
    with sqlite_state_at(path, 10) as db:  # a state file written by a version-10 alerter
        db.executemany("INSERT INTO notified VALUES (?, ?)", [("k2", "ops"), ("k1", "ops"), ("k1", "crm")])
        links = [("e2", "n1", 1), ("e1", "n1", 0), ("e1", "n2", 0)]
        db.executemany("INSERT INTO notification_events VALUES (?, ?, ?)", links)
        db.executemany(  # what they link (step 17 keeps the links of stored events and notifications)
            "INSERT INTO events (id, key_id, meter_id, kind, occurred_at, initial, payload) "
            "VALUES (?, 'k1', 'm1', 'opened', '2026-01-01T00:00:00Z', 1, '{}')",
            [("e1",), ("e2",)],
        )
        db.executemany(
            "INSERT INTO notifications VALUES (?, 'notification', 'r', 'ops', '2026-01-01T00:00:00Z', '{}')",
            [("n1",), ("n2",)],
        )
    db.close()
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        assert await store.notified_receivers(["k1", "k2", "k3"]) == {"k1": {"ops", "crm"}, "k2": {"ops"}}
        store.set_fence(1)
        await store.commit_routing(RoutingWrite(consumed=(), told=[("k1", "ops"), ("k3", "ops")]))
        assert await store.notified_receivers(["k1", "k3"]) == {"k1": {"ops", "crm"}, "k3": {"ops"}}
    with sqlite3.connect(path) as db:
        names = "('notified', 'notification_links')"  # since step 17 the links' own table
        tables = dict(db.execute(f"SELECT name, sql FROM sqlite_schema WHERE name IN {names}"))
        assert all("WITHOUT ROWID" in sql for sql in tables.values()) and len(tables) == 2
        assert db.execute("SELECT * FROM notification_events ORDER BY notification_id, position").fetchall() == [
            ("e1", "n1", 0),
            ("e2", "n1", 1),
            ("e1", "n2", 0),
        ]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


async def test_group_members_keep_their_order_across_the_migration_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "v11.db"
    with sqlite_state_at(path, 11) as db:  # a state file written by a version-11 alerter
        group = "INSERT INTO groups VALUES (?, 'r1', 'ops', '{}', '2026-11-01T12:00:00.000000+00:00', NULL, '[]')"
        db.executemany(group, [("g1",), ("g2",)])
        members = [("g1", "e9"), ("g2", "e8"), ("g1", "e1"), ("g2", "e2"), ("g1", "e5")]
        db.executemany("INSERT INTO group_members (group_key, event_id) VALUES (?, ?)", members)
    db.close()

    async def append(*members: tuple[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        async with opened(SqliteStore(f"sqlite:///{path}")) as store:
            store.set_fence(1)
            await store.commit_routing(RoutingWrite(consumed=(), appended=list(members)))
            return [(g.key, g.pending) for g in await store.load_groups()]

    assert await append(("g2", "e3"), ("g1", "e4"), ("g1", "e1")) == [  # e1 is there already
        ("g1", ("e9", "e1", "e5", "e4")),
        ("g2", ("e8", "e2", "e3")),
    ]
    assert await append(("g1", "e0")) == [("g1", ("e9", "e1", "e5", "e4", "e0")), ("g2", ("e8", "e2", "e3"))]
    with sqlite3.connect(path) as db:
        assert "WITHOUT ROWID" in db.execute("SELECT sql FROM sqlite_schema WHERE name = 'group_members'").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


async def test_relative_absolute_and_memory_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///./rel.db")
    assert isinstance(relative, SqliteStore) and relative.path == "./rel.db"
    async with opened(relative):
        assert (tmp_path / "rel.db").exists() and (tmp_path / "rel.db.lock").exists()
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == f"{tmp_path}/abs.db"
    memory = open_store("sqlite://:memory:")
    async with opened(memory):
        await memory.commit_page([obligation()], [], {"k": "v"})
        assert await memory.get_meta("k") == "v"
        assert await memory.try_acquire_leadership("me") == 1
        assert await memory.still_leader()
    assert sorted(os.listdir(tmp_path)) == ["rel.db", "rel.db.lock"]


async def test_bad_urls_and_places_say_so_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported state url scheme 'mysql'"):
        open_store("mysql://u:hunter2@db/x")
    with pytest.raises(StoreError) as err:
        open_store("u:hunter2@db/x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(StoreError, match="invalid SQLite state url"):
        open_store("sqlite://relative.db")
    with pytest.raises(StoreError, match="cannot open state file"):
        await SqliteStore(f"sqlite:///{tmp_path}/missing/dir/state.db").open()
    pg = open_store("postgres://alerter:hunter2@127.0.0.1:5432/alerter")
    assert isinstance(pg, PostgresStore) and "hunter2" not in pg.url
    assert pg.url == "postgres://alerter:***@127.0.0.1:5432/alerter"


async def test_a_store_that_is_not_open_says_so() -> None:
    with pytest.raises(StoreError, match="is not open"):
        await SqliteStore("sqlite:///nowhere.db").get_meta("x")


async def test_a_page_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    """commit_page runs as one transaction in one trip to the connection's thread."""
    path = tmp_path / "state.db"
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        with sqlite3.connect(path) as db:  # the events insert fails after the obligations went in
            db.execute("CREATE TRIGGER boom BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'boom'); END")
        db.close()
        a, b = obligation("m1"), obligation("m2")
        with pytest.raises(StoreError, match="boom"):
            await store.commit_page([a, b], [event(a), event(b)], {"watermark": "w1"})
        assert await store.load_obligations(["m1", "m2"]) == {}
        assert await store.get_meta("watermark") is None
        assert await store.pending_events() == []
        with sqlite3.connect(path) as db:
            db.execute("DROP TRIGGER boom")
        db.close()
        assert await store.commit_page([a, b], [event(a), event(b)], {"watermark": "w1"}) == 2
        assert set(await store.load_obligations(["m1", "m2"])) == {a.key, b.key}
        assert await store.get_meta("watermark") == "w1"
        with pytest.raises(ValueError, match="naive"):  # rows are built before the transaction starts
            await store.commit_page([obligation("m3", deadline=datetime(2026, 1, 1))], [])
        assert await store.commit_page([obligation("m3")], []) == 0


async def test_rows_bound_a_few_hundred_a_statement_keep_their_order_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's rows go in several multi-row statements (the last one shorter): rows keep their
    order, one already stored is not counted again, an obligation written again is updated."""
    monkeypatch.setattr(sqlite_store, "ROWS_PER_STATEMENT", 7)
    async with opened(SqliteStore(f"sqlite:///{tmp_path / 'state.db'}")) as store:
        obligations = [obligation(f"m{i:02}") for i in range(30)]
        events = [event(o) for o in obligations]
        assert await store.commit_page(obligations, events) == 30
        assert [e.id for e in await store.pending_events(100)] == [e.id for e in events]
        assert await store.commit_page(obligations[:3], [events[12], *events[:3]]) == 0  # all stored already
        changed = [replace(o, version=2, action_description="Sign again.") for o in obligations[5:20]]
        assert await store.commit_page([*changed, *obligations[:2]], [event(o, "changed") for o in changed]) == 15
        stored = await store.load_obligations([o.meter_id for o in obligations])
        assert sorted(o.meter_id for o in stored.values() if o.version == 2) == [f"m{i:02}" for i in range(5, 20)]
        assert all(o.action_description == "Sign again." for o in stored.values() if o.version == 2)
        routed = RoutingWrite(consumed=(), appended=[("g", e.id) for e in reversed(events)] + [("g", events[0].id)])
        await store.commit_routing(routed)
        with sqlite3.connect(tmp_path / "state.db") as db:
            members = [r[0] for r in db.execute("SELECT event_id FROM group_members ORDER BY seq")]
        db.close()
        assert members == [e.id for e in reversed(events)]


async def test_the_instance_starting_on_a_file_releases_every_lease(tmp_path: Path) -> None:
    """One alerter per file: whatever holds a lease when an instance starts died mid-send."""
    from tests.support.stores import T0, notification, outbox

    url = f"sqlite:///{tmp_path / 's.db'}"
    async with opened(SqliteStore(url)) as store:
        await outbox(store, *[notification(f"n{i}", [event(obligation())]) for i in range(3)])
        await store.start_instance("killed", T0)
        assert len(await store.claim_deliveries(T0, "killed", 2, 300)) == 2
    async with opened(SqliteStore(url)) as store:
        assert await store.start_instance("next", T0) == 2
        assert [d.notification.id for d in await store.claim_deliveries(T0, "next", 10, 300)] == ["n0", "n1", "n2"]


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name IN ('obligations', 'events')"
        )
        return {r[0] for r in found}


async def test_an_initial_bulk_load_builds_the_deferred_indexes_at_its_end_or_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    full = _indexes(path)
    assert {"obligations_by_deadline", "obligations_remind_at", "events_meter"} <= full
    async with store.bulk_load():
        assert _indexes(path) == set()
        a = obligation("m1", deadline=datetime(2026, 12, 1, tzinfo=UTC))
        await store.commit_page([a], [event(a)])
    assert _indexes(path) == full
    assert (await store.load_obligations(["m1"]))[a.key] == a

    async with store.bulk_load():  # the state holds obligations: nothing is deferred
        assert _indexes(path) == full

    other = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await other.open()
    bulk = other.bulk_load()
    await bulk.__aenter__()  # a process stopped midway through its initial sync
    await other.commit_page([a], [event(a)])
    await other.close()
    assert _indexes(tmp_path / "t.db") == set()
    again = SqliteStore(f"sqlite:///{tmp_path}/t.db")
    await again.open()
    assert _indexes(tmp_path / "t.db") == full
    assert await again.get_meta("deferred_indexes") is None
    await again.close()
    await store.close()


DUE_ARGS = ("2026-12-01", 1000)
PAGE_ARGS = ("0", 100)


def _plan(path: Path, sql: str, args: tuple[object, ...]) -> list[str]:
    with sqlite3.connect(path) as raw:
        return [r[-1] for r in raw.execute(f"EXPLAIN QUERY PLAN {sqlite_store._sqlite_sql(sql)}", args)]


_BY_ITS_INDEX = [
    "SEARCH obligations USING INDEX obligations_remind_at (remind_at<?)",
    "CORRELATED SCALAR SUBQUERY 1",  # a description by its number
    "SEARCH descriptions USING INTEGER PRIMARY KEY (rowid=?)",
]


def _status_led(sql: str) -> str:
    """The same query with its status test open to an index (as it was written before)."""
    return sql.replace("status || '' = 'open'", "status = 'open'")


SAMPLED = {  # what a sampled ANALYZE (`analysis_limit`) left on a 61,288-obligation `silent` state
    "obligations_by_deadline": "53808 1001 1001 1",
    "obligations_by_reference": "62244 2",
    "obligations_by_region": "61311 1001 1001 1001",
    "obligations_by_type": "71456 1001 1001 1001",
    "obligations_meters": "61420 2 2",
    "obligations_remind_at": "250100 1001",
    "sqlite_autoindex_obligations_1": "44992 1",
}


async def _with_sampled_statistics(path: Path) -> list[Obligation]:
    """50 open obligations in a state file whose statistics are those of `SAMPLED`."""
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        obs = [obligation(f"m{i}") for i in range(50)]
        await store.commit_page(obs, [event(o) for o in obs])
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM sqlite_stat1")
        raw.executemany("INSERT INTO sqlite_stat1 VALUES ('obligations', ?, ?)", SAMPLED.items())
    return obs


async def test_the_reminders_query_reads_only_what_is_due_whatever_the_sampled_statistics_say(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    obs = await _with_sampled_statistics(path)
    assert "USE TEMP B-TREE FOR ORDER BY" in _plan(
        path, _status_led(DUE_REMINDERS["sqlite"]), DUE_ARGS
    )  # every open one
    assert _plan(path, DUE_REMINDERS["sqlite"], DUE_ARGS) == _BY_ITS_INDEX
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        due = await store.reminder_candidates(datetime(2100, 1, 1, tzinfo=UTC))
        assert sorted(o.meter_id for o in due) == sorted(o.meter_id for o in obs)


async def test_a_page_of_open_obligations_is_read_in_key_order_whatever_the_sampled_statistics_say(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    obs = await _with_sampled_statistics(path)
    assert "USE TEMP B-TREE FOR ORDER BY" in _plan(
        path, _status_led(OPEN_IN_KEY_ORDER["sqlite"]), PAGE_ARGS
    )  # every open one
    assert _plan(path, OPEN_IN_KEY_ORDER["sqlite"], PAGE_ARGS)[0] == (
        "SEARCH obligations USING INDEX sqlite_autoindex_obligations_1 (key_id>?)"
    )
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        page = await store.open_obligations(obs[0].key_id, 100)
    assert [o.key_id for o in page] == sorted(o.key_id for o in obs if o.key_id > obs[0].key_id)


def _statistics(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {r[0] for r in raw.execute("SELECT idx FROM sqlite_stat1 WHERE tbl = 'obligations'")}


async def test_the_planner_has_statistics_after_an_initial_sync_and_at_every_open(tmp_path: Path) -> None:
    # without them, the console's meter search reads every open obligation
    path = tmp_path / "s.db"
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        async with store.bulk_load():
            obs = [obligation(f"m{i}") for i in range(300)]
            await store.commit_page(obs, [event(o) for o in obs])
        assert {"obligations_remind_at", "obligations_by_reference"} <= _statistics(path)
        assert _plan(path, DUE_REMINDERS["sqlite"], DUE_ARGS) == _BY_ITS_INDEX
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE sqlite_stat1")  # a file whose statistics were never gathered
    async with opened(SqliteStore(f"sqlite:///{path}")):
        assert {"obligations_remind_at", "obligations_by_reference"} <= _statistics(path)


async def test_migrating_packs_every_stored_instant_and_reads_each_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    due = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    early, late = obligation("m1", deadline=due), obligation("m2", deadline=DEADLINE)
    gone = replace(obligation("m3"), status="resolved", resolution="cleared", resolved_at=T0, version=2)
    silence = Silence(id="s1", matchers={"region": "CAISO"}, starts_at=T0, ends_at=DEADLINE, reason="r", created_at=T0)

    async def state(store: SqliteStore) -> tuple[object, ...]:
        return (
            await store.load_obligations(["m1", "m2", "m3"]),
            await store.reminder_candidates(T0),
            await store.count_open(),
            await store.pending_events(),
            await store.dead_letters(),
            await store.list_silences(T0),
            await store.oldest_undelivered(),
        )

    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        assert isinstance(store, SqliteStore)
        store.set_fence(1)
        await store.commit_page([late, early, gone], [event(early), event(late, at=due)])
        await outbox(store, notification("n1", [event(early)], at=due))
        await store.add_silence(silence)
        await store.start_instance("me", T0)
        [claimed] = await store.claim_deliveries(DEADLINE, "me", 10, 60.0)
        await store.mark_failed(claimed.notification.id, "ops", "boom", None, T0)
        before = await state(store)
    with sqlite3.connect(path) as db:  # as the version before wrote them: ISO text
        db.create_function("iso", 1, lambda b: rows.iso(rows.read_ts(b)))
        for table, columns in schema.INSTANT_COLUMNS.items():
            db.execute(f"UPDATE {table} SET " + ", ".join(f"{c} = iso({c})" for c in columns))
        db.execute("DELETE FROM schema_version WHERE version >= 13")  # the step that packs them, and those after
        db.execute("ALTER TABLE deliveries DROP COLUMN retry_from")  # step 16's (steps 13-15 can run again)
        _links_as_before_step_17(db)
        assert db.execute("SELECT typeof(deadline) FROM obligations").fetchall() == [("text",)] * 3
    db.close()
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        assert isinstance(store, SqliteStore)
        assert await state(store) == before
    with sqlite3.connect(path) as db:
        kinds = {
            (table, c): {k for (k,) in db.execute(f"SELECT DISTINCT typeof({c}) FROM {table} WHERE {c} IS NOT NULL")}
            for table, columns in schema.INSTANT_COLUMNS.items()
            for c in columns
        }
        assert all(k == {"blob"} for k in kinds.values() if k)
        kept = {
            ("obligations", "deadline"),
            ("obligations", "resolved_at"),
            ("obligations", "remind_at"),
            ("events", "occurred_at"),
            ("notifications", "created_at"),
            ("deliveries", "updated_at"),
            ("silences", "ends_at"),
            ("instances", "last_seen"),
        }
        assert kept <= {k for k, v in kinds.items() if v}
        assert db.execute("SELECT length(deadline) FROM obligations").fetchall() == [(8,)] * 3
        in_order = db.execute("SELECT meter_id FROM obligations ORDER BY deadline, meter_id").fetchall()
        assert in_order == [("m1",), ("m2",), ("m3",)]
    db.close()


def _links_as_before_step_17(db: sqlite3.Connection) -> None:
    """A notification's links back in the table of two ids that schema step 17 replaces."""
    db.execute("CREATE TABLE links AS SELECT * FROM notification_events")
    db.execute("DROP VIEW notification_events")
    db.execute("DROP TABLE notification_links")
    db.execute("ALTER TABLE links RENAME TO notification_events")
    db.execute("CREATE INDEX notification_events_by_notification ON notification_events (notification_id, position)")


async def _two_notifications(path: Path) -> list[Event]:
    """A state of five events, linked by "n1" (all of them, the last first) and "n2" (the first two)."""
    events = [event(obligation(f"m{i}")) for i in range(5)]
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        await store.commit_page([e.obligation for e in events], events)
        await outbox(store, notification("n1", events[::-1]), notification("n2", events[:2]))
    return events


async def test_migrating_numbers_the_links_and_keeps_each_notifications_events_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    events = await _two_notifications(path)
    with sqlite3.connect(path) as db:  # as a version-16 alerter left them
        _links_as_before_step_17(db)
        db.execute("INSERT INTO notification_events VALUES ('gone', 'n1', 9)")  # an event since forgotten
        db.execute("UPDATE notification_events SET position = NULL WHERE notification_id = 'n2'")  # before step 6
        db.execute("UPDATE notification_events SET position = 0 WHERE notification_id = 'n1' AND position = 1")
        db.execute("DELETE FROM schema_version WHERE version >= 17")
    db.close()
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        claimed = await store.claim_deliveries(DEADLINE, "me", 10, 60.0)
        first, *rest = {d.notification.id: d.notification.events for d in claimed}["n1"]
        assert first in events[:-3:-1] and rest == events[-3::-1]  # one of the two at its first place kept
        outcomes = [h.outcomes for h in await store.history("m1")]
        assert outcomes == [("notified ops in n1 (pending)", "notified ops in n2 (pending)")]
    with sqlite3.connect(path) as db:
        low, high = sorted([events[0].id, events[1].id])  # numbered below zero, by event id
        unplaced = "SELECT position, event_id FROM notification_events WHERE notification_id = 'n2' ORDER BY position"
        assert db.execute(unplaced).fetchall() == [(-2, high), (-1, low)]
        assert db.execute("SELECT COUNT(*) FROM notification_links").fetchone() == (6,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


async def test_a_drain_reads_a_notifications_links_in_order_through_their_key_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    events = await _two_notifications(path)
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        claimed = await store.claim_deliveries(DEADLINE, "me", 10, 60.0)
        assert {d.notification.id: d.notification.events for d in claimed} == {
            "n1": tuple(events[::-1]),
            "n2": tuple(events[:2]),
        }
    links = LINKED_EVENTS["sqlite"].format(notifications="IN (SELECT value FROM json_each($1))")
    plan = _plan(path, links, ('["n1", "n2"]',))
    assert "SEARCH l USING PRIMARY KEY (notification_seq=?)" in plan
    assert not any("TEMP B-TREE" in step for step in plan)  # read in order, not sorted


async def test_a_notification_waiting_behind_another_reads_its_obligations_events_not_the_backlog(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    events = await _two_notifications(path)
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        o = events[0].obligation
        found = await store.waits_for("ops", "n-later", DEADLINE, [(o.meter_id, o.key_id)])
        assert found is not None and found[0] in {"n1", "n2"}
        assert await store.waits_for("ops", "n-later", T0 - timedelta(days=1), [(o.meter_id, o.key_id)]) is None
    fresh = tmp_path / "fresh.db"  # the plan without statistics (a tiny state's would scan its two rows)
    async with opened(SqliteStore(f"sqlite:///{fresh}")):
        pass
    ids = "IN (SELECT value FROM json_each($1))"
    sql = WAITS_FOR["sqlite"].format(meters=ids, keys=ids.replace("$1", "$2"))
    plan = _plan(fresh, sql, ('["m"]', '["k"]', "ops", "n", b"\x80"))
    # from the obligations' events, each delivery by its key: never from the receiver's pending
    # rows, which a backlog makes many
    assert plan[0] == "SEARCH e USING INDEX events_meter (meter_id=?)", plan
    assert "SEARCH d USING INDEX sqlite_autoindex_deliveries_1 (notification_id=? AND receiver=?)" in plan, plan


async def test_a_state_command_on_a_path_with_no_state_says_so_and_makes_none(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/typo.db", shared=True)
    with pytest.raises(StoreError, match=f"no state file at {tmp_path}/typo.db: check state.url"):
        await store.open()
    assert not (tmp_path / "typo.db").exists()


def test_a_state_file_that_cannot_be_opened_leaves_no_thread_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a short CLI command opens the file shared (no lock file first): the open fails in
    # aiosqlite's thread, and the command's event loop closes right after its one-line error
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))

    (tmp_path / "state.db").mkdir()  # there, but not a file SQLite can open

    async def fail() -> None:
        store = open_store(f"sqlite:///{tmp_path}/state.db", shared=True)
        with pytest.raises(StoreError, match="cannot open state file"):
            await store.open()

    for _ in range(20):
        asyncio.run(fail())
    time.sleep(0.2)
    assert errors == []


def _pages(path: Path) -> tuple[int, int]:
    """(pages, free pages) of a state file, as its last commit left them."""
    with sqlite3.connect(path) as db:
        pages, free = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA freelist_count").fetchone()[0]
    db.close()
    return int(pages), int(free)


async def test_a_routing_pass_gives_back_the_pages_its_flushed_members_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "TIDY_PAGES", 1)  # a small state: its file's sixteenth decides
    monkeypatch.setattr(sqlite_store, "TIDY_CHUNK", 4)  # given back a few pages a transaction
    p = Portfolio(1500, action_rate=1.0, seed=3)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        state = tmp_path / "s.db"
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{state}"), rules_yaml(hook.url()))
        async with running(load(cfg)) as service:
            await service.run_cycle(flush_all=True)  # every obligation's opening, through its group
            assert (await service.drain(10)).undelivered == 0
            pages, free = _pages(state)
    assert len(hook.delivered()) >= 3 and pages > 100
    assert free == 0


async def test_a_file_made_without_incremental_vacuum_keeps_its_free_pages(tmp_path: Path) -> None:
    path = tmp_path / "v12.db"
    with sqlite_state_at(path, 12) as db:  # made by an earlier version: no incremental vacuum
        pass
    db.close()
    members = [("g", f"{i:032x}") for i in range(20_000)]
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        await store.commit_routing(RoutingWrite(consumed=(), appended=members))
        await store.commit_routing(RoutingWrite(consumed=(), flushed=members))
        before = _pages(path)
        await store.tidy()
        assert _pages(path) == before and before[1] > sqlite_store.TIDY_PAGES


async def test_migrating_keys_obligations_by_id_and_reads_what_earlier_versions_wrote(tmp_path: Path) -> None:
    path = tmp_path / "v18.db"
    seen = replace(obligation("m1", "AUTH_1"), last_seen=T0 + timedelta(days=1))
    other = obligation("m2", "AUTH_2", action_description="12")  # a description that reads as a number
    with sqlite_state_at(path, 18) as db:  # rows as a version-18 alerter wrote them
        for o in (seen, other):
            m = o.meter
            whole = orjson.dumps([m.partner_reference, m.transmission_region, *orjson.loads(rows.meter_row(m))])
            db.execute(
                "INSERT INTO obligations VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?)",
                [
                    *(*o.key, o.key_id, o.action_description, rows.instant(o.deadline), whole),
                    *(rows.instant(t) for t in (o.opened_at, o.first_seen, o.last_seen, T0)),
                    *(m.partner_reference, m.transmission_region),
                ],
            )
    db.close()
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        assert await store.load_obligations(["m1", "m2"]) == {seen.key: seen, other.key: other}
        assert await store.open_obligations() == sorted([seen, other], key=lambda o: o.key_id)
        changed = replace(other, action_description="Sign the agreement.", version=2)
        await store.commit_page([changed], [])  # written as this version writes it
        assert await store.load_obligations(["m2"]) == {changed.key: changed}
        await store.commit_page([changed], [])  # the same key: one row, updated
    with sqlite3.connect(path) as db:
        [(stored, first_seen, count)] = db.execute(
            "SELECT typeof(action_description), first_seen, (SELECT COUNT(*) FROM obligations) FROM obligations "
            "WHERE meter_id = 'm2'"
        ).fetchall()
        assert (stored, first_seen, count) == ("integer", None, 2)  # its number; not `opened_at` again
        assert db.execute("SELECT text FROM descriptions").fetchall() == [("Sign the agreement.",)]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
