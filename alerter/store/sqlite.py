"""The embedded default store: one SQLite file, one process, one connection.

How this works: a sidecar `<file>.lock` holds an exclusive flock (and the owner's pid) for
the store's lifetime, so a second alerter on the same file refuses to start. All work goes
through one aiosqlite connection guarded by an asyncio lock; writes are explicit
`BEGIN IMMEDIATE ... COMMIT` transactions, and a poll page's (`commit_page`) runs whole in
one call on the connection's thread. The journal is WAL with `synchronous=NORMAL`:
a committed transaction is in the WAL before COMMIT returns, so it survives the process
being killed; only an OS crash or power loss can drop the last few commits, which the
design tolerates (the watermark advances after the cycle commits and event ids are
deterministic, so a rolled-back cycle is redone with the same ids and idempotency keys).
This instance is always the leader (token 1), and the only one delivering: when it starts,
it releases every delivery lease a killed predecessor left (`start_instance`).
"""

from __future__ import annotations

import asyncio
import fcntl
import operator
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from functools import lru_cache
from itertools import chain
from typing import Any, ClassVar

import aiosqlite
import orjson

from alerter.errors import NoStateError, StoreError
from alerter.models import Event, EventRef, Obligation, RoutingWrite
from alerter.store import packing, rows
from alerter.store.base import META_DEFERRED, Store
from alerter.store.rows import EVENT_COLUMNS, WRITE_COLUMNS, Row
from alerter.store.schema import Dialect
from alerter.store.sql import SqlStore
from alerter.store.sqlledger import RELEASE_LEASES
from alerter.store.sqlobligations import META_UPSERT
from alerter.store.sqlrouting import ref_columns
from alerter.store.sqltx import Tx

_OBLIGATION_COLUMNS = f"{WRITE_COLUMNS}, partner_reference, transmission_region"
"""What SQLite writes of an obligation: its meter as `rows.meter_row`, and the two meter
attributes the console's indexes read as columns (schema `_METER_COLUMNS`)."""
_DESCRIPTION = 8
"""Which column of an obligation's row (`obligation_row`, 1-based) holds its description: the
text the row is given, its number (in `descriptions`) what is stored."""
_UPSERT_OBLIGATION = (
    f"INSERT INTO obligations ({_OBLIGATION_COLUMNS}) SELECT "
    + ", ".join(
        f"(SELECT id FROM descriptions WHERE text = column{i})" if i == _DESCRIPTION else f"column{i}"
        for i in range(1, 20)
    )
    + f" FROM (VALUES ({', '.join(f'${i}' for i in range(1, 20))})) WHERE true ON CONFLICT (key_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _OBLIGATION_COLUMNS.split(", ")[6:])
)
"""Several rows per statement (`_multi_row`), each description's number looked up by SQLite
(each new text added before: `_commit_page`); `WHERE true` tells an upsert's `ON` apart from a join's."""
_INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"
PAGE_SIZE = 16384
WAL_CHECKPOINT_BYTES = 32 << 20
_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    # 16 MiB of page cache: the state file's hot pages (open obligations, recent events) fit,
    # and memory stays flat as the file grows; a larger cache bought no measurable speed.
    "PRAGMA cache_size = -16384",
    # Checkpoint the WAL into the state file every ~32 MiB rather than every 4 MiB: a sweep's
    # batched commits rewrite the same index pages, and each checkpoint copies them (and
    # syncs) once. The file is cut back to 64 MiB after a checkpoint. (The pragma counts
    # pages: set in `open` from the file's page size.)
    "PRAGMA journal_size_limit = 67108864",
    "PRAGMA temp_store = MEMORY",
    # ANALYZE (`_analyze`, and `PRAGMA optimize` at close) samples this many rows of each
    # index rather than reading it whole: statistics enough for the planner, in milliseconds.
    # On a large state they say a status holds ~1,000 rows: the queries that a status-led
    # index would mislead do not let the planner take one (`sqlobligations`). Read whole, the
    # console's filtered page took 38-47 ms instead of 22-28 (`bench.bench_console`).
    "PRAGMA analysis_limit = 1000",
)


