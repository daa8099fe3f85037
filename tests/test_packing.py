"""SQLite keeps event payloads packed (zstd against a fixed dictionary); what older versions
stored as JSON text still reads, and the dictionary, part of the file format, never changes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from alerter.store import packing, rows
from alerter.store.sqlite import SqliteStore
from tests.support.stores import opened
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
