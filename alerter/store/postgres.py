"""The shared store for several replicas: PostgreSQL through an asyncpg pool.

How this works: leadership is a session advisory lock (`pg_try_advisory_lock`) held on a
dedicated connection for as long as this instance polls; each acquisition increments
the token in the one-row `leader` table and returns it as the fencing token. Every
fenced write reads `leader.token FOR SHARE` in its own transaction and raises
FencedError when it is not ours, so a deposed leader whose lock connection died cannot
write after a successor took over (and the successor's increment waits for any fenced
write in flight). Deliveries are claimed with `FOR UPDATE SKIP LOCKED` plus a lease, so
every replica delivers and no row goes to two of them; a replica killed while holding rows
stops heartbeating (`instances.last_seen`), and the others claim its rows once its last
heartbeat is older than their timeout, long before the lease would expire. Lock keys derive from the
database and schema, so stores in different schemas never contend.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any, ClassVar

import asyncpg
import orjson

from alerter.errors import FencedError, StoreError
from alerter.models import Event, EventRef, Obligation
from alerter.store import packing, rows
from alerter.store.base import Store
from alerter.store.rows import EVENT_COLUMNS, WRITE_COLUMNS, Row
from alerter.store.schema import Dialect
from alerter.store.sql import SqlStore
from alerter.store.sqlobligations import META_UPSERT
from alerter.store.sqlrouting import ref_columns
from alerter.store.sqltx import Tx

_OBLIGATION_TYPES = ["text"] * 8 + ["timestamptz", "json"] + ["timestamptz"] * 4 + ["text", "int", "timestamptz"]
_EVENT_TYPES = ["text"] * 4 + ["timestamptz", "bool", "bytea"]


def _sent_rows(types: Sequence[str]) -> str:
    """A `SELECT` of the rows sent as `$1` (`_rows`), in the order sent, each value cast to its
    column's type (bytes are sent in base64: `_base64`)."""
    values = ", ".join(f"decode(r->>{i}, 'base64')" if t == "bytea" else f"(r->>{i})::{t}" for i, t in enumerate(types))
    return f"SELECT {values} FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, ord) ORDER BY ord"


def _base64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode()


def _as_is(text: bytes, _: Event) -> bytes:
    return text


def _rows(values: Iterable[Sequence[Any]]) -> str:
    """Rows sent as one parameter: a JSON array of arrays, which PostgreSQL reads in C
    (`_sent_rows`). Sent as one array per column (`unnest`), asyncpg checks the type of every
    element in Python, two `isinstance` against abstract classes each: at an obligation's 17
    columns, more of the main thread's time than the rest of a page's write (README, "Cost of
    a large backlog")."""
    return orjson.dumps(list(values)).decode()


_UPSERT_OBLIGATIONS = (
    f"INSERT INTO obligations ({WRITE_COLUMNS}) {_sent_rows(_OBLIGATION_TYPES)} ON CONFLICT (key_id) "
    "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in WRITE_COLUMNS.split(", ")[6:])
)
_INSERT_EVENTS = f"INSERT INTO events ({EVENT_COLUMNS}) {_sent_rows(_EVENT_TYPES)} ON CONFLICT (id) DO NOTHING"
_APPEND_MEMBERS = (
    f"INSERT INTO group_members (group_key, event_id, kind, key_id) {_sent_rows(['text'] * 4)} ON CONFLICT DO NOTHING"
)
_REMOVE_MEMBERS = (
    f"DELETE FROM group_members m USING ({_sent_rows(['text'] * 2)}) AS t(k, e) "
    "WHERE m.group_key = t.k AND m.event_id = t.e"
)
_INSERT_TOLD = f"INSERT INTO notified (key_id, receiver) {_sent_rows(['text'] * 2)} ON CONFLICT DO NOTHING"
_INSERT_LINKS = (
    f"INSERT INTO notification_events (event_id, notification_id, position) {_sent_rows(['text', 'text', 'int'])} "
    "ON CONFLICT DO NOTHING"
)
_ACQUIRE = (
    "INSERT INTO leader (id, token, owner, acquired_at) VALUES (1, 1, $1, now()) "
    "ON CONFLICT (id) DO UPDATE SET token = leader.token + 1, owner = excluded.owner, "
    "acquired_at = excluded.acquired_at RETURNING token"
)
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection whose backend was terminated mid-operation
    OSError,
    asyncio.TimeoutError,
)
_KEEPALIVE = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
_POOL_SETTINGS = _KEEPALIVE | {"idle_in_transaction_session_timeout": "30s"}
"""The pool's sessions: a replica that dies, or stops (a VM pause), inside a write transaction
leaves its row locks (the leader row's among them) to the server for 30 s at most, not until
the server notices the dead connection (hours, at the operating system's keepalive defaults)."""
_LEADER_SETTINGS = _KEEPALIVE | {"lock_timeout": "5s"}
"""The leadership session: a takeover that waits on the leader row (locked by a deposed leader's
open transaction) gives up after 5 s and is tried again, rather than hanging the poll job."""


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages: the user info's password
    (everything up to the last `@`, as a password may hold an unencoded `/`, `?` or `#`) and the
    query's `password` and `sslpassword`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(a URL without a scheme)"
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[: rest.index(':')]}:***@{rest[at + 1 :]}"
    where, question, query = rest.partition("?")
    if question:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(k + eq + ("***" if k.lower() in _SECRET_PARAMETERS else v) for k, eq, v in pairs)
    return f"{scheme}://{where}{question}{query}"


