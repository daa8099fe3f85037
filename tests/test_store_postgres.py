"""PostgreSQL specifics: leadership and fencing between replicas, shared claims, concurrent migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from msgspec.structs import replace

from alerter.errors import FencedError, StoreError
from alerter.models import RoutingWrite
from alerter.store import packing, rows, schema
from alerter.store.postgres import PostgresStore, redact
from alerter.store.schema import MIGRATIONS
from tests.support.stores import T0, event, notification, obligation, opened, outbox, postgres_schema


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two replicas on the same schema."""
    async with (
        postgres_schema() as (url, schema),
        opened(PostgresStore(url, schema=schema)) as a,
        opened(PostgresStore(url, schema=schema)) as b,
    ):
        assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore)
        yield a, b


async def acquire_within(store: PostgresStore, owner: str, seconds: float = 5) -> int:
    for _ in range(int(seconds * 20)):
        token = await store.try_acquire_leadership(owner)
        if token is not None:
            return token
        await asyncio.sleep(0.05)
    raise AssertionError(f"{owner} never became leader")


async def test_a_deposed_leader_cannot_write(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    o = obligation()
    assert await a.try_acquire_leadership("a") == 1
    assert await a.try_acquire_leadership("a") == 1  # already leader: same lease
    assert await b.try_acquire_leadership("b") is None
    assert await a.still_leader() and not await b.still_leader()
    assert await a.commit_page([o], [event(o)], {"watermark": "w1"}) == 1

    # A's lease dies with its connection (network cut, OOM kill of its backend...).
    admin = await asyncpg.connect(a._dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a._leader_conn.get_server_pid())
    finally:
        await admin.close()
    assert await acquire_within(b, "b") == 2
    assert not await a.still_leader()

    with pytest.raises(FencedError, match="fencing token is 1, the store's is 2"):
        await a.commit_page([replace(o, version=2)], [])
    with pytest.raises(FencedError):
        await a.set_meta({"watermark": "w2"})
    with pytest.raises(FencedError):
        await a.commit_routing(RoutingWrite(consumed=[event(o).id]))
    assert await a.try_acquire_leadership("a") is None
    assert await b.get_meta("watermark") == "w1"
    assert (await b.load_obligations(["m1"]))[o.key].version == 1
    assert len(await b.pending_events()) == 1

    # The ledger is not fenced: a deposed leader still delivers.
    await b.commit_routing(RoutingWrite(consumed=[event(o).id], notifications=[notification("n1", [event(o)])]))
    [claimed] = await a.claim_deliveries(T0, "a", 10, 30)
    await a.mark_sent(claimed.notification.id, "ops", T0, None)

    # A graceful handover: B releases, A takes over with a newer token.
    await b.release_leadership()
    assert not await b.still_leader()
    assert await acquire_within(a, "a") == 3
    await a.set_meta({"watermark": "w3"})
    with pytest.raises(FencedError):
        await b.set_meta({"watermark": "stale"})
    b.set_fence(None)  # unfenced (e.g. a maintenance command) writes go through
    await b.set_meta({"note": "x"})


async def test_replicas_share_the_ledger_without_double_claims(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    o = obligation()
    await outbox(a, *[notification(f"n{i:03}", [event(o)]) for i in range(120)])
    batches = await asyncio.gather(*[(a if i % 2 else b).claim_deliveries(T0, f"w{i}", 9, 60) for i in range(16)])
    claimed = [d.notification.id for batch in batches for d in batch]
    assert len(claimed) == len(set(claimed)) == 120
    assert await a.claim_deliveries(T0, "late", 10, 60) == []


async def test_replicas_starting_together_migrate_once() -> None:
    async with postgres_schema() as (url, schema):
        stores = [PostgresStore(url, schema=schema) for _ in range(3)]
        await asyncio.gather(*[s.open() for s in stores])
        try:
            conn = await asyncpg.connect(url, server_settings={"search_path": schema})
            try:
                versions = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
                assert [tuple(r) for r in versions] == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
                await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS) + 1)
            finally:
                await conn.close()
        finally:
            for s in stores:
                await s.close()
        with pytest.raises(StoreError, match=f"schema version {len(MIGRATIONS) + 1}"):
            await PostgresStore(url, schema=schema).open()


async def state_at(url: str, name: str, version: int) -> asyncpg.Connection:
    """A schema as a version-`version` alerter left it (its steps applied), open for the caller
    to put rows in; the caller closes it."""
    conn = await asyncpg.connect(url)
    await conn.execute(f'CREATE SCHEMA "{name}"')
    await conn.execute(f'SET search_path TO "{name}"')
    await conn.execute(schema.CREATE_VERSION_TABLE)
    for step in range(1, version + 1):
        for statement in schema.statements(step, "postgres"):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version VALUES ($1)", step)
    return conn


