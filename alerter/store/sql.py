"""The Store logic both SQL backends share, over a tiny transaction interface each one supplies.

How this works: queries are written once with PostgreSQL-style `$n` parameters (SQLite
runs them as `?n`). A backend provides `_read()` / `_write(fenced)` transactions, how a
datetime and a list of ids are bound, how migrations are locked against other instances
(`_lock_migrations`), and the bulk writes of a `commit_page` (`_write_page`), where the
fast path differs (executemany on SQLite, `unnest` arrays on PostgreSQL). Migrating and
what a page commits (one row per key or id, nothing for an empty page) are written here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from alerter.errors import StoreError
from alerter.models import (
    Event,
    FirstLook,
    GroupState,
    Notification,
    Obligation,
    ObligationKey,
    RoutingWrite,
    Silence,
)
from alerter.store import retention, rows, schema
from alerter.store.base import (
    META_CONSUMING,
    WRITE_BATCH,
    Delivery,
    Failed,
    HistoryEntry,
    LedgerStore,
    ObligationStore,
    RetentionStore,
    RoutingStore,
    Sent,
    SilenceStore,
)
from alerter.store.rows import DELIVERY_COLUMNS, KEY_COLUMNS, OBLIGATION_COLUMNS, Row

NOTIFIED_KINDS = frozenset({"opened", "changed", "reminder"})
"""A receiver sent one of these about an obligation is told when it resolves."""

META_UPSERT = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_OPEN_OBLIGATIONS = f"SELECT {OBLIGATION_COLUMNS} FROM obligations WHERE status = 'open'"
_GROUP_UPSERT = (
    "INSERT INTO groups (key, rule, receiver, group_values, flush_at, last_flush_at, pending) "
    "VALUES ($1, $2, $3, $4, $5, $6, '[]') ON CONFLICT (key) DO UPDATE SET rule = excluded.rule, "
    "receiver = excluded.receiver, group_values = excluded.group_values, flush_at = excluded.flush_at, "
    "last_flush_at = excluded.last_flush_at"
)
_GROUP_COLUMNS = "g.key, g.rule, g.receiver, g.group_values, g.flush_at, g.last_flush_at"
_GROUP_HEADS = f"SELECT {_GROUP_COLUMNS} FROM groups g"
_HAS_MEMBERS = "EXISTS (SELECT 1 FROM group_members m WHERE m.group_key = g.key)"
_MEMBERS = "SELECT m.group_key, m.event_id FROM group_members m"
_MARK_SENT = (
    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, sent_at = $3, external_id = $4, "
    "next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $3 "
    "WHERE notification_id = $1 AND receiver = $2"
)
_MARK_FAILED = (
    "UPDATE deliveries SET status = $3, attempts = attempts + 1, last_error = $4, "
    "next_attempt_at = $5, lease_owner = NULL, lease_until = NULL, updated_at = $6 "
    "WHERE notification_id = $1 AND receiver = $2 AND status = 'pending'"
)
_SILENCE_UPSERT = (
    "INSERT INTO silences (id, matchers, starts_at, ends_at, reason, created_by, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET matchers = excluded.matchers, "
    "starts_at = excluded.starts_at, ends_at = excluded.ends_at, reason = excluded.reason, "
    "created_by = excluded.created_by, created_at = excluded.created_at"
)
_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
RELEASE_LEASES = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE status = 'pending'"
FORGET_INSTANCES = timedelta(days=1)
"""An instance not seen for this long is forgotten (its leases expired long before)."""


def _last_seen(o: Obligation) -> datetime | None:
    return o.last_seen


_LAST_SEEN: FirstLook = _last_seen
"""Without a `FirstLook`, an open obligation written is looked at on the reminders' next step."""


def page_rows(obligations: Sequence[Obligation], events: Sequence[Event]) -> tuple[list[Obligation], list[Event]]:
    """What `commit_page` writes: one obligation per key (the last wins: an upsert may not
    touch a row twice) and one event per id (the first wins)."""
    unique = list({o.key: o for o in obligations}.values()) if obligations else []
    return unique, list({e.id: e for e in reversed(events)}.values())[::-1] if events else []


