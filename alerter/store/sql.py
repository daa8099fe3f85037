"""The Store logic both SQL backends share, over a tiny transaction interface each one supplies.

How this works: queries are written once with PostgreSQL-style `$n` parameters (SQLite
runs them as `?n`). A backend provides `_read()` / `_write(fenced)` transactions, how a
datetime and a list of ids are bound, how migrations are locked against other instances
(`_lock_migrations`), and the bulk writes of a `commit_page` (`_write_page`), where the
fast path differs (multi-row INSERTs on SQLite, `unnest` arrays on PostgreSQL). Migrating and
what a page commits (one row per key or id, nothing for an empty page) are written here once.
The queries of each concern are a part of their own, one per protocol of `store.base`
(`sqlobligations`, `sqlrouting`, `sqlsilences`, `sqlledger`, over the hooks of `sqltx`):
`SqlStore` is their composition.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from alerter.errors import StoreError
from alerter.models import Event, FirstLook, Obligation
from alerter.store import schema
from alerter.store.sqlledger import LedgerSql
from alerter.store.sqlobligations import ObligationSql
from alerter.store.sqlrouting import RoutingSql
from alerter.store.sqlsilences import RetentionSql, SilenceSql
from alerter.store.sqltx import Tx


def page_rows(obligations: Sequence[Obligation], events: Sequence[Event]) -> tuple[list[Obligation], list[Event]]:
    """What `commit_page` writes: one obligation per key (the last wins: an upsert may not
    touch a row twice) and one event per id (the first wins)."""
    unique = list({o.key: o for o in obligations}.values()) if obligations else []
    return unique, list({e.id: e for e in reversed(events)}.values())[::-1] if events else []


_VERSIONED: dict[schema.Dialect, str] = {
    "sqlite": "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'schema_version')",
    "postgres": "SELECT to_regclass('schema_version') IS NOT NULL",
}
"""Whether the state has a schema yet (its version table, in the store's search path)."""


class SqlStore(ObligationSql, RoutingSql, SilenceSql, LedgerSql, RetentionSql):
    """Everything but connections, leadership and bulk writes; see SqliteStore, PostgresStore."""

    url: str
    """Which rendering of the schema's migrations this backend applies."""

    def __init__(self) -> None:
        self._fence: int | None = None
        self.unreadable = []

    @abstractmethod
    async def _write_page(
        self,
        obligations: list[Obligation],
        looks: list[datetime | None],
        events: list[Event],
        meta: list[tuple[str, str]],
    ) -> int:
        """Fenced, one transaction: a page's rows (at most one per key or id) in bulk, each store
        its own way (SQLite in one trip to its thread, PostgreSQL as arrays); `looks`: each
        obligation's `remind_at`. Returns how many events were new."""

    async def _lock_migrations(self, tx: Tx) -> None:
        """Inside the migrating transaction, before the version is read: keep other instances
        from migrating at the same time. SQLite: nothing (its write transaction locks the file)."""

    shared: bool = False
    """Opened for a state command beside a running service (`open_store(shared=True)`): it
    creates a new state's schema but upgrades none (`_migrate`)."""

    async def _migrate(self) -> None:
        """Apply the schema steps not yet applied, in one transaction.

        A state command (`shared`) upgrades nothing: a service of an earlier version may still
        be writing the state, and some steps change what it writes to (15, 19: its writes would
        fail until it is restarted); it refuses a state that needs a step, and reads the
        version without taking the write lock."""
        if self.shared:
            async with self._read() as tx:
                found = (
                    int(await tx.fetchval(schema.CURRENT_VERSION)) if await tx.fetchval(_VERSIONED[self.dialect]) else 0
                )
            if found == len(schema.MIGRATIONS):
                return
            if found > len(schema.MIGRATIONS):
                raise StoreError(schema.too_new(found))
            if found:
                raise StoreError(schema.too_old(found))
        async with self._write() as tx:
            await self._lock_migrations(tx)
            await tx.execute(schema.CREATE_VERSION_TABLE)
            found = int(await tx.fetchval(schema.CURRENT_VERSION))
            if found > len(schema.MIGRATIONS):
                raise StoreError(schema.too_new(found))
            for step in range(found + 1, len(schema.MIGRATIONS) + 1):
                for statement in schema.statements(step, self.dialect):
                    await tx.execute(statement)
                await tx.execute(schema.RECORD_VERSION, step)

    async def commit_page(
        self,
        obligations: Sequence[Obligation],
        events: Sequence[Event],
        meta: Mapping[str, str] | None = None,
        look: FirstLook | None = None,
    ) -> int:
        if not obligations and not events and not meta:
            return 0
        unique, new = page_rows(obligations, events)
        # an open obligation is looked at on the reminders' next step unless `look` says when
        looks = [(look(o) if look else o.last_seen) if o.status == "open" else None for o in unique]
        return await self._write_page(unique, looks, new, list(meta.items()) if meta else [])

    @asynccontextmanager
    async def bulk_load(self) -> AsyncIterator[bool]:
        """Nothing deferred (see SqliteStore.bulk_load)."""
        async with self._read() as tx:
            held = bool(await tx.fetchval("SELECT EXISTS (SELECT 1 FROM obligations)"))
        yield not held

    async def tidy(self) -> None:
        return None

    def set_fence(self, token: int | None) -> None:
        self._fence = token
