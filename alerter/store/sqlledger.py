"""The SQL store's ledger part: delivery rows, leases and outcomes, and the instances that deliver (LedgerStore)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from alerter.models import Event
from alerter.store import rows
from alerter.store.base import Delivery, Failed, LedgerStore, Sent, StoredEvents
from alerter.store.rows import DELIVERY_COLUMNS, Row
from alerter.store.schema import Dialect
from alerter.store.sqltx import SqlHooks, Tx

_MARK_SENT = (
    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, sent_at = $3, external_id = $4, "
    "next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = $3 "
    "WHERE notification_id = $1 AND receiver = $2"
)
_MARK_FAILED = (
    "UPDATE deliveries SET status = $3, attempts = attempts + $7, last_error = $4, "
    "next_attempt_at = $5, lease_owner = NULL, lease_until = NULL, updated_at = $6 "
    "WHERE notification_id = $1 AND receiver = $2 AND status = 'pending'"
)
_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
_EVENT_COLUMNS = ", ".join(f"e.{c}" for c in rows.EVENT_READ.split(", "))
LINKED_EVENTS: dict[Dialect, str] = {
    "postgres": f"SELECT l.notification_id, {_EVENT_COLUMNS} FROM notification_events l "
    "JOIN events e ON e.id = l.event_id WHERE l.notification_id {notifications} ORDER BY l.notification_id, l.position",
    # in this order whatever the planner's statistics say (`CROSS JOIN`): each notification by
    # its id, its links in order by their key, each event by its number (schema `_NUMBERED_LINKS`)
    "sqlite": f"SELECT n.id AS notification_id, {_EVENT_COLUMNS} FROM notifications n "
    "CROSS JOIN notification_links l ON l.notification_seq = n.seq CROSS JOIN events e ON e.seq = l.event_seq "
    "WHERE n.id {notifications} ORDER BY n.id, l.position",
}
"""The events of notifications that link them, in order (`{notifications}`: the backend's `IN`)."""
MADE_ORDER: dict[Dialect, str] = {"sqlite": "n.seq", "postgres": "d.notification_id"}
"""Among notifications made at once, the order a claim takes them in: SQLite's in the order they
were written (a flush's parts by their index); PostgreSQL keeps no such number, its by id."""
RELEASE_LEASES = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE status = 'pending'"
REPLAY = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, retry_from = $1, "
    "lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE status = 'dead' AND "
)
"""A replay of dead letters at `$1`, as their first try with the channel's whole budget again;
the caller ends it with which (`alerter dlq replay`, the console)."""
FORGET_INSTANCES = timedelta(days=1)
"""An instance not seen for this long is forgotten (its leases expired long before)."""