def _lock_key(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big", signed=True)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as `UPDATE 3` or `INSERT 0 5`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        found: Sequence[Row] = await self._conn.fetch(sql, *args)
        return found

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        return _count(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        if args:
            await self._conn.executemany(sql, args)


class PostgresStore(SqlStore, Store):
    """The Store on PostgreSQL; `schema` (created if missing) isolates one deployment or test."""

    dialect: ClassVar[Dialect] = "postgres"
    skip_locked: ClassVar[str] = "FOR UPDATE OF d SKIP LOCKED"

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 10, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self._dsn = url
        self.url = redact(url)
        self.schema = schema
        self._settings = {"application_name": "alerter"} | ({"search_path": schema} if schema else {})
        self._pool_size = pool_size
        self._pool: Any = None
        self._leader_conn: Any = None
        self._token: int | None = None
        self._leader_key = self._migrate_key = 0

    async def open(self) -> None:
        try:
            if self.schema:
                conn = await asyncpg.connect(self._dsn, server_settings=self._settings)
                try:
                    async with conn.transaction():  # replicas starting together create it once
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key("alerter-schema", self.schema))
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, server_settings=self._settings | _POOL_SETTINGS
            )
        except _DB_ERRORS as err:
            raise StoreError(f"cannot connect to PostgreSQL at {self.url}: {str(err) or 'no answer in time'}") from err
        except ValueError:  # asyncpg's words may quote the URL, password and all
            raise StoreError(f"cannot connect to PostgreSQL at {self.url}: the URL cannot be read") from None
        try:
            async with self._read() as tx:
                where = (await tx.fetch("SELECT current_database() AS db, current_schema() AS s"))[0]
            place = (where["db"], where["s"] or "")
            self._leader_key = _lock_key("alerter-leader", *place)
            self._migrate_key = _lock_key("alerter-migrate", *place)
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _lock_migrations(self, tx: Tx) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", self._migrate_key)

    async def close(self) -> None:
        await self.release_leadership()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (*_DB_ERRORS, TimeoutError):
                pool.terminate()

    def abort(self) -> None:
        for conn in (self._leader_conn, self._pool):
            if conn is not None:
                conn.terminate()
        self._leader_conn, self._pool, self._token = None, None, None

    # -- leadership --
    async def try_acquire_leadership(self, owner: str) -> int | None:
        """Also sets this store's fence to the new token. A follower keeps its connection between tries."""
        if self._token is not None and await self.still_leader():
            return self._token
        try:
            if self._leader_conn is None or self._leader_conn.is_closed():
                self._leader_conn = await asyncpg.connect(self._dsn, server_settings=self._settings | _LEADER_SETTINGS)
            if not await self._leader_conn.fetchval("SELECT pg_try_advisory_lock($1)", self._leader_key):
                return None
            token = int(await self._leader_conn.fetchval(_ACQUIRE, owner))
        except _DB_ERRORS as err:
            await self._drop_leader_conn()
            raise StoreError(f"leadership on {self.url}: {err}") from err
        self._token = token
        self.set_fence(token)
        return token

    async def still_leader(self) -> bool:
        conn = self._leader_conn
        if conn is None or self._token is None or conn.is_closed():
            return False
        try:
            token = await asyncio.wait_for(conn.fetchval("SELECT token FROM leader WHERE id = 1"), timeout=5)
        except _DB_ERRORS:
            token = None
        if token is None or token != self._token:
            await self._drop_leader_conn()
            return False
        return True

    async def release_leadership(self) -> None:
        """Give the lease up now (graceful shutdown) instead of when the connection dies."""
        conn = self._leader_conn
        if conn is not None and not conn.is_closed():
            with suppress(*_DB_ERRORS):
                await asyncio.wait_for(conn.fetchval("SELECT pg_advisory_unlock($1)", self._leader_key), 5)
        await self._drop_leader_conn()

    async def _drop_leader_conn(self) -> None:
        conn, self._leader_conn, self._token = self._leader_conn, None, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except _DB_ERRORS:
                conn.terminate()

    # -- backend hooks --
    def _pool_or_fail(self) -> Any:
        if self._pool is None:
            raise StoreError(f"state store {self.url} is not open")
        return self._pool

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        try:
            async with self._pool_or_fail().acquire() as conn:
                yield _PgTx(conn)
        except _DB_ERRORS as err:
            raise StoreError(f"state store {self.url}: {err}") from err

    @asynccontextmanager
    async def _write(self, fenced: bool = False) -> AsyncIterator[Tx]:
        try:
            async with self._pool_or_fail().acquire() as conn, conn.transaction():
                if fenced and self._fence is not None:
                    token = await conn.fetchval("SELECT token FROM leader WHERE id = 1 FOR SHARE")
                    if token != self._fence:
                        raise FencedError(
                            f"this instance lost leadership: its fencing token is {self._fence}, the store's is {token}"
                        )
                yield _PgTx(conn)
        except _DB_ERRORS as err:
            raise StoreError(f"state store {self.url}: {err}") from err

    def _ts(self, dt: datetime | None) -> Any:
        return rows.aware(dt)

    @staticmethod
    def _payload(text: bytes, event: Event) -> Any:
        return packing.pack_whole(text)

    def _in(self, n: int) -> str:
        return f"= ANY(${n}::text[])"

    def _ids(self, values: Sequence[str]) -> Any:
        return list(values)

    async def _write_page(
        self,
        obligations: list[Obligation],
        looks: list[datetime | None],
        events: list[Event],
        meta: list[tuple[str, str]],
    ) -> int:
        new = 0
        async with self._write(fenced=True) as tx:
            if obligations:
                params = (rows.obligation_params(o, rows.aware, at) for o, at in zip(obligations, looks, strict=True))
                await tx.execute(_UPSERT_OBLIGATIONS, _rows(params))
            if events:  # the page's payloads packed in one call
                unpacked = [rows.event_params(e, rows.aware, _as_is) for e in events]
                packed = packing.pack_whole_all([e[-1] for e in unpacked])
                event_rows = ((*e[:-1], _base64(p)) for e, p in zip(unpacked, packed, strict=True))
                new = await tx.execute(_INSERT_EVENTS, _rows(event_rows))
            if meta:
                await tx.executemany(META_UPSERT, meta)
        return new

    async def _append_members(self, tx: Tx, members: Sequence[tuple[str, str]], refs: Mapping[str, EventRef]) -> None:
        found = ((k, e, *ref_columns(refs.get(e))) for k, e in members)
        await tx.execute(_APPEND_MEMBERS, _rows(found))

    async def _remove_members(self, tx: Tx, members: Sequence[tuple[str, str]]) -> None:
        await tx.execute(_REMOVE_MEMBERS, _rows(members))

    async def _insert_told(self, tx: Tx, told: Sequence[tuple[str, str]]) -> None:
        await tx.execute(_INSERT_TOLD, _rows(told))

    async def _insert_links(self, tx: Tx, links: Sequence[tuple[str, str, int]]) -> None:
        await tx.execute(_INSERT_LINKS, _rows(links))
