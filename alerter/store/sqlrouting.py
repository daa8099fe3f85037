"""The SQL store's routing part: pending events, groups and their members, and what routing decided (RoutingStore)."""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from alerter.models import Event, EventRef, GroupState, Notification, RoutingWrite
from alerter.store import base, rows
from alerter.store.base import META_CONSUMING, PendingBatch, RoutingStore, StoredEvents
from alerter.store.rows import Row, read_ts
from alerter.store.sqlobligations import META_UPSERT
from alerter.store.sqltx import SqlHooks, Tx

NOTIFIED_KINDS = frozenset({"opened", "changed", "reminder"})
"""A receiver sent one of these about an obligation is told when it resolves."""
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
_IN_ORDER = "ORDER BY m.group_key, m.seq"
"""Members group by group, each in arrival order (`_with_members`), as their index keeps them."""


_UNTOLD = (
    "DELETE FROM notified WHERE key_id = $1 AND receiver = $2 "
    "AND NOT EXISTS (SELECT 1 FROM notification_events l JOIN notifications n ON n.id = l.notification_id "
    "WHERE l.event_id = $3 AND n.receiver = $2)"
)
"""A receiver whose copy of an opening was silenced in one group is told of it no longer, unless
a notification already gave it that opening (through another rule): found by the event's id, an
index on both backends. (One still waiting in another of its groups is not looked for: no index
leads with a member's event id.)"""


