"""The web console's ledger, receiver and session reads and writes (a part of `ConsoleStore`).

Replaying a dead letter and re-enabling a receiver write their audit row (`console_audit`)
in the same transaction. A browser session is a row of `console_sessions` (a hash of the
cookie, never the cookie), so any replica on a shared PostgreSQL store accepts it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from alerter.console import core
from alerter.console.core import Sql
from alerter.store import rows
from alerter.store.sql import SqlStore
from alerter.store.sqlledger import REPLAY

_DELIVERY_VIEW = (
    "SELECT d.notification_id, d.receiver, d.status, d.attempts, d.next_attempt_at, d.last_error, d.sent_at, "
    "d.updated_at, n.rule, n.kind, n.created_at, "
    "(SELECT COUNT(*) FROM notification_events l WHERE l.notification_id = d.notification_id) AS events, "
    "(SELECT MIN(e.meter_id) FROM notification_events l JOIN events e ON e.id = l.event_id "
    "WHERE l.notification_id = d.notification_id) AS meter_id "
    "FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
)
AUDIT = "INSERT INTO console_audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)"
_REPLAY = REPLAY + "notification_id = $2"


@dataclass(frozen=True)
class Session:
    username: str
    csrf: str
    expires_at: datetime


@dataclass(frozen=True)
class ReceiverState:
    last_success: dict[str, datetime] = field(default_factory=dict)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    disabled: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    enabled_by: dict[str, dict[str, Any]] = field(default_factory=dict)


class ConsoleLedger:
    """The console's queries on deliveries, receivers and sessions, over one opened SQL store."""

    store: SqlStore
    ts: Callable[[datetime | None], Any]

    # -- deliveries --
    async def deliveries(
        self, status: str | None, receiver: str | None, limit: int, before: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Ledger rows, most recently updated first; `before` is (updated_at ISO, notification id)."""
        s = Sql(self.ts)
        if status:
            s.conds.append(f"d.status = {s.arg(status)}")
        if receiver:
            s.conds.append(f"d.receiver = {s.arg(receiver)}")
        if before is not None:
            at = self.ts(datetime.fromisoformat(before[0]))
            s.conds.append(f"(d.updated_at, d.notification_id) < ({s.arg(at)}, {s.arg(before[1])})")
        sql = f"{_DELIVERY_VIEW} WHERE {s.where()} ORDER BY d.updated_at DESC, d.notification_id DESC LIMIT "
        async with self.store._read() as tx:
            found = await tx.fetch(sql + s.arg(limit + 1), *s.args)
        items = [_delivery_json(r) for r in found[:limit]]
        if len(found) <= limit:
            return items, None
        last = found[limit - 1]
        at = rows.read_ts(last["updated_at"])
        assert at is not None
        return items, (at.isoformat(), last["notification_id"])

    async def dead_matching(self, ids: Sequence[str] | None, receiver: str | None) -> list[dict[str, Any]]:
        """Dead letters among `ids` (or all, of `receiver` when given): what a replay would resend."""
        s = Sql(self.ts, ["d.status = 'dead'"])
        if ids is not None:
            s.conds.append(f"d.notification_id {self.store._in(len(s.args) + 1)}")
            s.args.append(self.store._ids(list(ids)))
        if receiver:
            s.conds.append(f"d.receiver = {s.arg(receiver)}")
        async with self.store._read() as tx:
            found = await tx.fetch(
                f"{_DELIVERY_VIEW} WHERE {s.where()} ORDER BY d.updated_at, d.notification_id", *s.args
            )
        return [_delivery_json(r) for r in found]

    async def replay(self, ids: Sequence[str], actor: str, now: datetime) -> list[str]:
        """Dead letters among `ids` back to pending, due now, attempts reset; one audit row each."""
        t = self.ts(now)
        done: list[str] = []
        async with self.store._write() as tx:
            for nid in dict.fromkeys(ids):
                if await tx.execute(_REPLAY, t, nid):
                    done.append(nid)
            if done:
                await tx.executemany(AUDIT, [(t, actor, "delivery.replay", nid, "") for nid in done])
        return done

    # -- receivers --
    async def receiver_state(self, now: datetime, window: timedelta = timedelta(days=1)) -> ReceiverState:
        since = self.ts(now - window)
        async with self.store._read() as tx:
            sent = await tx.fetch(
                "SELECT receiver, MAX(sent_at) AS at FROM deliveries WHERE status = 'sent' GROUP BY receiver"
            )
            failed = await tx.fetch(
                "SELECT receiver, notification_id, status, attempts, last_error, updated_at FROM deliveries "
                "WHERE last_error IS NOT NULL AND status <> 'sent' AND updated_at >= $1 "
                "ORDER BY updated_at DESC LIMIT 500",
                since,
            )
            disabled = await tx.fetch("SELECT name, disabled_reason, at FROM receivers_state")
            enabled = await tx.fetch(
                "SELECT target, actor, at FROM console_audit WHERE action = 'receiver.enable' ORDER BY seq"
            )
        state = ReceiverState(counts=await self.store.delivery_counts())
        for r in sent:
            at = rows.read_ts(r["at"])
            if at is not None:
                state.last_success[r["receiver"]] = at
        for r in failed:
            items = state.failures.setdefault(r["receiver"], [])
            if len(items) < 5:
                items.append(_delivery_json(r, brief=True))
        for r in disabled:
            state.disabled[r["name"]] = (r["disabled_reason"], rows.read_ts(r["at"]))
        for r in enabled:
            state.enabled_by[r["target"]] = {"actor": r["actor"], "at": core.iso(rows.read_ts(r["at"]))}
        return state

    async def enable_receiver(self, name: str, actor: str, now: datetime) -> bool:
        """Re-enable a receiver disabled by a 410; False when it was not disabled."""
        async with self.store._write() as tx:
            if await tx.execute("DELETE FROM receivers_state WHERE name = $1", name) == 0:
                return False
            await tx.execute(AUDIT, self.ts(now), actor, "receiver.enable", name, "")
        return True

    # -- sessions --
    async def create_session(self, id_hash: str, username: str, csrf: str, now: datetime, ttl: timedelta) -> None:
        async with self.store._write() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE expires_at <= $1", self.ts(now))
            await tx.execute(
                "INSERT INTO console_sessions (id, username, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                id_hash,
                username,
                csrf,
                self.ts(now),
                self.ts(now + ttl),
            )

    async def session(self, id_hash: str, now: datetime) -> Session | None:
        async with self.store._read() as tx:
            found = await tx.fetch(
                "SELECT username, csrf, expires_at FROM console_sessions WHERE id = $1 AND expires_at > $2",
                id_hash,
                self.ts(now),
            )
        if not found:
            return None
        r = found[0]
        expires = rows.read_ts(r["expires_at"])
        assert expires is not None
        return Session(r["username"], r["csrf"], expires)

    async def end_session(self, id_hash: str) -> None:
        async with self.store._write() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE id = $1", id_hash)


def _delivery_json(r: Any, brief: bool = False) -> dict[str, Any]:
    out = {
        "notification_id": r["notification_id"],
        "receiver": r["receiver"],
        "status": r["status"],
        "attempts": r["attempts"],
        "last_error": r["last_error"],
        "updated_at": core.iso(rows.read_ts(r["updated_at"])),
    }
    if not brief:
        out |= {
            "rule": r["rule"],
            "kind": r["kind"],
            "created_at": core.iso(rows.read_ts(r["created_at"])),
            "next_attempt_at": core.iso(rows.read_ts(r["next_attempt_at"])),
            "sent_at": core.iso(rows.read_ts(r["sent_at"])),
            "events": int(r["events"]),
            "meter_id": r["meter_id"],
        }
    return out