class Tx(Protocol):
    """One connection inside a transaction (or a read)."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Returns the number of rows affected."""

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...


class SqlStore(ObligationStore, RoutingStore, SilenceStore, LedgerStore, RetentionStore, ABC):
    """Everything but connections, leadership and bulk writes; see SqliteStore, PostgresStore."""

    url: str
    dialect: ClassVar[schema.Dialect]
    """Which rendering of the schema's migrations this backend applies."""
    skip_locked: ClassVar[str] = ""
    """Row-locking suffix for the claim query (PostgreSQL: FOR UPDATE SKIP LOCKED)."""
    partner_reference: ClassVar[str] = "json_extract(meter, '$.partner_reference')"
    """SQL for an obligation's stored `meter.partner_reference` (PostgreSQL: `meter ->> ...`)."""

    def __init__(self) -> None:
        self._fence: int | None = None
        self.unreadable: list[str] = []
        """Stored obligations `open_obligations` skipped because they cannot be read (the
        reader takes and clears them)."""

    # -- what a backend supplies --
    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Tx]: ...

    @abstractmethod
    def _write(self, fenced: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction; `fenced` checks the fencing token inside it (FencedError)."""

    @abstractmethod
    def _ts(self, dt: datetime | None) -> Any: ...

    @abstractmethod
    def _in(self, n: int) -> str:
        """SQL for "is one of the ids bound as parameter n", e.g. `= ANY($1::text[])`."""

    @abstractmethod
    def _ids(self, values: Sequence[str]) -> Any:
        """Bind a list of ids for `_in`."""

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

    async def _migrate(self) -> None:
        """Apply the schema steps not yet applied, in one transaction."""
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
        first = look or _LAST_SEEN
        looks = [first(o) if o.status == "open" else None for o in unique]
        return await self._write_page(unique, looks, new, list(meta.items()) if meta else [])

    async def _append_members(self, tx: Tx, members: Sequence[tuple[str, str]]) -> None:
        """Insert (group key, event id) rows in this order, ignoring those already present."""
        sql = "INSERT INTO group_members (group_key, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        await tx.executemany(sql, members)

    async def _remove_members(self, tx: Tx, members: Sequence[tuple[str, str]]) -> None:
        await tx.executemany("DELETE FROM group_members WHERE group_key = $1 AND event_id = $2", members)

    @asynccontextmanager
    async def bulk_load(self) -> AsyncIterator[None]:
        """Nothing deferred (see SqliteStore.bulk_load)."""
        yield

    def set_fence(self, token: int | None) -> None:
        self._fence = token

    # -- cycle state --
    async def get_meta(self, key: str) -> str | None:
        async with self._read() as tx:
            value: str | None = await tx.fetchval("SELECT value FROM meta WHERE key = $1", key)
            return value

    async def set_meta(self, values: Mapping[str, str]) -> None:
        async with self._write(fenced=True) as tx:
            await tx.executemany(META_UPSERT, list(values.items()))

    async def is_empty(self) -> bool:
        async with self._read() as tx:
            return bool(
                await tx.fetchval(
                    "SELECT NOT EXISTS (SELECT 1 FROM obligations) "
                    "AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'initialized')"
                )
            )

    async def load_obligations(self, meter_ids: Sequence[str]) -> dict[ObligationKey, Obligation]:
        if not meter_ids:
            return {}
        sql = f"SELECT {OBLIGATION_COLUMNS} FROM obligations WHERE meter_id {self._in(1)}"
        async with self._read() as tx:
            found = await tx.fetch(sql, self._ids(list(dict.fromkeys(meter_ids))))
        return {o.key: o for o in map(rows.obligation_from_row, found)}

    async def open_meter_ids(self) -> list[str]:
        sql = "SELECT DISTINCT meter_id FROM obligations WHERE status = 'open' ORDER BY meter_id"
        async with self._read() as tx:
            return [r["meter_id"] for r in await tx.fetch(sql)]

    async def open_obligations(self, after: ObligationKey | None = None, limit: int = 1000) -> list[Obligation]:
        async with self._read() as tx:
            if after is None:
                found = await tx.fetch(f"{_OPEN_OBLIGATIONS} ORDER BY {KEY_COLUMNS} LIMIT $1", limit)
            else:
                sql = f"{_OPEN_OBLIGATIONS} AND ({KEY_COLUMNS}) > ($1, $2, $3, $4, $5) ORDER BY {KEY_COLUMNS} LIMIT $6"
                found = await tx.fetch(sql, *after, limit)
        return self._readable(found)

    async def reminder_candidates(self, now: datetime, limit: int = 1000) -> list[Obligation]:
        sql = f"{_OPEN_OBLIGATIONS} AND remind_at <= $1 ORDER BY remind_at LIMIT $2"
        async with self._read() as tx:
            found = await tx.fetch(sql, self._ts(now), limit)
        bad: list[tuple[ObligationKey, int]] = []
        out = self._readable(found, bad)
        if bad:  # not offered again until rewritten: the step's next batch moves on
            await self.set_remind_at([(key, version, None) for key, version in bad])
        return out

    async def set_remind_at(self, items: Sequence[tuple[ObligationKey, int, datetime | None]]) -> None:
        if not items:
            return
        sql = (
            "UPDATE obligations SET remind_at = $1 WHERE meter_id = $2 AND program_identifier = $3 "
            "AND delivery_period = $4 AND action_type = $5 AND action_code = $6 AND version = $7 AND status = 'open'"
        )
        async with self._write(fenced=True) as tx:
            await tx.executemany(sql, [(self._ts(at), *key, version) for key, version, at in items])

    async def reset_remind_at(self, at: datetime) -> None:
        sql = (
            f"UPDATE obligations SET remind_at = $1 WHERE ({KEY_COLUMNS}) IN (SELECT {KEY_COLUMNS} FROM obligations "
            "WHERE status = 'open' AND (remind_at IS NULL OR remind_at > $1) LIMIT $2)"
        )
        while True:  # a batch per transaction; each batch leaves the rows it changed out of the next
            async with self._write(fenced=True) as tx:
                if await tx.execute(sql, self._ts(at), WRITE_BATCH) < WRITE_BATCH:
                    return

    def _readable(self, found: Sequence[Row], bad: list[tuple[ObligationKey, int]] | None = None) -> list[Obligation]:
        """The obligations of these rows; one that cannot be read is skipped and named in
        `unreadable` (and its key and version added to `bad`)."""
        out = []
        for r in found:
            try:
                out.append(rows.obligation_from_row(r))
            except ValueError as err:  # skipped and named, once per read; the others go on
                key: ObligationKey = (
                    r["meter_id"], r["program_identifier"], r["delivery_period"], r["action_type"], r["action_code"]
                )  # fmt: skip
                self.unreadable.append(f"{'/'.join(key)}: {err}")
                if bad is not None:
                    bad.append((key, r["version"]))
        return out

    async def count_open(self) -> list[tuple[str, datetime | None, int]]:
        sql = (
            "SELECT action_type, deadline, COUNT(*) AS n FROM obligations WHERE status = 'open' "
            "GROUP BY action_type, deadline ORDER BY action_type, deadline"
        )
        async with self._read() as tx:
            return [(r["action_type"], rows.read_ts(r["deadline"]), r["n"]) for r in await tx.fetch(sql)]

    # -- routing --
    async def pending_events(self, limit: int = 1000) -> list[Event]:
        sql = "SELECT payload FROM events WHERE NOT routed ORDER BY seq LIMIT $1"
        async with self._read() as tx:
            return [rows.event_from_payload(r["payload"]) for r in await tx.fetch(sql, limit)]

    async def initial_events(self, after: int = 0, limit: int = 1000) -> list[tuple[int, Event]]:
        sql = "SELECT seq, payload FROM events WHERE initial AND NOT routed AND seq > $1 ORDER BY seq LIMIT $2"
        async with self._read() as tx:
            return [(r["seq"], rows.event_from_payload(r["payload"])) for r in await tx.fetch(sql, after, limit)]

    async def initial_by_urgency(self, upto: int) -> list[str]:
        sql = (
            "SELECT e.id FROM events e LEFT JOIN obligations o ON o.meter_id = e.meter_id AND o.key_id = e.key_id "
            "WHERE e.initial AND NOT e.routed AND e.seq <= $1 "
            "ORDER BY (o.deadline IS NULL), o.deadline, e.meter_id, o.action_type, e.id"
        )
        async with self._read() as tx:
            return [r["id"] for r in await tx.fetch(sql, upto)]

    async def consume_initial(self, upto: int) -> None:
        await self.set_meta({META_CONSUMING: str(upto)})
        await self.finish_initial()

    async def finish_initial(self) -> None:
        upto = await self.get_meta(META_CONSUMING)
        if upto is None:
            return
        sql = (
            "UPDATE events SET routed = TRUE WHERE seq IN "
            "(SELECT seq FROM events WHERE initial AND NOT routed AND seq <= $1 ORDER BY seq LIMIT $2)"
        )
        while True:
            async with self._write(fenced=True) as tx:
                if await tx.execute(sql, int(upto), WRITE_BATCH) < WRITE_BATCH:
                    await tx.execute("DELETE FROM meta WHERE key = $1", META_CONSUMING)
                    return

    async def load_events(self, ids: Sequence[str]) -> list[Event]:
        if not ids:
            return []
        async with self._read() as tx:
            found = await tx.fetch(f"SELECT id, payload FROM events WHERE id {self._in(1)}", self._ids(ids))
        by_id = {r["id"]: r["payload"] for r in found}
        return [rows.event_from_payload(by_id[i]) for i in dict.fromkeys(ids) if i in by_id]

    async def load_groups(self) -> list[GroupState]:
        async with self._read() as tx:
            heads = await tx.fetch(f"{_GROUP_HEADS} ORDER BY g.key")
            members = await tx.fetch(f"{_MEMBERS} ORDER BY m.seq")
        return _with_members(heads, members)

    async def group_heads(self) -> list[GroupState]:
        async with self._read() as tx:
            found = await tx.fetch(f"SELECT {_GROUP_COLUMNS}, {_HAS_MEMBERS} AS waiting FROM groups g ORDER BY g.key")
        return [rows.group_from_row(r, waiting=bool(r["waiting"])) for r in found]

    async def due_groups(
        self, now: datetime, *, force: bool = False, idle_before: datetime | None = None
    ) -> list[GroupState]:
        due, args = ("TRUE", ()) if force else ("g.flush_at <= $1", (self._ts(now),))
        async with self._read() as tx:
            heads = list(await tx.fetch(f"{_GROUP_HEADS} WHERE {due} AND {_HAS_MEMBERS}", *args))
            members = await tx.fetch(
                f"{_MEMBERS} JOIN groups g ON g.key = m.group_key WHERE {due} ORDER BY m.seq", *args
            )
            if idle_before is not None:
                idle = f"{_GROUP_HEADS} WHERE COALESCE(g.last_flush_at, g.flush_at) < $1 AND NOT {_HAS_MEMBERS}"
                heads += await tx.fetch(idle, self._ts(idle_before))
        return sorted(_with_members(heads, members), key=lambda g: g.key)

    async def notified_receivers(self, key_ids: Sequence[str]) -> dict[str, set[str]]:
        if not key_ids:
            return {}
        sql = f"SELECT key_id, receiver FROM notified WHERE key_id {self._in(1)}"
        async with self._read() as tx:
            found = await tx.fetch(sql, self._ids(key_ids))
        out: dict[str, set[str]] = defaultdict(set)
        for r in found:
            out[r["key_id"]].add(r["receiver"])
        return dict(out)

    async def commit_routing(self, write: RoutingWrite) -> None:
        ts = self._ts
        async with self._write(fenced=True) as tx:
            if write.consumed:
                sql = f"UPDATE events SET routed = TRUE WHERE id {self._in(1)} AND NOT routed"
                await tx.execute(sql, self._ids(write.consumed))
            if write.deleted_groups:
                keys = self._ids(write.deleted_groups)
                await tx.execute(f"DELETE FROM group_members WHERE group_key {self._in(1)}", keys)
                await tx.execute(f"DELETE FROM groups WHERE key {self._in(1)}", keys)
            if write.groups:
                await tx.executemany(_GROUP_UPSERT, [rows.group_params(g, ts) for g in write.groups])
            if write.appended:
                await self._append_members(tx, write.appended)
            if write.flushed:
                await self._remove_members(tx, write.flushed)
            if write.notifications:
                await self._insert_notifications(tx, write)
            if write.silenced:
                sql = "INSERT INTO silenced (event_id, silence_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                await tx.executemany(sql, list(dict.fromkeys(write.silenced)))
            if write.told:  # queued to be told: a resolution before the group flushes follows it
                sql = "INSERT INTO notified (key_id, receiver) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                await tx.executemany(sql, list(dict.fromkeys(write.told)))

    async def _insert_notifications(self, tx: Tx, write: RoutingWrite) -> None:
        ts, notes = self._ts, write.notifications
        await tx.executemany(
            "INSERT INTO notifications (id, kind, rule, receiver, created_at, payload) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            [rows.notification_params(n, ts) for n in notes],
        )
        await tx.executemany(
            "INSERT INTO deliveries (notification_id, receiver, status, attempts, next_attempt_at, "
            "updated_at) VALUES ($1, $2, 'pending', 0, $3, $3) ON CONFLICT DO NOTHING",
            [(n.id, n.receiver, ts(n.created_at)) for n in notes],
        )
        await self._keep_events(tx, notes)
        links = {(e.id, n.id): i for n in notes for i, e in enumerate(n.events)}
        await tx.executemany(
            "INSERT INTO notification_events (event_id, notification_id, position) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            [(e, n, i) for (e, n), i in links.items()],
        )
        told = {(e.obligation.key_id, n.receiver): None for n in notes for e in n.events if e.kind in NOTIFIED_KINDS}
        if told:
            await tx.executemany(
                "INSERT INTO notified (key_id, receiver) VALUES ($1, $2) ON CONFLICT DO NOTHING", list(told)
            )

    async def _keep_events(self, tx: Tx, notes: Sequence[Notification]) -> None:
        """A notification links its events: routing builds it from stored events, and one given
        with events the store does not hold stores them (as routed) so that it can be read."""
        wanted = {e.id: e for n in notes for e in n.events}
        if not wanted:
            return
        found = await tx.fetch(f"SELECT id FROM events WHERE id {self._in(1)}", self._ids(list(wanted)))
        for r in found:
            wanted.pop(r["id"], None)
        if wanted:
            await tx.executemany(
                f"INSERT INTO events ({rows.EVENT_COLUMNS}, routed) VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE) "
                "ON CONFLICT (id) DO NOTHING",
                [rows.event_params(e, self._ts) for e in wanted.values()],
            )

    # -- silences --
    async def add_silence(self, silence: Silence) -> None:
        async with self._write() as tx:
            await tx.execute(_SILENCE_UPSERT, *rows.silence_params(silence, self._ts))

    async def list_silences(self, now: datetime, include_expired: bool = False) -> list[Silence]:
        sql = "SELECT id, matchers, starts_at, ends_at, reason, created_by, created_at FROM silences"
        async with self._read() as tx:
            if include_expired:
                found = await tx.fetch(f"{sql} ORDER BY starts_at, id")
            else:
                found = await tx.fetch(f"{sql} WHERE ends_at > $1 ORDER BY starts_at, id", self._ts(now))
        return [rows.silence_from_row(r) for r in found]

    async def expire_silence(self, silence_id: str, now: datetime) -> bool:
        sql = (
            "UPDATE silences SET ends_at = $2, "
            "starts_at = CASE WHEN starts_at > $2 THEN $2 ELSE starts_at END WHERE id = $1 AND ends_at > $2"
        )
        async with self._write() as tx:
            return await tx.execute(sql, silence_id, self._ts(now)) > 0

    # -- instances --
    async def start_instance(self, owner: str, now: datetime) -> int:
        await self.heartbeat(owner, now)
        return 0

    async def heartbeat(self, owner: str, now: datetime) -> None:
        async with self._write() as tx:
            await tx.execute(
                "INSERT INTO instances (owner, started_at, last_seen) VALUES ($1, $2, $2) "
                "ON CONFLICT (owner) DO UPDATE SET last_seen = excluded.last_seen",
                owner,
                self._ts(now),
            )
            await tx.execute("DELETE FROM instances WHERE last_seen < $1", self._ts(now - FORGET_INSTANCES))

    async def stop_instance(self, owner: str) -> int:
        async with self._write() as tx:
            released = await tx.execute(RELEASE_LEASES + " AND lease_owner = $1", owner)
            await tx.execute("DELETE FROM instances WHERE owner = $1", owner)
        return released

    # -- delivery ledger --
    async def claim_deliveries(
        self,
        now: datetime,
        owner: str,
        limit: int,
        lease_seconds: float,
        *,
        receiver: str | None = None,
        other_than: Sequence[str] | None = None,
        stale_before: datetime | None = None,
    ) -> list[Delivery]:
        at = self._ts(now)
        args: list[Any] = [at, limit]
        free = "d.lease_until IS NULL OR d.lease_until <= $1"
        if stale_before is not None:
            args += [owner, self._ts(stale_before)]
            free += (
                f" OR (d.lease_owner <> ${len(args) - 1} AND EXISTS (SELECT 1 FROM instances i "
                f"WHERE i.owner = d.lease_owner AND i.last_seen < ${len(args)}))"
            )
        which = ""
        if receiver is not None:
            args.append(receiver)
            which = f"AND d.receiver = ${len(args)} "
        elif other_than is not None:
            args.append(self._ids(other_than))
            which = f"AND NOT d.receiver {self._in(len(args))} "
        sql = (
            f"{_DELIVERIES} WHERE d.status = 'pending' AND d.next_attempt_at <= $1 {which}AND ({free}) "
            "AND NOT EXISTS (SELECT 1 FROM receivers_state r WHERE r.name = d.receiver) "
            f"ORDER BY d.next_attempt_at, d.notification_id LIMIT $2 {self.skip_locked}"
        )
        until = self._ts(now + timedelta(seconds=lease_seconds))
        async with self._write() as tx:
            found = await tx.fetch(sql, *args)
            if found:
                await tx.executemany(
                    "UPDATE deliveries SET lease_owner = $1, lease_until = $2 "
                    "WHERE notification_id = $3 AND receiver = $4",
                    [(owner, until, r["notification_id"], r["receiver"]) for r in found],
                )
            return await self._deliveries(tx, found)

    async def _deliveries(self, tx: Tx, found: Sequence[Row]) -> list[Delivery]:
        """Ledger rows with their notifications, the events of those stored by reference
        loaded in order (at most a claim's worth: each notification holds up to `max_events`)."""
        linked = list(dict.fromkeys(r["notification_id"] for r in found if rows.by_reference(r["payload"])))
        events: dict[str, list[Event]] = {i: [] for i in linked}
        if linked:
            sql = (
                "SELECT l.notification_id, e.payload FROM notification_events l JOIN events e ON e.id = l.event_id "
                f"WHERE l.notification_id {self._in(1)} ORDER BY l.notification_id, l.position"
            )
            for r in await tx.fetch(sql, self._ids(linked)):
                events[r["notification_id"]].append(rows.event_from_payload(r["payload"]))
        return [rows.delivery_from_row(r, events.get(r["notification_id"])) for r in found]

    async def set_delivery_steps(self, notification_id: str, receiver: str, steps: Mapping[str, str]) -> None:
        sql = "UPDATE deliveries SET steps = $3 WHERE notification_id = $1 AND receiver = $2"
        async with self._write() as tx:
            await tx.execute(sql, notification_id, receiver, rows.dumps(dict(steps)))

    async def mark_sent(self, notification_id: str, receiver: str, sent_at: datetime, external_id: str | None) -> None:
        await self.record_outcomes(sent=[Sent(notification_id, receiver, sent_at, external_id)])

    async def mark_failed(
        self, notification_id: str, receiver: str, error: str, next_attempt_at: datetime | None, failed_at: datetime
    ) -> None:
        await self.record_outcomes(failed=[Failed(notification_id, receiver, error, next_attempt_at, failed_at)])

    async def record_outcomes(self, sent: Sequence[Sent] = (), failed: Sequence[Failed] = ()) -> None:
        if not sent and not failed:
            return
        ts = self._ts
        async with self._write() as tx:
            if sent:
                await tx.executemany(_MARK_SENT, [(s[0], s[1], ts(s[2]), s[3]) for s in sent])
            if failed:
                await tx.executemany(
                    _MARK_FAILED,
                    [(f[0], f[1], "dead" if f[3] is None else "pending", f[2], ts(f[3]), ts(f[4])) for f in failed],
                )

    def _dead_filter(self, receiver: str | None, since: datetime | None, args: list[Any], p: str = "") -> str:
        """WHERE clause for dead letters; `p` is the table alias prefix, `args` grows."""
        where = f"{p}status = 'dead'"
        if receiver is not None:
            args.append(receiver)
            where += f" AND {p}receiver = ${len(args)}"
        if since is not None:
            args.append(self._ts(since))
            where += f" AND {p}updated_at >= ${len(args)}"
        return where

    async def dead_letters(self, receiver: str | None = None, since: datetime | None = None) -> list[Delivery]:
        args: list[Any] = []
        where = self._dead_filter(receiver, since, args, "d.")
        async with self._read() as tx:
            found = await tx.fetch(f"{_DELIVERIES} WHERE {where} ORDER BY d.updated_at, d.notification_id", *args)
            return await self._deliveries(tx, found)

    async def replay_dead_letters(
        self, now: datetime, receiver: str | None = None, since: datetime | None = None
    ) -> int:
        args: list[Any] = [self._ts(now)]
        where = self._dead_filter(receiver, since, args)
        sql = (
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, "
            f"lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE {where}"
        )
        async with self._write() as tx:
            return await tx.execute(sql, *args)

    async def undelivered_count(self, receiver: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
        async with self._read() as tx:
            if receiver is None:
                return int(await tx.fetchval(sql))
            return int(await tx.fetchval(f"{sql} AND receiver = $1", receiver))

    async def oldest_undelivered(self) -> dict[str, datetime]:
        sql = (
            "SELECT d.receiver, MIN(n.created_at) AS oldest FROM deliveries d "
            "JOIN notifications n ON n.id = d.notification_id WHERE d.status = 'pending' GROUP BY d.receiver"
        )
        async with self._read() as tx:
            found = await tx.fetch(sql)
        return {r["receiver"]: ts for r in found if (ts := rows.read_ts(r["oldest"])) is not None}

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        sql = "SELECT receiver, status, COUNT(*) AS n FROM deliveries GROUP BY receiver, status"
        async with self._read() as tx:
            return {(r["receiver"], r["status"]): r["n"] for r in await tx.fetch(sql)}

    async def get_thread(self, receiver: str, key_id: str) -> str | None:
        sql = "SELECT external_id FROM threads WHERE receiver = $1 AND key_id = $2"
        async with self._read() as tx:
            value: str | None = await tx.fetchval(sql, receiver, key_id)
            return value

    async def set_thread(self, receiver: str, key_id: str, external_id: str) -> None:
        sql = "INSERT INTO threads (receiver, key_id, external_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        async with self._write() as tx:
            await tx.execute(sql, receiver, key_id, external_id)

    async def set_receiver_disabled(self, receiver: str, reason: str | None, now: datetime) -> None:
        async with self._write() as tx:
            if reason is None:
                await tx.execute("DELETE FROM receivers_state WHERE name = $1", receiver)
            else:
                await tx.execute(
                    "INSERT INTO receivers_state (name, disabled_reason, at) VALUES ($1, $2, $3) "
                    "ON CONFLICT (name) DO UPDATE SET disabled_reason = excluded.disabled_reason, "
                    "at = excluded.at",
                    receiver,
                    reason,
                    self._ts(now),
                )

    async def disabled_receivers(self) -> dict[str, str]:
        async with self._read() as tx:
            found = await tx.fetch("SELECT name, disabled_reason FROM receivers_state ORDER BY name")
        return {r["name"]: r["disabled_reason"] for r in found}

    # -- history --
    async def purge(self, before: datetime) -> dict[str, int]:
        async with self._write(fenced=True) as tx:
            return await retention.purge(tx, self._ts(before))

    async def meters_by_reference(self, partner_reference: str) -> list[str]:
        sql = f"SELECT DISTINCT meter_id FROM obligations WHERE {self.partner_reference} = $1 ORDER BY meter_id"
        async with self._read() as tx:
            return [r["meter_id"] for r in await tx.fetch(sql, partner_reference)]

    async def history(self, meter_id: str) -> list[HistoryEntry]:
        async with self._read() as tx:
            events = await tx.fetch("SELECT id, payload FROM events WHERE meter_id = $1 ORDER BY seq", meter_id)
            silenced = await tx.fetch(
                "SELECT s.event_id, s.silence_id FROM silenced s JOIN events e ON e.id = s.event_id "
                "WHERE e.meter_id = $1 ORDER BY s.silence_id",
                meter_id,
            )
            notified = await tx.fetch(
                "SELECT l.event_id, n.id, n.receiver, d.status FROM notification_events l "
                "JOIN events e ON e.id = l.event_id JOIN notifications n ON n.id = l.notification_id "
                "LEFT JOIN deliveries d ON d.notification_id = n.id AND d.receiver = n.receiver "
                "WHERE e.meter_id = $1 ORDER BY n.created_at, n.id",
                meter_id,
            )
            grouped = await tx.fetch(
                "SELECT m.event_id, g.rule, g.receiver FROM group_members m JOIN events e ON e.id = m.event_id "
                "JOIN groups g ON g.key = m.group_key WHERE e.meter_id = $1 ORDER BY g.key, m.seq",
                meter_id,
            )
        outcomes: dict[str, list[str]] = defaultdict(list)
        for r in silenced:
            outcomes[r["event_id"]].append(f"silenced {r['silence_id']}")
        for r in grouped:
            outcomes[r["event_id"]].append(f"grouped {r['rule']}/{r['receiver']}, waiting")
        for r in notified:
            outcomes[r["event_id"]].append(f"notified {r['receiver']} in {r['id']} ({r['status'] or 'no ledger'})")
        entries = []
        for r in events:
            event = rows.event_from_payload(r["payload"])
            entries.append(HistoryEntry(at=event.occurred_at, event=event, outcomes=tuple(outcomes[r["id"]])))
        return entries


def _with_members(heads: Sequence[Row], members: Sequence[Row]) -> list[GroupState]:
    """Group heads with their members (rows in arrival order) as `pending`."""
    pending: dict[str, list[str]] = defaultdict(list)
    for r in members:
        pending[r["group_key"]].append(r["event_id"])
    return [rows.group_from_row(r, tuple(pending.get(r["key"], ()))) for r in heads]
