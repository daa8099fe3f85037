"""The webhook inbox: Leap's webhook events, stored before they are acknowledged, then processed.

How this works: the receiving endpoint (any replica) inserts each event under its
`webhook_event_id`; an id already there is a duplicate, acknowledged and dropped. The leader
takes the rows that are due (`due`), re-reads their meters and marks them processed (`done`),
or, when the re-read fails, pushes them back with a later `next_attempt_at` (`retry`).
Processed rows are kept for a while (`purge` forgets them): they recognise a late duplicate
(Leap retries for about 8 hours) and tell which meters a push announced (`announced`). These
writes are not fenced: every replica receives, and a row a deposed leader marks is re-read
at worst once more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from alerter.store.base import Store
from alerter.store.rows import read_ts
from alerter.store.sql import SqlStore

_COLUMNS = "event_id, meter_id, event_type, received_at, payload, attempts"
_INSERT = (
    "INSERT INTO webhook_inbox (event_id, meter_id, event_type, received_at, payload, next_attempt_at) "
    "VALUES ($1, $2, $3, $4, $5, $4) ON CONFLICT (event_id) DO NOTHING"
)


PURGE_BATCH = 5_000
"""Inbox rows a purge forgets per transaction."""


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """One webhook event as received: `payload` is its JSON text, kept as a record, never trusted."""

    event_id: str
    meter_id: str
    event_type: str
    received_at: datetime
    payload: str
    attempts: int = 0


class Inbox:
    """The inbox table of a SQL store (SQLite or PostgreSQL), through the store's transactions."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, SqlStore):
            raise TypeError(f"the webhook inbox needs a SQL store, not {type(store).__name__}")
        self.store = store

    async def add(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Stores the events in one transaction; for each, True when new, False for a duplicate
        (already stored, or earlier in `events`)."""
        if not events:
            return []
        s = self.store
        ids = [e.event_id for e in events]
        async with s._write() as tx:
            found = await tx.fetch(f"SELECT event_id FROM webhook_inbox WHERE event_id {s._in(1)}", s._ids(ids))
            seen = {r["event_id"] for r in found}
            fresh: list[bool] = []
            rows = []
            for e in events:
                new = e.event_id not in seen
                fresh.append(new)
                if new:
                    seen.add(e.event_id)
                    rows.append((e.event_id, e.meter_id, e.event_type, s._ts(e.received_at), e.payload))
            await tx.executemany(_INSERT, rows)
        return fresh

    async def due(self, now: datetime, limit: int = 10_000) -> list[InboxEvent]:
        """Unprocessed rows whose (next) attempt is due, oldest first."""
        s = self.store
        sql = (
            f"SELECT {_COLUMNS} FROM webhook_inbox WHERE processed_at IS NULL AND next_attempt_at <= $1 "
            "ORDER BY received_at, event_id LIMIT $2"
        )
        async with s._read() as tx:
            found = await tx.fetch(sql, s._ts(now), limit)
        return [
            InboxEvent(
                r["event_id"],
                r["meter_id"],
                r["event_type"],
                read_ts(r["received_at"]) or now,
                str(r["payload"]),
                int(r["attempts"]),
            )
            for r in found
        ]

    async def done(self, event_ids: Sequence[str], now: datetime, error: str | None = None) -> None:
        """Marks rows processed (`error` names why, when they were given up)."""
        if event_ids:
            s = self.store
            sql = f"UPDATE webhook_inbox SET processed_at = $1, last_error = $2 WHERE event_id {s._in(3)}"
            async with s._write() as tx:
                await tx.execute(sql, s._ts(now), error, s._ids(event_ids))

    async def retry(self, event_ids: Sequence[str], next_attempt_at: datetime, error: str) -> None:
        if event_ids:
            s = self.store
            sql = (
                "UPDATE webhook_inbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 "
                f"WHERE processed_at IS NULL AND event_id {s._in(3)}"
            )
            async with s._write() as tx:
                await tx.execute(sql, s._ts(next_attempt_at), error[:500], s._ids(event_ids))

    async def backlog(self) -> tuple[int, datetime | None]:
        """Unprocessed rows, and when the oldest of them was received."""
        sql = "SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM webhook_inbox WHERE processed_at IS NULL"
        async with self.store._read() as tx:
            row = (await tx.fetch(sql))[0]
        return int(row["n"]), read_ts(row["oldest"])

    async def announced(self, meter_ids: Sequence[str], since: datetime) -> set[str]:
        """Which of these meters an event received since `since` named."""
        if not meter_ids:
            return set()
        s = self.store
        sql = f"SELECT DISTINCT meter_id FROM webhook_inbox WHERE received_at >= $1 AND meter_id {s._in(2)}"
        async with s._read() as tx:
            found = await tx.fetch(sql, s._ts(since), s._ids(meter_ids))
        return {str(r["meter_id"]) for r in found}

    async def purge(self, before: datetime) -> int:
        """Forgets processed rows received before `before`, `PURGE_BATCH` a transaction (a state
        an earlier version never purged holds months of them: one transaction would hold the
        store for seconds); returns how many."""
        s = self.store
        sql = (
            "DELETE FROM webhook_inbox WHERE event_id IN (SELECT event_id FROM webhook_inbox "
            "WHERE processed_at IS NOT NULL AND received_at < $1 LIMIT $2)"
        )
        removed = 0
        while True:
            async with s._write() as tx:
                done = await tx.execute(sql, s._ts(before), PURGE_BATCH)
            removed += done
            if done < PURGE_BATCH:
                return removed