async def test_migrating_moves_pending_group_ids_to_member_rows() -> None:
    async with postgres_schema() as (url, name):
        conn = await state_at(url, name, 1)
        try:
            group = "INSERT INTO groups VALUES ($1, 'r1', 'ops', '{}', $2, NULL, $3)"
            await conn.execute(group, "g1", T0, '["e3", "e1", "e2"]')
            await conn.execute(group, "g2", T0, "[]")
        finally:
            await conn.close()
        async with opened(PostgresStore(url, schema=name)) as store:
            assert [(g.key, g.pending, g.waiting) for g in await store.load_groups()] == [
                ("g1", ("e3", "e1", "e2"), True),
                ("g2", (), False),
            ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alerter:hunter2@db:5432/alerter", "postgresql://alerter:***@db:5432/alerter"),
        ("postgresql://alerter@db/alerter?password=hunter2", "postgresql://alerter@db/alerter?password=***"),
        ("postgres://db/a?sslmode=require&sslpassword=hunter2", "postgres://db/a?sslmode=require&sslpassword=***"),
        ("postgresql://alerter:hun/ter?2#x@db/alerter", "postgresql://alerter:***@db/alerter"),
        (
            "postgresql://alerter:hunter2@db/alerter?password=hunter2",
            "postgresql://alerter:***@db/alerter?password=***",
        ),
        ("alerter:hunter2@db/alerter", "(a URL without a scheme)"),
        ("postgresql://db/alerter", "postgresql://db/alerter"),
    ],
)
def test_a_state_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown


async def test_a_url_asyncpg_cannot_read_is_named_without_its_password() -> None:
    store = PostgresStore("postgresql://alerter:hun#ter2@127.0.0.1:1/alerter")
    with pytest.raises(StoreError) as err:
        await store.open()
    assert "ter2" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


async def test_connection_errors_do_not_leak_the_password() -> None:
    store = PostgresStore("postgresql://alerter:hunter2@127.0.0.1:1/alerter")
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at postgresql://alerter:\*\*\*@") as err:
        await store.open()
    assert "hunter2" not in str(err.value)
    with pytest.raises(StoreError, match="is not open"):
        await store.undelivered_count()


async def test_events_are_stored_packed_and_those_older_versions_wrote_as_json_still_read() -> None:
    old = event(obligation("m1"), initial=True)
    new, kept = event(obligation("m2")), event(obligation("m3"), "resolved")
    async with postgres_schema() as (url, name):
        conn = await state_at(url, name, 14)
        try:  # m1's event as the version before packing wrote it: its JSON, as text
            marks = ", ".join(f"${i}" for i in range(1, 8))
            await conn.execute(
                f"INSERT INTO events ({rows.EVENT_COLUMNS}) VALUES ({marks})",
                *rows.event_params(old, rows.aware, lambda text, _: text.decode()),
            )
        finally:
            await conn.close()
        async with opened(PostgresStore(url, schema=name)) as store:
            assert isinstance(store, PostgresStore)
            await acquire_within(store, "me")
            await store.commit_page([new.obligation], [new])
            await outbox(store, notification("n1", [new, old, kept]))  # kept: a notification's own event
            conn = await asyncpg.connect(url, server_settings={"search_path": name})
            try:
                stored = {
                    r["id"]: (r["head"], r["size"])
                    for r in await conn.fetch(
                        "SELECT id, get_byte(payload, 0) AS head, octet_length(payload) AS size FROM events"
                    )
                }
            finally:
                await conn.close()
            assert stored[old.id] == (ord("{"), len(rows.encode(old).encode()))
            for e in (new, kept):
                head, size = stored[e.id]
                assert head == packing.FORMAT_1 and size * 3 < len(rows.encode(e).encode())
            assert await store.load_events([new.id, old.id, kept.id]) == [new, old, kept]
            assert [h.event for h in await store.history("m1")] == [old]
            assert [h.event for h in await store.history("m2")] == [new]
            assert await store.pending_events() == [old, new]
            assert (await store.initial_events()).events() == [old]
            [claimed] = await store.claim_deliveries(T0, "me", 10, 60.0)
            assert claimed.notification.events == (new, old, kept)


async def test_a_state_command_does_not_upgrade_a_schema_an_older_service_writes() -> None:
    async with postgres_schema() as (url, name), postgres_schema() as (_, new):
        conn = await state_at(url, name, len(MIGRATIONS) - 1)  # as the version before left it
        await conn.close()
        with pytest.raises(StoreError, match=f"schema version {len(MIGRATIONS) - 1} .* start `alerter run`"):
            await PostgresStore(url, schema=name, shared=True).open()
        conn = await asyncpg.connect(url, server_settings={"search_path": name})
        try:
            assert await conn.fetchval(schema.CURRENT_VERSION) == len(MIGRATIONS) - 1  # untouched
        finally:
            await conn.close()
        async with opened(PostgresStore(url, schema=name)):  # the service of this version upgrades it
            pass
        async with opened(PostgresStore(url, schema=name, shared=True)):  # then state commands open it
            pass
        async with opened(PostgresStore(url, schema=new, shared=True)) as fresh:  # a new state is made
            assert await fresh.open_meter_ids() == []


async def test_a_takeover_behind_a_stuck_leaders_write_gives_up_and_tries_again(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """A leader stopped inside a fenced write (a VM pause) keeps the leader row locked: its
    successor's takeover waits 5 s at most, and the stuck transaction is ended by the server
    after 30 s idle, not when it notices the dead connection (hours)."""
    a, b = pair
    assert await a.try_acquire_leadership("a") == 1
    async with a._write(fenced=True) as tx:  # A stops here, inside its write
        assert await tx.fetchval("SHOW idle_in_transaction_session_timeout") == "30s"
        admin = await asyncpg.connect(a._dsn)
        try:  # its lock session ends (as the server's keepalive ends a dead peer's)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", a._leader_conn.get_server_pid())
        finally:
            await admin.close()
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreError, match="lock timeout"):
            await asyncio.wait_for(b.try_acquire_leadership("b"), 20)
        assert asyncio.get_running_loop().time() - started < 10
    assert await acquire_within(b, "b") == 2  # once the write is over, the takeover goes through