class RoutingSql(SqlHooks, RoutingStore):
    """Routing's reads and its one-transaction writes, over the backend hooks."""

    @abstractmethod
    async def _append_members(self, tx: Tx, members: Sequence[tuple[str, str]], refs: Mapping[str, EventRef]) -> None:
        """Insert (group key, event id) rows in this order, each after every member before it
        (its `seq`), with what `refs` says of each event, ignoring those already present."""

    async def _remove_members(self, tx: Tx, members: Sequence[tuple[str, str]]) -> None:
        # in key order: each page of the members' key index is visited once, not once per row
        await tx.executemany("DELETE FROM group_members WHERE group_key = $1 AND event_id = $2", sorted(members))

    async def _insert_told(self, tx: Tx, told: Sequence[tuple[str, str]]) -> None:
        """(key id, receiver) rows, in key order, ignoring those already present."""
        await tx.executemany("INSERT INTO notified (key_id, receiver) VALUES ($1, $2) ON CONFLICT DO NOTHING", told)

    async def _insert_links(self, tx: Tx, links: Sequence[tuple[str, str, int]]) -> None:
        """(event id, notification id, position) rows, in key order, ignoring those already present."""
        sql = "INSERT INTO notification_events (event_id, notification_id, position) VALUES ($1, $2, $3) "
        await tx.executemany(sql + "ON CONFLICT DO NOTHING", links)

    # -- routing --
    async def pending_events(self, limit: int = 1000) -> list[Event]:
        return (await self.pending_after(0, limit)).events()

    async def pending_after(self, after: int, limit: int) -> PendingBatch:
        sql = f"SELECT seq, kind, {rows.EVENT_READ} FROM events WHERE NOT routed AND seq > $1 ORDER BY seq LIMIT $2"
        async with self._read() as tx:
            found = await tx.fetch(sql, after, limit)
        return PendingBatch(
            last=found[-1]["seq"] if found else after,
            resolved=[r["key_id"] for r in found if r["kind"] == "resolved"],
            rows=found,
            decode=rows.event_from_row,
        )

    async def initial_events(self, after: int = 0, limit: int = 1000) -> PendingBatch:
        sql = (
            f"SELECT seq, {rows.EVENT_READ} FROM events WHERE initial AND NOT routed AND seq > $1 ORDER BY seq LIMIT $2"
        )
        async with self._read() as tx:
            found = await tx.fetch(sql, after, limit)
        return PendingBatch(
            last=found[-1]["seq"] if found else after, resolved=(), rows=found, decode=rows.event_from_row
        )

    async def initial_superseded(self, upto: int) -> set[str]:
        resumed = "SELECT EXISTS (SELECT 1 FROM events WHERE initial AND NOT routed AND seq <= $1 AND kind <> 'opened')"
        superseded = (
            "SELECT e.id FROM events e WHERE e.initial AND NOT e.routed AND e.seq <= $1 AND (e.kind = 'resolved' "
            "OR EXISTS (SELECT 1 FROM events x WHERE x.meter_id = e.meter_id AND x.key_id = e.key_id "
            "AND x.initial AND NOT x.routed AND x.seq > e.seq AND x.seq <= $1))"
        )
        async with self._read() as tx:
            if not await tx.fetchval(resumed, upto):  # one sweep, one event per obligation: all told
                return set()
            return {r["id"] for r in await tx.fetch(superseded, upto)}

    async def initial_by_urgency(self, upto: int) -> list[str]:
        sql = (
            "SELECT e.id FROM events e LEFT JOIN obligations o ON o.meter_id = e.meter_id AND o.key_id = e.key_id "
            "WHERE e.initial AND NOT e.routed AND e.seq <= $1 "
            "ORDER BY (o.deadline IS NULL), o.deadline, e.meter_id, o.action_type, e.id"
        )
        async with self._read() as tx:
            return [r["id"] for r in await tx.fetch(sql, upto)]

    async def consume_initial(self, upto: int) -> None:
        async with self._write(fenced=True) as tx:
            await tx.execute(META_UPSERT, META_CONSUMING, str(upto))
        await self.finish_initial()

    async def finish_initial(self) -> None:
        async with self._read() as tx:
            upto = await tx.fetchval("SELECT value FROM meta WHERE key = $1", META_CONSUMING)
        if upto is None:
            return
        sql = (
            "UPDATE events SET routed = TRUE WHERE seq IN "
            "(SELECT seq FROM events WHERE initial AND NOT routed AND seq <= $1 ORDER BY seq LIMIT $2)"
        )
        while True:
            async with self._write(fenced=True) as tx:
                if await tx.execute(sql, int(upto), base.WRITE_BATCH) < base.WRITE_BATCH:
                    await tx.execute("DELETE FROM meta WHERE key = $1", META_CONSUMING)
                    return

    async def load_events(self, ids: Sequence[str]) -> list[Event]:
        return (await self.read_events(ids)).events()

    async def read_events(self, ids: Sequence[str]) -> StoredEvents:
        found: Sequence[Row] = ()
        if ids:
            async with self._read() as tx:
                found = await tx.fetch(f"SELECT {rows.EVENT_READ} FROM events WHERE id {self._in(1)}", self._ids(ids))
        by_id = {r["id"]: r for r in found}
        return StoredEvents([by_id[i] for i in dict.fromkeys(ids) if i in by_id], rows.event_from_row)

    async def openings(self, obligations: Sequence[tuple[str, str]]) -> dict[str, list[Event]]:
        if not obligations:
            return {}
        meters = sorted({m for m, _ in obligations})
        keys = {k for _, k in obligations}
        async with self._read() as tx:
            found = await tx.fetch(
                f"SELECT {rows.EVENT_READ} FROM events WHERE meter_id {self._in(1)} AND kind = 'opened' ORDER BY seq",
                self._ids(meters),
            )
        stored = StoredEvents([r for r in found if r["key_id"] in keys], rows.event_from_row)
        out: dict[str, list[Event]] = {}
        for e in stored.events():
            out.setdefault(e.obligation.key_id, []).append(e)
        return out

    async def load_event_refs(self, ids: Sequence[str], group_key: str | None = None) -> list[EventRef]:
        if not ids:
            return []
        by_id: dict[str, EventRef] = {}
        async with self._read() as tx:
            if group_key is not None:
                kept = await tx.fetch(
                    f"SELECT event_id, kind, key_id FROM group_members WHERE group_key = $1 AND kind IS NOT NULL "
                    f"AND event_id {self._in(2)}",
                    group_key,
                    self._ids(ids),
                )
                by_id = {r["event_id"]: EventRef(r["event_id"], r["kind"], r["key_id"], told=True) for r in kept}
            rest = [i for i in ids if i not in by_id]
            if rest:
                found = await tx.fetch(f"SELECT id, kind, key_id FROM events WHERE id {self._in(1)}", self._ids(rest))
                by_id.update((r["id"], EventRef(r["id"], r["kind"], r["key_id"])) for r in found)
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    async def event_times(self, ids: Sequence[str]) -> dict[str, datetime]:
        if not ids:
            return {}
        async with self._read() as tx:
            found = await tx.fetch(f"SELECT id, occurred_at FROM events WHERE id {self._in(1)}", self._ids(ids))
        return {r["id"]: at for r in found if (at := read_ts(r["occurred_at"])) is not None}

    async def load_groups(self) -> list[GroupState]:
        async with self._read() as tx:
            heads = await tx.fetch(f"{_GROUP_HEADS} ORDER BY g.key")
            members = await tx.fetch(f"{_MEMBERS} {_IN_ORDER}")
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
            members = await tx.fetch(f"{_MEMBERS} JOIN groups g ON g.key = m.group_key WHERE {due} {_IN_ORDER}", *args)
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
        async with self._write(fenced=True) as tx:
            await self._write_routing(tx, write)

    async def _write_routing(self, tx: Tx, write: RoutingWrite) -> None:
        """`commit_routing`'s statements, inside the transaction `tx`."""
        ts = self._ts
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
            await self._append_members(tx, write.appended, write.refs)
        if write.flushed:
            await self._remove_members(tx, write.flushed)
        if write.notifications:
            await self._insert_notifications(tx, write)
        if write.silenced:
            sql = "INSERT INTO silenced (event_id, silence_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            await tx.executemany(sql, list(dict.fromkeys(write.silenced)))
        if write.untold:  # after `flushed`: the silenced member is gone from its group
            await tx.executemany(_UNTOLD, sorted(write.untold))
        if write.told_reset:  # opened again: who was told of an earlier opening is told no longer
            await tx.executemany("DELETE FROM notified WHERE key_id = $1", [(k,) for k in sorted(write.told_reset)])
        if write.told:  # queued to be told: a resolution before the group flushes follows it
            await self._insert_told(tx, sorted(set(write.told)))

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
        if not write.events_stored:
            await self._keep_events(tx, notes)
        members = {n.id: n.members() for n in notes}
        # Link and "told" rows are written in key order (their keys are hashes: in order, each
        # page of their keys' B-trees is visited once per write, not once per row; SQLite's
        # links are keyed by notification and place: `SqliteStore._insert_links`); the position
        # column, not the order, keeps a notification's events in order.
        links = {(e.id, n.id): i for n in notes for i, e in enumerate(members[n.id])}
        await self._insert_links(tx, sorted((e, n, i) for (e, n), i in links.items()))
        told = {
            (e.key_id, n.receiver)
            for n in notes
            for e in members[n.id]
            if e.kind in NOTIFIED_KINDS and not (isinstance(e, EventRef) and e.told)  # routing recorded those
        }
        if told:
            await self._insert_told(tx, sorted(told))

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
                [rows.event_params(e, self._ts, self._payload) for e in wanted.values()],
            )


def ref_columns(ref: EventRef | None) -> tuple[str | None, str | None]:
    return (None, None) if ref is None else (ref.kind, ref.key_id)


def _with_members(heads: Sequence[Row], members: Sequence[Row]) -> list[GroupState]:
    """Group heads with their members (rows in arrival order) as `pending`."""
    pending: dict[str, list[str]] = defaultdict(list)
    for r in members:
        pending[r["group_key"]].append(r["event_id"])
    return [rows.group_from_row(r, tuple(pending.get(r["key"], ()))) for r in heads]
