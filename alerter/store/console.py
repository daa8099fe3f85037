"""The web console's reads and writes, over either SQL store's own connections and transactions.

Every mutation the console makes (silence, expire, replay, enable) is written in the same
transaction as its audit row (`console_audit`: when, who, what, on which id), which the meter
history, the silence list and the receivers page show. `ConsoleStore` holds the obligation,
meter and silence queries; those on deliveries, receivers and browser sessions are its part
in `consoleledger`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from alerter.console import core
from alerter.console.core import ObligationQuery, Sql
from alerter.models import Obligation, Silence
from alerter.store import rows
from alerter.store.base import Store
from alerter.store.consoleledger import AUDIT, ConsoleLedger
from alerter.store.rows import READ_COLUMNS
from alerter.store.schema import Dialect, expression
from alerter.store.sql import SqlStore

_SILENCE_INSERT = (
    "INSERT INTO silences (id, matchers, starts_at, ends_at, reason, created_by, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


@dataclass(frozen=True)
class ObligationPage:
    obligations: list[Obligation]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class MeterView:
    meter_id: str
    obligations: list[Obligation]
    history: list[dict[str, Any]]


class ConsoleStore(ConsoleLedger):
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
                sql = f"SELECT {READ_COLUMNS[self.dialect]} FROM obligations WHERE {where} LIMIT ${n}"
                out += [rows.obligation_from_row(r) for r in await tx.fetch(sql, *args, limit - len(out))]
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        """Action types and regions among open obligations (each read from its own index)."""
        region = expression(self.dialect, "region")
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
        region = expression(self.dialect, "region")
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
        ref = expression(self.dialect, "ref")
        async with self.store._read() as tx:
            meter_id = await tx.fetchval("SELECT meter_id FROM obligations WHERE meter_id = $1 LIMIT 1", ident)
            if meter_id is None:
                meter_id = await tx.fetchval(
                    # SQLite keeps no `last_seen` equal to `opened_at` (`sqlite.obligation_row`)
                    f"SELECT meter_id FROM obligations WHERE {ref} = $1 "
                    "ORDER BY COALESCE(last_seen, opened_at) DESC LIMIT 1",
                    ident,
                )
            if meter_id is None:
                return None
            obligations = await tx.fetch(
                f"SELECT {READ_COLUMNS[self.dialect]} FROM obligations WHERE meter_id = $1 "
                "ORDER BY status, deadline, program_identifier, delivery_period, action_type, action_code",
                meter_id,
            )
            history = await self._history(tx, meter_id)
        return MeterView(meter_id, [rows.obligation_from_row(r) for r in obligations], history)

    async def _history(self, tx: Any, meter_id: str) -> list[dict[str, Any]]:
        events = await tx.fetch(
            f"SELECT kind, routed, {rows.EVENT_READ} FROM events WHERE meter_id = $1 ORDER BY seq",
            meter_id,
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
            ev = rows.event_from_row(r)
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
            await tx.execute(AUDIT, self.ts(now), silence.created_by, "silence.create", silence.id, silence.reason)

    async def expire_silence(self, silence_id: str, actor: str, now: datetime) -> bool:
        t = self.ts(now)
        sql = (
            "UPDATE silences SET ends_at = $2, "
            "starts_at = CASE WHEN starts_at > $2 THEN $2 ELSE starts_at END WHERE id = $1 AND ends_at > $2"
        )
        async with self.store._write() as tx:
            if await tx.execute(sql, silence_id, t) == 0:
                return False
            await tx.execute(AUDIT, t, actor, "silence.expire", silence_id, "")
        return True

    async def open_obligations(self, batch: int = 2000) -> AsyncIterator[list[Obligation]]:
        after = ""
        while page := await self.store.open_obligations(after, batch):
            yield page
            after = page[-1].key_id

    # -- status --
    async def meta(self, *keys: str) -> dict[str, str | None]:
        return {k: await self.store.get_meta(k) for k in keys}