@lru_cache(maxsize=512)
def _sqlite_sql(sql: str) -> str:
    """`$n` placeholders to SQLite's numbered `?n`."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


ROWS_PER_STATEMENT = 1024
"""The most rows one multi-row `INSERT` binds (`_insert_rows`); fewer are bound by powers of
two, so that each statement has at most eleven shapes to prepare and keep in the cache."""
_ROW = re.compile(r"VALUES \((\?\d+(?:, \?\d+)*)\)")


@lru_cache(maxsize=128)
def _multi_row(sql: str, rows: int) -> str | None:
    """A one-row `INSERT ... VALUES (?1, ..., ?n) ...` for `rows` rows at once; None for any
    other statement (placeholders out of order, repeated, or outside the row)."""
    found = list(_ROW.finditer(sql))
    if not sql.startswith("INSERT") or len(found) != 1:
        return None
    row = found[0]
    marks = row.group(1).split(", ")
    if marks != [f"?{i}" for i in range(1, len(marks) + 1)] or "?" in sql[: row.start()] + sql[row.end() :]:
        return None
    values = ", ".join(["(" + ", ".join("?" * len(marks)) + ")"] * rows)
    return f"{sql[: row.start()]}VALUES {values}{sql[row.end() :]}"


def _insert_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """`executemany`, up to `ROWS_PER_STATEMENT` rows per statement where `_multi_row` can;
    returns the rows changed. Row by row, the connection's thread takes the GIL back for every
    row: whenever the main thread is busy (decoding the next pages during a poll's commit),
    each row then waits for it. `python -m bench.bench_insert` (obligation rows, full schema, at
    the switch interval `alerter.tuning` sets): row by row 41 µs a row alone and 833 beside a
    busy thread; multi-row 48 and 54 (82 beside it at the interpreter's default interval)."""
    if not rows:
        return 0
    if _multi_row(sql, 1) is None:
        return int(db.executemany(sql, rows).rowcount)
    most = max(1, min(ROWS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(rows[0])))
    changed = at = 0
    while at < len(rows):
        n = min(most, 1 << ((len(rows) - at).bit_length() - 1))  # the largest power of two left
        multi = _multi_row(sql, n)
        assert multi is not None
        changed += db.execute(multi, list(chain.from_iterable(rows[at : at + n]))).rowcount
        at += n
    return changed


_UPSERT_OBLIGATION_Q = _sqlite_sql(_UPSERT_OBLIGATION)
_KEY_OF_ROW = operator.itemgetter(5)
"""An obligation row's primary key (its key id, after the key's five columns)."""
_INSERT_EVENT_Q = _sqlite_sql(_INSERT_EVENT)
_META_UPSERT_Q = _sqlite_sql(META_UPSERT)
_ADD_DESCRIPTION = "INSERT INTO descriptions (text) VALUES (?) ON CONFLICT (text) DO NOTHING"
_INSERT_LINKS = (
    "INSERT OR IGNORE INTO notification_links (notification_seq, position, event_seq) "
    "SELECT n.seq, t.column3, e.seq FROM (VALUES ($1, $2, $3)) AS t "
    "JOIN notifications n ON n.id = t.column2 JOIN events e ON e.id = t.column1"
)
"""(event id, notification id, position) rows as `notification_links` holds them, several per
statement (`_multi_row`); a link whose event or notification is not stored is not written."""
_LINK_ORDER = operator.itemgetter(1, 2)
_DESCRIPTION_OF = operator.attrgetter("action_description")
_INCREMENTAL = 2
"""`PRAGMA auto_vacuum` of a file that gives its free pages back when told (`tidy`)."""
TIDY_PAGES = 64
"""`tidy` leaves fewer free pages than this alone (1 MiB of 16 KiB pages): later writes reuse them."""
TIDY_CHUNK = 1024
"""The most free pages `tidy` gives back in one transaction (16 MiB of 16 KiB pages)."""


_NO_COLUMNS = {"partner_reference": "", "transmission_region": ""}
"""What `_meter_tags` gives for the row's own meter columns: it reads only the tags."""


def _meter_tags(stored: str | bytes | None) -> str | None:
    """SQL `alerter_tags(meter)`: an obligation's meter's tags as a JSON array, whichever form
    the meter is kept in (schema's `meter_tags`, for the console's tag filter)."""
    if stored is None:
        return None
    return rows.dumps(rows.meter_from_row("", stored, _NO_COLUMNS).tags)


async def _connect(path: str) -> aiosqlite.Connection:
    """The connection, its thread started. When the file cannot be opened, aiosqlite stops that
    thread without waiting for it, and the thread then answers a future on the event loop: were
    the loop closed by then (a CLI command that ends on the error), it would print a traceback
    of its own after the command's one-line error. So its end is waited for."""
    conn = aiosqlite.connect(path, isolation_level=None)
    try:
        return await conn
    except BaseException:
        await asyncio.to_thread(conn._thread.join, 5)
        raise


def _transaction(conn: aiosqlite.Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Runs in the connection's thread: `fn(db, *args)` inside BEGIN IMMEDIATE ... COMMIT."""
    db = conn._conn
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db, *args)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def obligation_row(o: Obligation, remind_at: datetime | None) -> tuple[Any, ...]:
    """An obligation's row (`_OBLIGATION_COLUMNS`), its description as text (`_UPSERT_OBLIGATION`
    writes its number), and neither `first_seen` nor `last_seen` when it is `opened_at`."""
    m = o.meter
    return (
        *rows.obligation_params(o, rows.instant, remind_at, rows.meter_row, seen_once=True),
        m.partner_reference,
        m.transmission_region,
    )


def _to_pack(text: bytes, event: Event) -> bytes:
    """An event's payload as `_commit_page` packs it: cut here, on the main thread (Python's
    work), packed there, in the connection's thread, outside the GIL."""
    return packing.cut(text, rows.event_refs(event))


def _commit_page(
    db: sqlite3.Connection,
    obligations: list[tuple[Any, ...]],
    descriptions: set[str],
    events: list[tuple[Any, ...]],
    meta: list[tuple[str, str]],
) -> int:
    """Obligations are written in primary-key order: their key ids (hashes) fall at random
    places in the key's B-tree, and in key order each of its pages is visited once per write
    rather than once per row (`python -m bench.bench_insert`, full schema: 35 µs a row against
    48); their descriptions (`descriptions`: each text among them once) as numbers.
    Each key is written once, so the order changes nothing else; events keep theirs, their
    payloads (JSON, already cut: `_to_pack`) packed here, in the connection's thread, in one
    call (`packing.pack_all`)."""
    obligations.sort(key=_KEY_OF_ROW)
    if descriptions:
        db.executemany(_ADD_DESCRIPTION, [(t,) for t in descriptions])
    _insert_rows(db, _UPSERT_OBLIGATION_Q, obligations)
    packed = packing.pack_all([e[-1] for e in events])
    new = _insert_rows(db, _INSERT_EVENT_Q, [(*e[:-1], p) for e, p in zip(events, packed, strict=True)])
    if meta:
        db.executemany(_META_UPSERT_Q, meta)
    return new


class _InThreadTx:
    """A transaction's statements run straight on the connection, in its thread: a write built
    whole beforehand goes there in one trip (`_in_one_hop`, `_run_through`). Its methods never
    wait on anything."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        return list(self._db.execute(_sqlite_sql(sql), args).fetchall())

    async def fetchval(self, sql: str, *args: Any) -> Any:
        found = self._db.execute(_sqlite_sql(sql), args).fetchone()
        return None if found is None else found[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return int(self._db.execute(_sqlite_sql(sql), args).rowcount)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        _insert_rows(self._db, _sqlite_sql(sql), args)


def _run_through(db: sqlite3.Connection, body: Callable[[Tx], Coroutine[Any, Any, None]]) -> None:
    """Runs in the connection's thread: `body`, written against `Tx`, on an `_InThreadTx`, to
    its end (its awaits never suspend, so stepping it once runs it through)."""
    steps = body(_InThreadTx(db))
    try:
        steps.send(None)
    except StopIteration:
        return
    steps.close()
    raise RuntimeError("a write run in the connection's thread waited on something else")


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        return list(await self._conn.execute_fetchall(_sqlite_sql(sql), args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        found = await self._conn.execute_fetchall(_sqlite_sql(sql), args)
        return next(iter(found))[0] if found else None

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._conn.execute(_sqlite_sql(sql), args) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        if args:
            run: Callable[..., Awaitable[Any]] = self._conn._execute  # in its thread, as `_in_one_hop`
            await run(_insert_rows, self._conn._conn, _sqlite_sql(sql), args)


def sqlite_path(url: str) -> str:
    """`sqlite:///relative.db` -> `relative.db`, `sqlite:////abs.db` -> `/abs.db`, `:memory:`."""
    rest = url.removeprefix("sqlite://")
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise StoreError(f"invalid SQLite state url {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
    return rest[1:]


def _check_exists(path: str) -> None:
    """A state command on a mistyped path would otherwise make a new, empty state there and
    report success, e.g. a silence the service never reads."""
    if not os.path.exists(path):
        raise NoStateError(
            f"no state file at {os.path.abspath(path)}: check state.url (a relative path is "
            "read from the working directory) or start `alerter run` (or `alerter once`) first"
        )


class SqliteStore(SqlStore, Store):
    """The Store on one SQLite file (or `:memory:`).

    `shared=True` skips the single-instance lock: for short CLI commands (silences, dead
    letters, history) beside a running service; SQLite's own locking keeps them safe.
    """

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(self, url: str, *, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.url = url
        self.path = sqlite_path(url)
        self._conn: aiosqlite.Connection | None = None
        self._tx: _SqliteTx | None = None
        self._lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the file opened at `path` (`_still_there`)."""
        self._member_seq: int | None = None
        """The last group member's number (`_append_members`), read from the file at first use."""

    async def open(self) -> None:
        self._member_seq = None
        if self.path != ":memory:" and self.shared:
            _check_exists(self.path)
        if self.path != ":memory:" and not self.shared:
            self._take_file_lock()
        try:
            self._conn = await _connect(self.path)
            self._conn.row_factory = sqlite3.Row
            self._tx = _SqliteTx(self._conn)
            if self.path != ":memory:":
                # A new file gets 16 KiB pages (an existing one keeps its own): a sweep's commits
                # touch index pages all over the file, and with larger pages there are fewer of
                # them to write to the WAL and checkpoint. Set before WAL mode fixes the size.
                await self._conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                await self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # `tidy`; a new file only
                mode = await self._tx.fetchval("PRAGMA journal_mode = WAL")
                if str(mode).lower() != "wal":
                    raise StoreError(f"state file {self.path}: cannot use WAL journal (got {mode})")
            for pragma in _PRAGMAS:
                await self._conn.execute(pragma)
            await self._conn.create_function("alerter_tags", 1, _meter_tags, deterministic=True)
            await self._conn.create_function("alerter_instant", 1, rows.instant_of, deterministic=True)
            page_size = int(await self._tx.fetchval("PRAGMA page_size"))
            await self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size}")
            if self.path != ":memory:":
                st = os.stat(self.path)
                self._identity = (st.st_dev, st.st_ino)
            await self._build_deferred()  # an initial sync stopped before it built them
            async with self._sorting_on_disk():  # a migration may build an index
                await self._migrate()
            if not self.shared:
                await self._analyze()
        except BaseException as err:
            await self.close()
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"cannot open state file {self.path}: {err}") from err
            raise

    def _take_file_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"cannot open state file {self.path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"state file {self.path} is in use by another alerter (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._tx = self._conn, None, None
            with suppress(sqlite3.Error):
                await conn.execute("PRAGMA optimize")  # keeps the planner's statistics fresh
            await conn.close()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def abort(self) -> None:
        """Nothing to drop: a local file answers (its lock goes with the process)."""

    # -- instances: one per file, so whatever a lease was held by is dead --
    async def start_instance(self, owner: str, now: datetime) -> int:
        """Release every lease at once: the file lock says no other process delivers from this
        file, so a leased row was left by one that died mid-send (its resend keeps its ids)."""
        async with self._write() as tx:
            released = await tx.execute(RELEASE_LEASES + " AND lease_owner IS NOT NULL")
            await tx.execute("DELETE FROM instances")
        await self.heartbeat(owner, now)
        return released

    # -- leadership: one process per file, so always the leader --
    async def try_acquire_leadership(self, owner: str) -> int | None:
        self.set_fence(1)
        return 1

    async def still_leader(self) -> bool:
        return self._conn is not None

    async def release_leadership(self) -> None:
        return None

    # -- an initial sync's bulk load --
    @asynccontextmanager
    async def bulk_load(self) -> AsyncIterator[bool]:
        """While the state holds no obligation, an initial sync writes without the secondary
        indexes of obligations and events (each one costs every row written, at random places
        in a growing file) and builds them once at the end, which is several times cheaper.
        Their definitions are kept in `meta` in the transaction that drops them, so a process
        stopped midway builds them when it next opens the file."""
        async with self._write() as tx:
            deferred: list[str] = []
            empty = not await tx.fetchval("SELECT EXISTS (SELECT 1 FROM obligations)")
            if empty:
                found = await tx.fetch(
                    "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL "
                    "AND tbl_name IN ('obligations', 'events') ORDER BY name"
                )
                deferred = [r["sql"] for r in found]
                for r in found:
                    await tx.execute(f'DROP INDEX "{r["name"]}"')
                if deferred:
                    await tx.execute(META_UPSERT, META_DEFERRED, rows.dumps(deferred))
        try:
            yield empty
        finally:
            if deferred:
                await self._build_deferred()
                await self._analyze()  # the tables went from empty to their whole size

    @asynccontextmanager
    async def _sorting_on_disk(self) -> AsyncIterator[None]:
        """An index built meanwhile sorts its rows in a temporary file rather than in memory: on
        a large state file, in memory would be a spike of its whole size."""
        async with self._read() as tx:
            await tx.execute("PRAGMA temp_store = FILE")
        try:
            yield
        finally:
            async with self._read() as tx:
                await tx.execute("PRAGMA temp_store = MEMORY")

    async def _build_deferred(self) -> None:
        """One index per transaction (a transaction holds the pages it writes in memory), its
        sort spilling to a temporary file rather than to memory."""
        async with self._read() as tx:
            if not await tx.fetchval("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'meta')"):
                return
            kept = await tx.fetchval("SELECT value FROM meta WHERE key = $1", META_DEFERRED)
        if kept is None:
            return
        async with self._sorting_on_disk():
            for statement in orjson.loads(kept):
                async with self._write() as tx:
                    await tx.execute(statement.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        async with self._write() as tx:
            await tx.execute("DELETE FROM meta WHERE key = $1", META_DEFERRED)

    async def _analyze(self) -> None:
        """The query planner's statistics gathered (`ANALYZE`, each index sampled:
        `analysis_limit`): at open, at the end of an initial sync and after each purge. Without
        them SQLite guesses, and guesses wrong on this schema: the console's meter search reads
        every open obligation (`python -m bench.bench_console`, README)."""
        async with self._write() as tx:
            await tx.execute("ANALYZE")

    # -- retention --
    async def purge(self, before: datetime) -> dict[str, int]:
        """Then the planner's statistics refreshed: a long-running service does not close its
        file, where `PRAGMA optimize` would, and one killed never did; without statistics the
        planner may search a table per row where reading it once serves (retention's own
        queries are written not to depend on them)."""
        removed = await super().purge(before)
        await self._analyze()
        await self.tidy()
        return removed

    async def tidy(self) -> None:
        """The free pages given back to the file system once they are more than a sixteenth of
        the file (`PRAGMA incremental_vacuum`): a large flush frees its group's member rows, a
        purge what it forgot, and the file would otherwise keep their size until later writes
        reuse them (at `notify` 20,000, ~170 B per open obligation: `bench.bench_cost`). A file
        an earlier version made has no incremental vacuum (it would take a whole `VACUUM`) and
        keeps its free pages.

        A transaction gives back at most `TIDY_CHUNK` pages: each one's pages pass through the
        WAL, which is checkpointed between them (`WAL_CHECKPOINT_BYTES`) rather than growing by
        all that was freed; other work takes the store between two."""
        async with self._read() as tx:
            if await tx.fetchval("PRAGMA auto_vacuum") != _INCREMENTAL:
                return
            free = int(await tx.fetchval("PRAGMA freelist_count"))
            if free <= max(TIDY_PAGES, int(await tx.fetchval("PRAGMA page_count")) // 16):
                return
        while free > 0:
            async with self._lock:
                conn = self._conn
                assert conn is not None
                try:  # a script: stepped to its end (one step of the pragma frees one page)
                    await conn.executescript(f"PRAGMA incremental_vacuum({TIDY_CHUNK})")
                    left = int(await self._connection().fetchval("PRAGMA freelist_count"))
                except sqlite3.Error as err:
                    raise StoreError(f"state file {self.path}: {err}") from err
            free = 0 if left >= free else left  # no progress: done

    # -- backend hooks --
    def _connection(self) -> _SqliteTx:
        if self._tx is None:
            raise StoreError(f"state file {self.path} is not open")
        return self._tx

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as err:
                raise StoreError(f"state file {self.path}: {err}") from err

    @asynccontextmanager
    async def _write(self, fenced: bool = False) -> AsyncIterator[Tx]:
        async with self._lock:
            self._still_there()
            tx = self._connection()
            try:
                await tx.execute("BEGIN IMMEDIATE")
                try:
                    yield tx
                    await tx.execute("COMMIT")
                except BaseException:
                    if self._conn is not None and self._conn.in_transaction:
                        await tx.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise StoreError(f"state file {self.path}: {err}") from err

    def _still_there(self) -> None:
        """Before a write: the file open is still the one at `path`. Removed or replaced (its
        directory deleted, a volume swapped), every write would go to a file nobody reads again
        (and another process could start on the path): writes fail instead, saying so."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise StoreError(f"state file {self.path} was removed or replaced while open: restart the service")

    async def _in_one_hop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(db, *args)` as one write transaction in a single trip to the connection's thread.

        A transaction written statement by statement through aiosqlite makes a round trip per
        statement, and each one waits for the event loop (busy decoding the next page during a
        sweep). `Connection._execute` is the queue its own `execute` uses (aiosqlite is pinned in
        constraints.txt); nothing else reaches the connection meanwhile: the store's lock is held.
        Cancelled while it runs, the transaction still commits or rolls back whole in the thread,
        before anything queued after it.
        """
        async with self._lock:
            self._still_there()
            self._connection()
            conn = self._conn
            assert conn is not None
            run: Callable[..., Awaitable[Any]] = conn._execute
            try:
                return await run(_transaction, conn, fn, args)
            except sqlite3.Error as err:
                raise StoreError(f"state file {self.path}: {err}") from err

    async def commit_routing(self, write: RoutingWrite) -> None:
        """In one trip to the connection's thread. Statement by statement through aiosqlite,
        each would wait for the event loop, which routing keeps busy meanwhile: it decodes and
        plans the next batch while this write commits (`cycle._route_pending`)."""
        await self._in_one_hop(_run_through, lambda tx: self._write_routing(tx, write))

    async def _write_page(
        self,
        obligations: list[Obligation],
        looks: list[datetime | None],
        events: list[Event],
        meta: list[tuple[str, str]],
    ) -> int:
        count: int = await self._in_one_hop(
            _commit_page,
            [obligation_row(o, at) for o, at in zip(obligations, looks, strict=True)],
            set(map(_DESCRIPTION_OF, obligations)),
            [rows.event_params(e, rows.instant, _to_pack) for e in events],  # `_payload`, in _commit_page
            meta,
        )
        return count

    def _ts(self, dt: datetime | None) -> Any:
        return rows.instant(dt)

    async def _append_members(self, tx: Tx, members: Sequence[tuple[str, str]], refs: Mapping[str, EventRef]) -> None:
        """Members numbered by this store: their table is clustered on (group key, seq), so a
        number is not given by SQLite (schema `_MEMBERS_BY_GROUP`); one process holds the file.
        A number a rolled-back transaction took is skipped: only the order counts."""
        if not members:
            return
        if self._member_seq is None:
            self._member_seq = int(await tx.fetchval("SELECT COALESCE(MAX(seq), 0) FROM group_members"))
        first, self._member_seq = self._member_seq + 1, self._member_seq + len(members)
        await tx.executemany(
            "INSERT INTO group_members (group_key, seq, event_id, kind, key_id) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (group_key, event_id) DO NOTHING",  # a number taken twice is an error, not a skip
            [(k, n, e, *ref_columns(refs.get(e))) for n, (k, e) in enumerate(members, first)],
        )

    async def _insert_links(self, tx: Tx, links: Sequence[tuple[str, str, int]]) -> None:
        """Each link as its numbers (schema `_NUMBERED_LINKS`), looked up by id as it is written;
        a notification's links in their order, each appended to its range of the table."""
        await tx.executemany(_INSERT_LINKS, sorted(links, key=_LINK_ORDER))

    @staticmethod
    def _payload(text: bytes, event: Event) -> Any:
        return packing.pack(text, rows.event_refs(event))

    def _in(self, n: int) -> str:
        return f"IN (SELECT value FROM json_each(${n}))"

    def _ids(self, values: Sequence[str]) -> Any:
        return rows.dumps(list(values))
