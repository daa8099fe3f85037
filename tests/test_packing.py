"""SQLite keeps event payloads packed (zstd against a fixed dictionary) and obligations' meters as
arrays; what older versions stored as JSON text still reads and is still found by the console's
filters, and the dictionary, part of the file format, never changes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import orjson
import pytest
import zstandard
from msgspec.structs import replace

from alerter.console.core import parse_obligation_query
from alerter.models import Event, Meter
from alerter.store import packing, rows, schema
from alerter.store.console import ConsoleStore
from alerter.store.sqlite import SqliteStore
from tests.support.stores import T0, notification, obligation, opened, outbox, sqlite_state_at
from tests.test_rules import NOW, make_event


def test_the_formats_dictionaries_never_change() -> None:
    # packed payloads in every state file are read with them: a new dictionary is a new format
    assert hashlib.sha256(packing.DICTIONARY_1).hexdigest() == (
        "ac8cc2c40f973c8431825232fc6e50dc427489e4f48655790ffd5094237811f1"
    )
    assert hashlib.sha256(packing.DICTIONARY_2).hexdigest() == (
        "c0a6ac6ab177d9f9441fe57d6cf9baf694c021a19b849109acba9b34b6f8d46b"
    )


def _row(e: Event, payload: bytes | str) -> dict[str, object]:
    """An event's row as the store reads it (`rows.EVENT_READ`)."""
    return dict(zip(("id", "meter_id", "key_id", "occurred_at"), rows.event_refs(e), strict=True)) | {
        "payload": payload
    }


