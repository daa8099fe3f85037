"""The web console's reads and writes, over either SQL store's own connections and transactions.

Every mutation the console makes (silence, expire, replay, enable) is written in the same
transaction as its audit row (`console_audit`: when, who, what, on which id), which the meter
history, the silence list and the receivers page show. Browser sessions live in
`console_sessions` (a hash of the cookie, never the cookie), so any replica on a shared
PostgreSQL store accepts a session another one opened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from alerter.console import core
from alerter.console.core import ObligationQuery, Sql
from alerter.models import Obligation, Silence
from alerter.store import rows
from alerter.store.base import Store
from alerter.store.rows import OBLIGATION_COLUMNS
from alerter.store.schema import Dialect
from alerter.store.sql import SqlStore

_DELIVERY_VIEW = (
    "SELECT d.notification_id, d.receiver, d.status, d.attempts, d.next_attempt_at, d.last_error, d.sent_at, "
    "d.updated_at, n.rule, n.kind, n.created_at, "
    "(SELECT COUNT(*) FROM notification_events l WHERE l.notification_id = d.notification_id) AS events, "
    "(SELECT MIN(e.meter_id) FROM notification_events l JOIN events e ON e.id = l.event_id "
    "WHERE l.notification_id = d.notification_id) AS meter_id "
    "FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
)
_SILENCE_INSERT = (
    "INSERT INTO silences (id, matchers, starts_at, ends_at, reason, created_by, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
_AUDIT = "INSERT INTO console_audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)"
_REPLAY = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, "
    "lease_until = NULL, updated_at = $1 WHERE status = 'dead' AND notification_id = $2"
)


@dataclass(frozen=True)
class ObligationPage:
    obligations: list[Obligation]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class Session:
    username: str
    csrf: str
    expires_at: datetime


@dataclass(frozen=True)
class MeterView:
    meter_id: str
    obligations: list[Obligation]
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class ReceiverState:
    last_success: dict[str, datetime] = field(default_factory=dict)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    disabled: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    enabled_by: dict[str, dict[str, Any]] = field(default_factory=dict)


class ConsoleStore:
    """The console's queries on one opened store (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, SqlStore):
            raise TypeError(f"the console needs an SQL store, not {type(store).__name__}")
        self.store = store
        self.dialect: Dialect = store.dialect
        self.ts = store._ts

    # -- obligations --
    async def obligations(self, q: ObligationQuery, now: datetime) -> ObligationPage:
        base = core.obligation_filter(q, self.dialect, now, self.ts)
        found = await self._range(base, q.cursor, q.limit + 1)
        async with self.store._read() as tx:
            total = int(await tx.fetchval(f"SELECT COUNT(*) FROM obligations WHERE {base.where()}", *base.args))
        more = len(found) > q.limit
        page = found[: q.limit]
        return ObligationPage(page, total, core.cursor_after(page[-1]).encode() if more and page else None)

    async def all_obligations(
        self, q: ObligationQuery, now: datetime, batch: int = 1000
    ) -> AsyncIterator[list[Obligation]]:
        """Every obligation `q` selects, in pages of `batch` (CSV export)."""
        base = core.obligation_filter(q, self.dialect, now, self.ts)
        cursor = None
        while True:
            found = await self._range(base, cursor, batch)
            if not found:
                return
            yield found
            if len(found) < batch:
                return
            cursor = core.cursor_after(found[-1])

    async def _range(self, base: Sql, cursor: core.Cursor | None, limit: int) -> list[Obligation]:
        out: list[Obligation] = []
        async with self.store._read() as tx:
            for where, args in core.page_ranges(base, cursor, self.ts):
                if len(out) >= limit:
                    break
                n = len(args) + 1
                sql = f"SELECT {OBLIGATION_COLUMNS} FROM obligations WHERE {where} LIMIT ${n}"
                out += [rows.obligation_from_row(r) for r in await tx.fetch(sql, *args, limit - len(out))]
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        """Action types and regions among open obligations (each read from its own index)."""
        region = core.expr(self.dialect, "meter_region")
        async with self.store._read() as tx:
            types = await tx.fetch("SELECT DISTINCT action_type AS v FROM obligations WHERE status = 'open' ORDER BY 1")
            regions = await tx.fetch(f"SELECT DISTINCT {region} AS v FROM obligations WHERE status = 'open' ORDER BY 1")
        return {
            "action_type": [r["v"] for r in types if r["v"]],
            "transmission_region": [r["v"] for r in regions if r["v"]],
        }

    async def open_summary(self, now: datetime) -> dict[str, dict[str, int]]:
        """Open obligations counted by deadline bucket, action type, region and program; each count
        is its own grouped query, over an index where there is one."""
        s = Sql(self.ts)
        bucket = core.bucket_case(now, s)
        region = core.expr(self.dialect, "meter_region")
        out: dict[str, dict[str, int]] = {}
        async with self.store._read() as tx:
            for name, column, args in (
                ("bucket", bucket, s.args),
                ("action_type", "action_type", []),
                ("transmission_region", region, []),
                ("program_identifier", "program_identifier", []),
            ):
                found = await tx.fetch(
                    f"SELECT {column} AS v, COUNT(*) AS n FROM obligations WHERE status = 'open' GROUP BY 1", *args
                )
                counts = {str(r["v"] or ""): int(r["n"]) for r in found}
                out[name] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    # -- a meter --
    async def meter(self, ident: str) -> MeterView | None:
        """A meter by id, else by partner_reference; its obligations and its timeline."""
        ref = core.expr(self.dialect, "meter_ref")
        async with self.store._read() as tx:
            meter_id = await tx.fetchval("SELECT meter_id FROM obligations WHERE meter_id = $1 LIMIT 1", ident)
            if meter_id is None:
                meter_id = await tx.fetchval(
                    f"SELECT meter_id FROM obligations WHERE {ref} = $1 ORDER BY last_seen DESC LIMIT 1", ident
                )
            if meter_id is None:
                return None
            obligations = await tx.fetch(
                f"SELECT {OBLIGATION_COLUMNS} FROM obligations WHERE meter_id = $1 "
                "ORDER BY status, deadline, program_identifier, delivery_period, action_type, action_code",
                meter_id,
            )
            history = await self._history(tx, meter_id)
        return MeterView(meter_id, [rows.obligation_from_row(r) for r in obligations], history)

    async def _history(self, tx: Any, meter_id: str) -> list[dict[str, Any]]:
        events = await tx.fetch(
            "SELECT id, kind, occurred_at, routed, payload FROM events WHERE meter_id = $1 ORDER BY seq", meter_id
        )
        notes = await tx.fetch(
            "SELECT l.event_id, n.id, n.rule, n.receiver, n.kind, n.created_at, d.status, d.attempts, d.last_error, "
            "CASE WHEN n.kind = 'digest' THEN NULL ELSE n.payload END AS payload "
            "FROM notification_events l JOIN events e ON e.id = l.event_id "
            "JOIN notifications n ON n.id = l.notification_id "
            "LEFT JOIN deliveries d ON d.notification_id = n.id AND d.receiver = n.receiver "
            "WHERE e.meter_id = $1 ORDER BY n.created_at, n.id",
            meter_id,
        )
        silenced = await tx.fetch(
            "SELECT s.event_id, s.silence_id, x.created_by, x.reason FROM silenced s "
            "JOIN events e ON e.id = s.event_id LEFT JOIN silences x ON x.id = s.silence_id "
            "WHERE e.meter_id = $1 ORDER BY s.silence_id",
            meter_id,
        )
        waiting = await tx.fetch(
            "SELECT m.event_id, g.rule, g.receiver, g.group_values FROM group_members m "
            "JOIN events e ON e.id = m.event_id JOIN groups g ON g.key = m.group_key WHERE e.meter_id = $1",
            meter_id,
        )
        ids = list(dict.fromkeys(r["id"] for r in notes))
        audit = (
            await tx.fetch(
                f"SELECT at, actor, action, target, detail FROM console_audit WHERE target {self.store._in(1)} "
                "ORDER BY seq",
                self.store._ids(ids),
            )
            if ids
            else []
        )
        by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in notes:
            group = orjson.loads(r["payload"]).get("group", {}) if r["payload"] else {"digest": "initial sync"}
            by_event[r["event_id"]].append(
                {
                    "rule": r["rule"],
                    "receiver": r["receiver"],
                    "group": group,
                    "notification_id": r["id"],
                    "status": r["status"] or "no ledger row",
                    "attempts": r["attempts"],
                    "last_error": r["last_error"],
                }
            )
        for r in silenced:
            by_event[r["event_id"]].append(
                {"status": "silenced", "silenced_by": r["silence_id"], "silence_author": r["created_by"] or ""}
            )
        for r in waiting:
            values = orjson.loads(r["group_values"])
            by_event[r["event_id"]].append(
                {"rule": r["rule"], "receiver": r["receiver"], "group": values, "status": "waiting in group"}
            )
        out: list[dict[str, Any]] = []
        for r in events:
            ev = rows.event_from_payload(r["payload"])
            o = ev.obligation
            base = {
                "at": core.iso(ev.occurred_at),
                "event": ev.kind,
                "detail": ev.detail,
                "event_id": ev.id,
                "action_type": o.action_type,
                "action_code": o.action_code,
                "program_identifier": o.program_identifier,
                "delivery_period": o.delivery_period,
                "rule": None,
                "receiver": None,
                "notification_id": None,
            }
            outcomes = by_event.get(r["id"]) or [{"status": "routing" if not r["routed"] else "not notified"}]
            out += [base | outcome for outcome in outcomes]
        for r in audit:
            out.append(
                {
                    "at": core.iso(rows.read_ts(r["at"])),
                    "event": r["action"],
                    "actor": r["actor"],
                    "notification_id": r["target"],
                    "detail": r["detail"],
                    "status": "",
                }
            )
        out.sort(key=lambda e: e["at"] or "")
        return out

    # -- silences --
    async def silences(self, now: datetime, expired_limit: int = 100) -> list[dict[str, Any]]:
        """Active and pending silences, and the most recent expired ones, with who made and ended them."""
        cols = "id, matchers, starts_at, ends_at, reason, created_by, created_at"
        t = self.ts(now)
        async with self.store._read() as tx:
            live = await tx.fetch(f"SELECT {cols} FROM silences WHERE ends_at > $1 ORDER BY starts_at, id", t)
            gone = await tx.fetch(
                f"SELECT {cols} FROM silences WHERE ends_at <= $1 ORDER BY ends_at DESC, id LIMIT $2", t, expired_limit
            )
            found = [*live, *gone]
            ids = [r["id"] for r in found]
            audit = (
                await tx.fetch(
                    f"SELECT target, actor, at FROM console_audit WHERE action = 'silence.expire' "
                    f"AND target {self.store._in(1)}",
                    self.store._ids(ids),
                )
                if ids
                else []
            )
            counts = (
                await tx.fetch(
                    f"SELECT silence_id, COUNT(*) AS n FROM silenced WHERE silence_id {self.store._in(1)} "
                    "GROUP BY silence_id",
                    self.store._ids(ids),
                )
                if ids
                else []
            )
        expired_by = {r["target"]: r["actor"] for r in audit}
        silenced = {r["silence_id"]: int(r["n"]) for r in counts}
        out = []
        for r in found:
            s = rows.silence_from_row(r)
            state = "pending" if s.starts_at > now else ("active" if now < s.ends_at else "expired")
            out.append(
                {
                    "id": s.id,
                    "matchers": s.matchers,
                    "starts_at": core.iso(s.starts_at),
                    "ends_at": core.iso(s.ends_at),
                    "reason": s.reason,
                    "created_by": s.created_by,
                    "created_at": core.iso(s.created_at),
                    "state": state,
                    "expired_by": expired_by.get(s.id),
                    "silenced_events": silenced.get(s.id, 0),
                }
            )
        return out

    async def add_silence(self, silence: Silence, now: datetime) -> None:
        async with self.store._write() as tx:
            await tx.execute(_SILENCE_INSERT, *rows.silence_params(silence, self.ts))
            await tx.execute(_AUDIT, self.ts(now), silence.created_by, "silence.create", silence.id, silence.reason)

    async def expire_silence(self, silence_id: str, actor: str, now: datetime) -> bool:
        t = self.ts(now)
        sql = (
            "UPDATE silences SET ends_at = $2, "
            "starts_at = CASE WHEN starts_at > $2 THEN $2 ELSE starts_at END WHERE id = $1 AND ends_at > $2"
        )
        async with self.store._write() as tx:
            if await tx.execute(sql, silence_id, t) == 0:
                return False
            await tx.execute(_AUDIT, t, actor, "silence.expire", silence_id, "")
        return True

    async def open_obligations(self, batch: int = 2000) -> AsyncIterator[list[Obligation]]:
        after = None
        while page := await self.store.open_obligations(after, batch):
            yield page
            after = page[-1].key

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
                await tx.executemany(_AUDIT, [(t, actor, "delivery.replay", nid, "") for nid in done])
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
            await tx.execute(_AUDIT, self.ts(now), actor, "receiver.enable", name, "")
        return True

    # -- status --
    async def meta(self, *keys: str) -> dict[str, str | None]:
        return {k: await self.store.get_meta(k) for k in keys}

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
