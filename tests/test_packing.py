"""SQLite keeps event payloads packed (zstd against a fixed dictionary) and obligations' meters as
arrays; what older versions stored as JSON text still reads and is still found by the console's
filters, and the dictionary, part of the file format, never changes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from msgspec.structs import replace

from alerter.console.core import parse_obligation_query
from alerter.models import Meter
from alerter.store import packing, rows, schema
from alerter.store.console import ConsoleStore
from alerter.store.sqlite import SqliteStore
from tests.support.stores import T0, obligation, opened, sqlite_state_at
from tests.test_rules import make_event


def test_format_1s_dictionary_never_changes() -> None:
    # packed payloads in every state file are read with it: a new dictionary is a new format
    assert hashlib.sha256(packing.DICTIONARY_1).hexdigest() == (
        "ac8cc2c40f973c8431825232fc6e50dc427489e4f48655790ffd5094237811f1"
    )


def test_a_payload_packs_into_a_third_and_unpacks_to_the_same_json() -> None:
    text = rows.encode(make_event(meter_id="M-1")).encode()
    packed = packing.pack(text)
    assert packed[0] == packing.FORMAT_1
    assert len(packed) * 2 < len(text)
    assert packing.unpack(packed) == text
    assert packing.unpack(text.decode()) == text.decode()  # JSON text is read as it is


@pytest.mark.parametrize("batches", [True, False])
def test_a_batch_packs_each_payload_as_it_would_pack_alone(monkeypatch: pytest.MonkeyPatch, batches: bool) -> None:
    # a page's events are packed in one call (or one by one, where zstandard cannot batch);
    # each stays readable on its own, in its place
    monkeypatch.setattr(packing, "_BATCHES", batches and packing._BATCHES)
    texts = [rows.encode(make_event(meter_id=f"M-{i}")).encode() for i in range(5)]
    assert packing.pack_all(texts) == [packing.pack(t) for t in texts]
    assert [packing.unpack(p) for p in packing.pack_all(texts)] == texts
    assert packing.pack_all(texts[:1]) == [packing.pack(texts[0])]
    assert packing.pack_all([]) == []


@pytest.mark.parametrize("stored", [b"\x02abc", b"\x01not zstd", b"\x00"])
def test_a_damaged_or_unknown_payload_is_a_value_error(stored: bytes) -> None:
    with pytest.raises(ValueError, match="stored payload"):
        rows.event_from_payload(stored)


async def test_sqlite_stores_events_packed_and_reads_older_json_text_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        new, old = make_event(meter_id="M-1"), make_event(meter_id="M-2")
        await store.commit_page([new.obligation, old.obligation], [new, old])
        with sqlite3.connect(path) as raw:
            # M-2's event as a version before packing wrote it
            raw.execute("UPDATE events SET payload = ? WHERE id = ?", (rows.encode(old), old.id))
            kinds = dict(raw.execute("SELECT id, typeof(payload) FROM events").fetchall())
            size = raw.execute("SELECT length(payload) FROM events WHERE id = ?", (new.id,)).fetchone()[0]
        assert kinds == {new.id: "blob", old.id: "text"}
        assert size * 2 < len(rows.encode(new))
        assert await store.load_events([new.id, old.id]) == [new, old]
        assert [h.event for h in await store.history("M-1")] == [new]
        assert [h.event for h in await store.history("M-2")] == [old]
        assert await store.pending_events() == [new, old]


def _meter(i: int, region: str, tags: tuple[str, ...]) -> Meter:
    return Meter(meter_id=f"m{i}", partner_reference=f"REF-{i}", transmission_region=region, tags=tags)


def test_sqlites_meter_row_keeps_every_attribute_of_a_meter() -> None:
    # every field set apart from its default: an attribute added to Meter and not to the row fails
    defaults = Meter.__struct_defaults__
    values: dict[str, object] = {"meter_id": "m-9"}
    for i, (name, default) in enumerate(zip(Meter.__struct_fields__[-len(defaults) :], defaults, strict=True)):
        values[name] = {str: f"v{i}", tuple: (f"v{i}", "b"), bool: not default}[type(default)]
    assert len(values) == len(Meter.__struct_fields__)
    meter = Meter(**values)  # type: ignore[arg-type]
    stored = rows.meter_row(meter)
    assert stored.startswith(b"[") and b"m-9" not in stored  # the id is the row's
    assert len(stored) * 2 < len(rows.encode(meter))
    assert rows.meter_from_row("m-9", stored) == meter
    assert rows.meter_from_row("m-9", rows.encode(meter)) == meter  # the JSON object older rows keep


async def test_sqlite_keeps_meters_as_arrays_and_finds_rows_older_versions_wrote(tmp_path: Path) -> None:
    path = tmp_path / "v9.db"
    old = [
        replace(obligation("m1"), meter=_meter(1, "NYISO", ("vip",))),
        replace(obligation("m2"), meter=_meter(2, "CAISO", ())),
    ]
    with sqlite_state_at(path, 9) as db:  # a state file as version 9 wrote it: meters as JSON text
        marks = ", ".join("?" * len(rows.WRITE_COLUMNS.split(", ")))
        for o in old:
            db.execute(
                f"INSERT INTO obligations ({rows.WRITE_COLUMNS}) VALUES ({marks})",
                rows.obligation_params(o, rows.iso, T0),
            )
    db.close()
    new = replace(obligation("m3"), meter=_meter(3, "NYISO", ("vip", "solar")))
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        await store.commit_page([new], [])
        with sqlite3.connect(path) as raw:
            stored = raw.execute(
                "SELECT meter_id, typeof(meter), length(meter), partner_reference, transmission_region "
                "FROM obligations ORDER BY meter_id"
            ).fetchall()
            region = schema.expression("sqlite", "region")
            # INDEXED BY fails ("no query solution") unless the index serves the expression: a table
            # of three rows is read whole by choice, now that the store gathers its statistics
            plan = raw.execute(
                "EXPLAIN QUERY PLAN SELECT meter_id FROM obligations INDEXED BY obligations_by_region "
                f"WHERE status = 'open' AND {region} = 'X'"
            )
            ref = schema.expression("sqlite", "ref")
            by_ref = raw.execute(
                "EXPLAIN QUERY PLAN SELECT meter_id FROM obligations INDEXED BY obligations_by_reference "
                f"WHERE {ref} = 'X'"
            )
            plans = str(plan.fetchall()) + str(by_ref.fetchall())
        raw.close()
        assert [s[:2] for s in stored] == [("m1", "text"), ("m2", "text"), ("m3", "blob")]
        assert stored[2][2] * 2 < len(rows.encode(new.meter))  # under half its JSON object
        assert [s[3:] for s in stored] == [(None, None), (None, None), ("REF-3", "NYISO")]
        assert "obligations_by_region" in plans and "obligations_by_reference" in plans  # the indexes serve them
        assert list((await store.load_obligations(["m1", "m2", "m3"])).values()) == [*old, new]
        assert await store.meters_by_reference("REF-1") == ["m1"]
        assert await store.meters_by_reference("REF-3") == ["m3"]
        cs = ConsoleStore(store)

        async def ids(**params: str) -> list[str]:
            return [o.meter_id for o in (await cs.obligations(parse_obligation_query(params), T0)).obligations]

        assert await ids(transmission_region="NYISO") == ["m1", "m3"]
        assert await ids(tag="vip") == ["m1", "m3"]
        assert await ids(q="REF-2") == ["m2"]
        assert await ids(q="REF-3") == ["m3"]
        assert (await cs.filter_values())["transmission_region"] == ["CAISO", "NYISO"]
        assert (await cs.open_summary(T0))["transmission_region"] == {"NYISO": 2, "CAISO": 1}
        assert (await cs.meter("REF-1")) is not None
