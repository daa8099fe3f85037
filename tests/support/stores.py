"""Opened stores for tests: SQLite in a temporary directory, PostgreSQL in a throwaway schema.

PostgreSQL tests read ALERTER_TEST_POSTGRES_URL (set by `scripts/with-postgres.sh`) and
are skipped, with the reason, when it is unset or the server does not answer.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from alerter.models import Event, EventKind, Meter, Notification, Obligation, RoutingWrite, event_id
from alerter.store import rows, schema
from alerter.store.base import Store
from alerter.store.postgres import PostgresStore
from alerter.store.sqlite import SqliteStore

POSTGRES_ENV = "ALERTER_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgres")

_probe: dict[str, str | None] = {}


async def postgres_url_or_skip() -> str:
    """The test server's URL, or skip the calling test saying why there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (run the tests through scripts/with-postgres.sh)")
    if url not in _probe:
        try:
            conn = await asyncpg.connect(url, timeout=3)
            await conn.close()
            _probe[url] = None
        except (OSError, TimeoutError, asyncpg.PostgresError) as err:
            _probe[url] = f"PostgreSQL at {POSTGRES_ENV} is unreachable: {err}"
    reason = _probe[url]
    if reason:
        pytest.skip(reason)
    return url


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """(url, schema): a fresh schema, dropped afterwards."""
    url = await postgres_url_or_skip()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield url, schema
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@asynccontextmanager
async def opened(store: Store) -> AsyncIterator[Store]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def sqlite_state_at(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite state file as a version-`version` alerter left it (its schema steps applied),
    open for the caller to put rows in; the caller commits and closes it."""
    db = sqlite3.connect(path)
    db.create_function("alerter_instant", 1, rows.instant_of, deterministic=True)  # as the store's connection
    db.execute(schema.CREATE_VERSION_TABLE)
    for step in range(1, version + 1):
        for statement in schema.statements(step, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?)", (step,))
    return db


@asynccontextmanager
async def store_for(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened, empty store of `backend` ("sqlite" or "postgres")."""
    if backend == "sqlite":
        async with opened(SqliteStore(f"sqlite:///{tmp_path / 'state.db'}")) as store:
            yield store
    else:
        async with postgres_schema() as (url, schema), opened(PostgresStore(url, schema=schema)) as store:
            yield store


# -- sample data --
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 12, 1, tzinfo=UTC)


def obligation(meter: str = "m1", code: str = "AUTH_1", **over: Any) -> Obligation:
    fields: dict[str, Any] = {
        "meter_id": meter,
        "program_identifier": "CCA",
        "delivery_period": "CAISO-CCA_2026_DEC",
        "action_type": "IS_AUTHORIZED",
        "action_code": code,
        "action_description": "Re-authorize.",
        "deadline": DEADLINE,
        "meter": Meter(meter_id=meter, tags=("a", "b"), transmission_region="CAISO"),
        "opened_at": T0,
        "first_seen": T0,
        "last_seen": T0,
    }
    return Obligation(**(fields | over))


def event(o: Obligation, kind: EventKind = "opened", at: datetime = T0, **over: Any) -> Event:
    return Event(id=event_id(o.key, kind, o.version), kind=kind, occurred_at=at, obligation=o, **over)


def notification(nid: str, events: list[Event], receiver: str = "ops", at: datetime = T0) -> Notification:
    return Notification(
        id=nid, rule="r1", receiver=receiver, group={"region": "CAISO"}, events=tuple(events), created_at=at
    )


async def outbox(store: Store, *notes: Notification) -> None:
    """Put notifications in the ledger the way routing does."""
    await store.commit_routing(RoutingWrite(consumed=(), notifications=notes))