def _format_1(text: bytes) -> bytes:
    """A payload as a version before format 2 packed it."""
    dictionary = zstandard.ZstdCompressionDict(packing.DICTIONARY_1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    compressor = zstandard.ZstdCompressor(dict_data=dictionary, level=-1, write_checksum=False, write_dict_id=False)
    return bytes([packing.FORMAT_1]) + compressor.compress(text)


def test_a_payload_packs_into_a_fifth_without_its_rows_values_and_unpacks_to_the_same_json() -> None:
    e = make_event(meter_id="0f8e2d9c-3b4a-4c5d-8e6f-7a8b9c0d1e2f", partner_reference="site-0000001")
    text = rows.encode(e).encode()
    packed = packing.pack(text, rows.event_refs(e))
    assert packed[0] == packing.FORMAT_2
    assert len(packed) * 5 < len(text)
    assert all(v.encode() not in packed for v in rows.event_refs(e)[:3])  # the row holds them
    assert packing.unpack(packed, lambda: rows.event_refs(e)) == text
    assert rows.event_from_row(_row(e, packed)) == e
    assert rows.event_from_row(_row(e, _format_1(text))) == e  # as a version before packed it
    assert rows.event_from_row(_row(e, text.decode())) == e  # JSON text is read as it is
    whole = packing.pack_whole(text)  # PostgreSQL's: format 1, nothing cut out
    assert whole[0] == packing.FORMAT_1 and len(whole) * 3 < len(text)
    assert rows.event_from_row(_row(e, whole)) == e


@pytest.mark.parametrize(
    "meter_id",
    ['M "1"', "M\\1", "Mètre-1", "M-1\n", "site-0000001", "tag", "IS_AUTHORIZED", "2026-11-28T10:00:00Z"],
)
def test_values_cut_out_of_a_payload_come_back_wherever_they_stood(meter_id: str) -> None:
    # the meter's id also as a tag, a reference and a description; its event id in a detail;
    # values JSON escapes, and values equal to other fields' text, or to when the event occurred
    e = make_event(meter_id=meter_id, partner_reference=meter_id, tags=(meter_id, "tag"), occurred_at=NOW)
    e = replace(e, detail=e.id, obligation=replace(e.obligation, action_description=f'"{meter_id}"'))
    text = rows.encode(e).encode()
    assert rows.event_from_row(_row(e, packing.pack(text, rows.event_refs(e)))) == e
    assert packing.unpack(packing.pack(text, rows.event_refs(e)), lambda: rows.event_refs(e)) == text


@pytest.mark.parametrize("batches", [True, False])
def test_a_batch_packs_each_payload_as_it_would_pack_alone(monkeypatch: pytest.MonkeyPatch, batches: bool) -> None:
    # a page's events are packed in one call (or one by one, where zstandard cannot batch);
    # each stays readable on its own, in its place
    monkeypatch.setattr(packing, "_BATCHES", batches and packing._BATCHES)
    events = [make_event(meter_id=f"M-{i}") for i in range(5)]
    texts, refs = [rows.encode(e).encode() for e in events], [rows.event_refs(e) for e in events]
    cut = [packing.cut(t, r) for t, r in zip(texts, refs, strict=True)]
    assert packing.pack_all(cut) == [packing.pack(t, r) for t, r in zip(texts, refs, strict=True)]
    assert [rows.event_from_row(_row(e, p)) for e, p in zip(events, packing.pack_all(cut), strict=True)] == events
    assert packing.pack_all(cut[:1]) == [packing.pack(texts[0], refs[0])]
    assert packing.pack_all([]) == []
    whole = packing.pack_whole_all(texts)
    assert whole == [packing.pack_whole(t) for t in texts]
    assert [rows.event_from_row(_row(e, p)) for e, p in zip(events, whole, strict=True)] == events
    assert packing.pack_whole_all([]) == []


@pytest.mark.parametrize(  # the last two: format 2 with a mark's letter damaged, and cut short after its NUL
    "stored",
    [b"\x03abc", b"\x02not zstd", b"\x01not zstd", b"\x00", *packing.pack_all([b'{"id":"\x00z"}', b'{"id":"\x00'])],
)
def test_a_damaged_or_unknown_payload_is_a_value_error(stored: bytes) -> None:
    with pytest.raises(ValueError, match="stored payload"):
        rows.event_from_row(_row(make_event(), stored))


async def test_sqlite_stores_events_packed_and_reads_older_json_text_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with opened(SqliteStore(f"sqlite:///{path}")) as store:
        store.set_fence(1)
        new, old, older = (
            make_event(meter_id="M-1"),
            make_event(meter_id="M-2"),
            make_event(meter_id="M-3", initial=True),
        )
        await store.commit_page([new.obligation, old.obligation, older.obligation], [new, old, older])
        with sqlite3.connect(path) as raw:
            # M-2's event as a version before packing wrote it, M-3's as one before format 2
            raw.execute("UPDATE events SET payload = ? WHERE id = ?", (rows.encode(old), old.id))
            raw.execute(
                "UPDATE events SET payload = ? WHERE id = ?", (_format_1(rows.encode(older).encode()), older.id)
            )
            kinds = dict(raw.execute("SELECT id, typeof(payload) FROM events").fetchall())
            size = raw.execute("SELECT length(payload) FROM events WHERE id = ?", (new.id,)).fetchone()[0]
        assert kinds == {new.id: "blob", old.id: "text", older.id: "blob"}
        assert size * 5 < len(rows.encode(new))
        assert await store.load_events([new.id, old.id, older.id]) == [new, old, older]
        assert [h.event for h in await store.history("M-1")] == [new]
        assert [h.event for h in await store.history("M-2")] == [old]
        assert [h.event for h in await store.history("M-3")] == [older]
        assert await store.pending_events() == [new, old, older]
        assert (await store.initial_events()).events() == [older]
        await outbox(store, notification("n1", [older, new, old]))
        [claimed] = await store.claim_deliveries(NOW, "me", 10, 60.0)
        assert claimed.notification.events == (older, new, old)


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
    columns = {"partner_reference": meter.partner_reference, "transmission_region": meter.transmission_region}
    texts = {v for v in orjson.loads(stored) if isinstance(v, str)}
    assert stored.startswith(b"[") and not {"m-9", *columns.values()} & texts  # the row's
    assert len(stored) * 2 < len(rows.encode(meter))
    assert rows.meter_from_row("m-9", stored, columns) == meter
    assert rows.meter_from_row("m-9", rows.encode(meter)) == meter  # the JSON
    whole = orjson.dumps([meter.partner_reference, meter.transmission_region, *orjson.loads(stored)])
    assert rows.meter_from_row("m-9", whole) == meter  # as SQLite kept it before schema step 19 object older rows keep


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


def test_sqlites_meter_row_keeps_leaps_enumerated_values_as_their_numbers() -> None:
    meter = Meter(
        meter_id="m-1",
        customer_classification="COMMERCIAL",
        meter_type="DEVICE",
        load_types=("HVAC", "GEOTHERMAL", "OTHER"),  # a value Leap adds later stays its text
        global_enrollment_status="PENDING",
        tags=("HVAC",),  # not an enumerated attribute: its text
    )
    stored = rows.meter_row(meter)
    assert orjson.loads(stored) == [1, 2, [0, "GEOTHERMAL", 10], ["HVAC"], "", 4, False]
    columns = {"partner_reference": "", "transmission_region": ""}
    assert rows.meter_from_row("m-1", stored, columns) == meter
    with pytest.raises(ValueError, match="not one of Leap's 3 values"):  # a damaged row: named, skipped
        rows.meter_from_row("m-1", b'[1, 7, [], [], "", 4, false]', columns)


def test_sqlites_meter_row_is_not_read_without_its_rows_columns() -> None:
    stored = rows.meter_row(Meter(meter_id="m-1", partner_reference="REF-1", transmission_region="PJM"))
    with pytest.raises(ValueError, match="its row's columns"):  # not read back as "" and ""
        rows.meter_from_row("m-1", stored)
