"""The SQL store's obligations part: cycle meta, obligations, reminder looks and history (ObligationStore).

Obligations and events are written by `SqlStore.commit_page` through the backend's bulk writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from alerter.models import Obligation, ObligationKey
from alerter.store import base, rows, schema
from alerter.store.base import HistoryEntry, ObligationStore
from alerter.store.rows import READ_COLUMNS, Row
from alerter.store.sqltx import SqlHooks

META_UPSERT = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
# The two queries below test the status on each row their own index yields (`remind_at`; the
# key's), not through an index led by it: SQLite's statistics are sampled (`analysis_limit`),
# and on a large state they say a status holds ~1,000 rows, so the planner would read and sort
# every open obligation instead (`test_store_sqlite`). Only open obligations have a `remind_at`.
_OPEN_BY_ITS_OWN_INDEX = {
    d: f"SELECT {c} FROM obligations WHERE status || '' = 'open'" for d, c in READ_COLUMNS.items()
}
DUE_REMINDERS = {d: f"{q} AND remind_at <= $1 ORDER BY remind_at LIMIT $2" for d, q in _OPEN_BY_ITS_OWN_INDEX.items()}
OPEN_IN_KEY_ORDER = {d: f"{sql} AND key_id > $1 ORDER BY key_id LIMIT $2" for d, sql in _OPEN_BY_ITS_OWN_INDEX.items()}


class ObligationSql(SqlHooks, ObligationStore):
    """Cycle state, obligations and their history, over the backend hooks."""

    unreadable: list[str]
    """Stored obligations `open_obligations` skipped because they cannot be read (the
    reader takes and clears them)."""

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
        sql = f"SELECT {READ_COLUMNS[self.dialect]} FROM obligations WHERE meter_id {self._in(1)}"
        async with self._read() as tx:
            found = await tx.fetch(sql, self._ids(list(dict.fromkeys(meter_ids))))
        return {o.key: o for o in map(rows.obligation_from_row, found)}

    async def open_meter_ids(self) -> list[str]:
        sql = "SELECT DISTINCT meter_id FROM obligations WHERE status = 'open' ORDER BY meter_id"
        async with self._read() as tx:
            return [r["meter_id"] for r in await tx.fetch(sql)]

    async def open_obligations(self, after: str = "", limit: int = 1000) -> list[Obligation]:
        async with self._read() as tx:
            found = await tx.fetch(OPEN_IN_KEY_ORDER[self.dialect], after, limit)
        return self._readable(found)

    async def reminder_candidates(self, now: datetime, limit: int = 1000) -> list[Obligation]:
        async with self._read() as tx:
            found = await tx.fetch(DUE_REMINDERS[self.dialect], self._ts(now), limit)
        bad: list[tuple[str, int]] = []
        out = self._readable(found, bad)
        if bad:  # not offered again until rewritten: the step's next batch moves on
            await self.set_remind_at([(key, version, None) for key, version in bad])
        return out

    async def set_remind_at(self, items: Sequence[tuple[str, int, datetime | None]]) -> None:
        if not items:
            return
        sql = "UPDATE obligations SET remind_at = $1 WHERE key_id = $2 AND version = $3 AND status = 'open'"
        async with self._write(fenced=True) as tx:
            await tx.executemany(sql, [(self._ts(at), key_id, version) for key_id, version, at in items])

    async def reset_remind_at(self, at: datetime) -> None:
        sql = (
            "UPDATE obligations SET remind_at = $1 WHERE key_id IN (SELECT key_id FROM obligations "
            "WHERE status = 'open' AND (remind_at IS NULL OR remind_at > $1) LIMIT $2)"
        )
        while True:  # a batch per transaction; each batch leaves the rows it changed out of the next
            async with self._write(fenced=True) as tx:
                if await tx.execute(sql, self._ts(at), base.WRITE_BATCH) < base.WRITE_BATCH:
                    return

    def _readable(self, found: Sequence[Row], bad: list[tuple[str, int]] | None = None) -> list[Obligation]:
        """The obligations of these rows; one that cannot be read is skipped and named in
        `unreadable` (and its key id and version added to `bad`)."""
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
                    bad.append((r["key_id"], r["version"]))
        return out

    async def count_open(self) -> list[tuple[str, datetime | None, int]]:
        sql = (
            "SELECT action_type, deadline, COUNT(*) AS n FROM obligations WHERE status = 'open' "
            "GROUP BY action_type, deadline ORDER BY action_type, deadline"
        )
        async with self._read() as tx:
            return [(r["action_type"], rows.read_ts(r["deadline"]), r["n"]) for r in await tx.fetch(sql)]

    async def meters_by_reference(self, partner_reference: str) -> list[str]:
        ref = schema.expression(self.dialect, "ref")  # as its index spells it
        sql = f"SELECT DISTINCT meter_id FROM obligations WHERE {ref} = $1 ORDER BY meter_id"
        async with self._read() as tx:
            return [r["meter_id"] for r in await tx.fetch(sql, partner_reference)]

    async def history(self, meter_id: str) -> list[HistoryEntry]:
        async with self._read() as tx:
            events = await tx.fetch(f"SELECT {rows.EVENT_READ} FROM events WHERE meter_id = $1 ORDER BY seq", meter_id)
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
            event = rows.event_from_row(r)
            entries.append(HistoryEntry(at=event.occurred_at, event=event, outcomes=tuple(outcomes[r["id"]])))
        return entries