class LedgerSql(SqlHooks, LedgerStore):
    """The delivery ledger (not fenced: every replica delivers), over the backend hooks."""

    skip_locked: ClassVar[str] = ""
    """Row-locking suffix for the claim query (PostgreSQL: FOR UPDATE SKIP LOCKED)."""

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
            f"ORDER BY d.next_attempt_at, n.created_at, {MADE_ORDER[self.dialect]} LIMIT $2 {self.skip_locked}"
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
            linked = await self._linked(tx, found)
        return _deliveries(found, linked)  # decoded after the commit: the store is free meanwhile

    async def _linked(self, tx: Tx, found: Sequence[Row]) -> dict[str, list[Row]]:
        """The rows of the events of these ledger rows' notifications stored by reference, in
        order (at most a claim's worth: each notification holds up to `max_events`)."""
        linked: dict[str, list[Row]] = {}
        for r in found:
            if r["notification_id"] not in linked and _by_reference(r["payload"]):
                linked[r["notification_id"]] = []
        if linked:
            for r in await tx.fetch(
                LINKED_EVENTS[self.dialect].format(notifications=self._in(1)), self._ids(list(linked))
            ):
                linked[r["notification_id"]].append(r)
        return linked

    async def set_delivery_steps(
        self,
        notification_id: str,
        receiver: str,
        steps: Mapping[str, str],
        lease: tuple[str, datetime] | None = None,
    ) -> None:
        owner, until = lease if lease is not None else (None, None)
        sql = (
            "UPDATE deliveries SET steps = $3, lease_until = CASE WHEN lease_owner = $4 THEN $5 ELSE lease_until END "
            "WHERE notification_id = $1 AND receiver = $2"
        )
        async with self._write() as tx:
            args = (rows.dumps(dict(steps)), owner, None if until is None else self._ts(until))
            await tx.execute(sql, notification_id, receiver, *args)

    async def pending_before(self, receiver: str, created_before: datetime, other_than: Sequence[str]) -> bool:
        sql = (
            "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN notifications n ON n.id = d.notification_id "
            "WHERE d.receiver = $1 AND d.status = 'pending' AND n.created_at < $2 "
            f"AND NOT d.notification_id {self._in(3)})"
        )
        async with self._read() as tx:
            return bool(await tx.fetchval(sql, receiver, self._ts(created_before), self._ids(other_than)))

    async def waits_for(
        self, receiver: str, notification_id: str, created_at: datetime, obligations: Sequence[tuple[str, str]]
    ) -> tuple[str, datetime] | None:
        if not obligations:
            return None
        sql = WAITS_FOR[self.dialect].format(meters=self._in(1), keys=self._in(2))
        meters, keys = sorted({m for m, _ in obligations}), sorted({k for _, k in obligations})
        async with self._read() as tx:
            found = await tx.fetch(
                sql, self._ids(meters), self._ids(keys), receiver, notification_id, self._ts(created_at)
            )
        if not found:
            return None
        at = rows.read_ts(found[0]["next_attempt_at"])
        assert at is not None
        return str(found[0]["notification_id"]), at

    async def defer_delivery(self, notification_id: str, receiver: str, until: datetime, note: str, owner: str) -> None:
        sql = (
            "UPDATE deliveries SET next_attempt_at = $3, last_error = $4, lease_owner = NULL, lease_until = NULL "
            "WHERE notification_id = $1 AND receiver = $2 AND status = 'pending' AND lease_owner = $5"
        )
        async with self._write() as tx:
            await tx.execute(sql, notification_id, receiver, self._ts(until), note, owner)

    async def renew_lease(
        self, notification_id: str, receiver: str, owner: str, until: datetime, seen_at: datetime | None = None
    ) -> bool:
        sql = (
            "UPDATE deliveries SET lease_until = $4 "
            "WHERE notification_id = $1 AND receiver = $2 AND lease_owner = $3 AND status = 'pending'"
        )
        async with self._write() as tx:
            renewed = bool(await tx.execute(sql, notification_id, receiver, owner, self._ts(until)))
            if renewed and seen_at is not None:  # and the instance is seen alive: the row stays its own
                await tx.execute("UPDATE instances SET last_seen = $2 WHERE owner = $1", owner, self._ts(seen_at))
            return renewed

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
                    [
                        (f[0], f[1], "dead" if f[3] is None else "pending", f[2], ts(f[3]), ts(f[4]), int(f[5]))
                        for f in failed
                    ],
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
            linked = await self._linked(tx, found)
        return _deliveries(found, linked)

    async def replay_dead_letters(
        self, now: datetime, receiver: str | None = None, since: datetime | None = None
    ) -> int:
        args: list[Any] = [self._ts(now)]
        where = self._dead_filter(receiver, since, args)
        async with self._write() as tx:
            return await tx.execute(REPLAY + where, *args)

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

    async def set_thread(self, receiver: str, key_id: str, external_id: str, *, replace: bool = False) -> None:
        sql = "INSERT INTO threads (receiver, key_id, external_id) VALUES ($1, $2, $3) ON CONFLICT (receiver, key_id) "
        sql += "DO UPDATE SET external_id = excluded.external_id" if replace else "DO NOTHING"
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


_WAITING = (
    "WHERE e.meter_id {{meters}} AND e.key_id {{keys}} AND d.receiver = $3 AND {status} = 'pending' "
    "AND d.notification_id <> $4 AND n.created_at < $5 ORDER BY d.next_attempt_at DESC LIMIT 1"
)
WAITS_FOR: dict[Dialect, str] = {
    # from the obligations' events (by meter), their links, notifications and deliveries: a
    # few rows each, whatever the receiver's backlog; SQLite is held to this order (CROSS JOIN),
    # else its planner starts from the receiver's pending rows and reads every one, and to each
    # delivery's key (`+d.status`: not the status index, which lists the whole backlog)
    "sqlite": (
        "SELECT d.notification_id, d.next_attempt_at FROM events e "
        "CROSS JOIN notification_links l ON l.event_seq = e.seq "
        "CROSS JOIN notifications n ON n.seq = l.notification_seq "
        "CROSS JOIN deliveries d ON d.notification_id = n.id " + _WAITING.format(status="+d.status")
    ),
    "postgres": (
        "SELECT d.notification_id, d.next_attempt_at FROM events e "
        "JOIN notification_events l ON l.event_id = e.id "
        "JOIN deliveries d ON d.notification_id = l.notification_id "
        "JOIN notifications n ON n.id = d.notification_id " + _WAITING.format(status="d.status")
    ),
}
"""A pending notification to a receiver made before another about one of its obligations
(`waits_for`)."""


def _by_reference(payload: str) -> bool:
    try:
        return rows.by_reference(payload)
    except ValueError:  # read, and named, as the delivery is built (`_deliveries`)
        return False


def _deliveries(found: Sequence[Row], linked: Mapping[str, Sequence[Row]]) -> list[Delivery]:
    """Ledger rows as deliveries, with their notifications and the events of those stored by
    reference (`linked`). What cannot be read is left out and named in the delivery
    (`Delivery.unreadable`): one damaged stored row must not stop a receiver's deliveries."""
    events: dict[str, tuple[list[Event], tuple[str, ...]]] = {}
    for notification_id, found_events in linked.items():
        stored = StoredEvents(found_events, rows.event_from_row)
        events[notification_id] = (stored.events(), tuple(f"{i}: {why}" for i, why in stored.unreadable))
    out = []
    for r in found:
        these, unreadable = events.get(r["notification_id"], (None, ()))
        out.append(rows.delivery_from_row(r, these, unreadable))
    return out
