"""The SQL store's silences and retention parts (SilenceStore, RetentionStore)."""

from __future__ import annotations

from datetime import datetime

from alerter.models import Silence
from alerter.store import retention, rows
from alerter.store.base import RetentionStore, SilenceStore
from alerter.store.sqltx import SqlHooks

_SILENCE_UPSERT = (
    "INSERT INTO silences (id, matchers, starts_at, ends_at, reason, created_by, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET matchers = excluded.matchers, "
    "starts_at = excluded.starts_at, ends_at = excluded.ends_at, reason = excluded.reason, "
    "created_by = excluded.created_by, created_at = excluded.created_at"
)


class SilenceSql(SqlHooks, SilenceStore):
    """Silences, over the backend hooks."""

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


class RetentionSql(SqlHooks, RetentionStore):
    """What `state.retention` lets the store forget (see store/retention.py)."""

    async def purge(self, before: datetime) -> dict[str, int]:
        async with self._write(fenced=True) as tx:
            return await retention.purge(tx, self._ts(before), self.dialect)
