"""Event payloads as the stores keep them: zstd-compressed against a fixed dictionary.

An event's JSON copies its obligation and meter (about 1 KB); compressed against a dictionary
of the same JSON's shape, it takes about a fourth as much (format 1, PostgreSQL's), and a fifth
once the values its row holds beside it (ids, when it occurred) are cut out (format 2, SQLite's).
The dictionary is part of the stored format: a packed payload starts with the number of the
format it was packed in, and a format's dictionary, once released, never changes (a new one
takes the next number, and the old ones stay readable). A payload stored as JSON text
(PostgreSQL's before schema step 15, SQLite's before packing) is read as it is.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache

import msgspec
import zstandard

FORMAT_1 = 1
"""Packed whole with `DICTIONARY_1`: PostgreSQL's payloads (`pack_whole`), and SQLite's before format 2."""

DICTIONARY_1 = (
    # Leap's enumerations (action types, regions, classifications, meter and load types,
    # enrollment statuses) beyond those in the events below
    b"DOCUMENTS_SIGNED HAS_AMI NOT_ENROLLED_IN_CONFLICTING_PROGRAM PARTICIPATING HAS_MARKET_REGISTRATION "
    b"NO_MISSING_FIELDS GENERATOR ADDRESS HAS_NOMINATIONS HAS_BIDDING_STRATEGY IS_ELIGIBLE IS_ASSIGNED_TO_A_RESOURCE "
    b"MEETS_EXTRA_PROGRAM_REQUIREMENTS ERCOT NYISO ISONE PJM SERC WECC_SW WECC_PC COMMERCIAL SUBMETER DEVICE "
    b"BATTERY_STORAGE COLD_STORAGE PUMPING WATER_HEATING BUILDING_AUTOMATION GENERATION MANUFACTURING LIGHTING "
    b"OTHER ACTIVE INELIGIBLE NOT_PARTICIPATING PENDING"
    # an event of each shape, as the store encodes it
    + b"".join(
        b'{"id":"00000000000000000000000000000000","kind":"%s","occurred_at":"2026-01-01T00:00:00.000001Z",'
        b'"obligation":{"meter_id":"00000000-0000-0000-0000-000000000000","program_identifier":"CEC-DSGS",'
        b'"delivery_period":"CEC-DSGS_2026_DEC","action_type":"IS_AUTHORIZED","action_code":"AUTH_0001",'
        b'"action_description":"End customer must re-authorize the meter.",'
        b'"deadline":"2026-01-01T00:00:00.000001Z","meter":{"meter_id":"00000000-0000-0000-0000-000000000000",'
        b'"partner_reference":"site-0000001","transmission_region":"CAISO","customer_classification":"RESIDENTIAL",'
        b'"meter_type":"UTILITY_METER","load_types":["HVAC","EV_CHARGING"],"tags":["tag"],"customer_group":"group",'
        b'"global_enrollment_status":"ELIGIBLE","is_archived":false},"status":"%s","resolution":%s,'
        b'"opened_at":"2026-01-01T00:00:00.000001Z","first_seen":"2026-01-01T00:00:00.000001Z",'
        b'"last_seen":"2026-01-01T00:00:00.000001Z","resolved_at":%s,"version":%s,'
        b'"key_id":"7e9b15be38a45105130b9caa"},"previous":%s,"detail":"%s","initial":%s}' % shape
        for shape in (
            (
                b"resolved",
                b"resolved",
                b'"cleared"',
                b'"2026-01-01T00:00:00.000001Z"',
                b"3",
                b"null",
                b"cleared",
                b"false",
            ),
            (
                b"changed",
                b"open",
                b"null",
                b"null",
                b"2",
                b'{"action_description":"x","deadline":"2026-01-01T00:00:00Z"}',
                b"",
                b"false",
            ),
            (b"opened", b"open", b"null", b"null", b"1", b"null", b"", b"true"),
        )
    )
)
"""Format 1's dictionary. Never change it: packed payloads are read with it."""

FORMAT_2 = 2
"""Packed with `DICTIONARY_2`, the values the event's row holds beside its payload (`Refs`)
cut out of its JSON: ids in hex and UUIDs are the JSON's least compressible bytes. Putting
them back costs each read a pass over the JSON (`_restore`)."""

Refs = tuple[str, str, str, datetime]
"""What an event's row holds beside its payload: its id, its meter's id, its obligation's key
id, and when it occurred."""

_MARKS = (b'"\x00e"', b'"\x00m"', b'"\x00k"', b'"\x00t"')
"""Where a value of `Refs` stood in the JSON. A raw NUL byte never occurs in JSON (encoders
escape it), so a mark stands only where a value was cut."""


def _marked(dictionary: bytes) -> bytes:
    ids = (
        b'"00000000000000000000000000000000"',
        b'"00000000-0000-0000-0000-000000000000"',
        b'"7e9b15be38a45105130b9caa"',
    )
    for value, mark in zip(ids, _MARKS[:3], strict=True):
        dictionary = dictionary.replace(value, mark)
    for key in (b"occurred_at", b"opened_at", b"first_seen", b"last_seen"):  # a deadline is its own
        dictionary = dictionary.replace(b'"%s":"2026-01-01T00:00:00.000001Z"' % key, b'"%s":%s' % (key, _MARKS[3]))
    return dictionary


DICTIONARY_2 = _marked(DICTIONARY_1)
"""Format 2's dictionary: format 1's, with the marks where its events hold those values. Never change it."""


LEVEL = -1
"""zstd's level (the reader does not need it): payloads of ~1 KB packed in format 1 into ~310 B
in ~3 µs, unpacked in ~1 µs; level 1 packed them into ~270 B, but unpacked three times as slowly."""

_DICTIONARY = zstandard.ZstdCompressionDict(DICTIONARY_2, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DICTIONARY.precompute_compress(level=LEVEL)
_DICTIONARY_1 = zstandard.ZstdCompressionDict(DICTIONARY_1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DICTIONARY_1.precompute_compress(level=LEVEL)
_PREFIX_1 = bytes([FORMAT_1])
_PREFIX_2 = bytes([FORMAT_2])


class _PerThread(threading.local):
    """A (de)compressor serves one thread at a time: the store's connection thread packs
    (zstd runs without the GIL, beside the main thread), the main thread unpacks."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            dict_data=_DICTIONARY, write_checksum=False, write_content_size=True, write_dict_id=False
        )
        self.decompressor = zstandard.ZstdDecompressor(dict_data=_DICTIONARY)
        self.decompressor_1 = zstandard.ZstdDecompressor(dict_data=_DICTIONARY_1)
        self.compressor_1 = zstandard.ZstdCompressor(
            dict_data=_DICTIONARY_1, level=LEVEL, write_checksum=False, write_content_size=True, write_dict_id=False
        )


_LOCAL = _PerThread()
_BATCHES = "multi_compress_to_buffer" in zstandard.backend_features
"""Whether this build of zstandard packs a batch in one call (its bundled-libzstd C backend)."""


def pack(text: bytes, refs: Refs) -> bytes:
    """A payload's JSON, packed (format 2) with the values of its row (`refs`) cut out."""
    return _PREFIX_2 + _LOCAL.compressor.compress(cut(text, refs))


def pack_all(texts: Sequence[bytes]) -> list[bytes]:
    """Payloads already `cut`, packed in one call, each as `pack` packs it. zstd runs without
    the GIL: one call for a page's events hands the GIL over once, where a call each would wait
    for it (up to the interpreter's switch interval) once per event whenever the main thread is
    busy; so the cutting, Python's work, is done before, where the JSON is encoded."""
    if not _BATCHES or not texts:  # without: zstandard built against a system libzstd, or CFFI
        return [_PREFIX_2 + _LOCAL.compressor.compress(t) for t in texts]
    batch: list[bytes | bytearray | memoryview] = list(texts)
    packed = _LOCAL.compressor.multi_compress_to_buffer(batch)
    return [_PREFIX_2 + packed[i].tobytes() for i in range(len(packed))]


def pack_whole(text: bytes) -> bytes:
    """A payload's JSON packed whole, in format 1 (PostgreSQL's): a third as long as format 2
    keeps it again, but no value is cut out as it is written nor put back at each read, Python's
    work on the main thread, where PostgreSQL's writes spend little of their time."""
    return _PREFIX_1 + _LOCAL.compressor_1.compress(text)


def pack_whole_all(texts: Sequence[bytes]) -> list[bytes]:
    """Payloads packed as `pack_whole` packs them, in one call."""
    if not _BATCHES or not texts:
        return [pack_whole(t) for t in texts]
    batch: list[bytes | bytearray | memoryview] = list(texts)
    packed = _LOCAL.compressor_1.multi_compress_to_buffer(batch)
    return [_PREFIX_1 + packed[i].tobytes() for i in range(len(packed))]


def unpack(value: str | bytes, refs: Callable[[], Refs]) -> str | bytes:
    """A stored payload's JSON: packed bytes unpacked (format 2 with the values `refs` gives),
    JSON text as it is. Raises ValueError for bytes that are neither."""
    if isinstance(value, str) or value[:1] == b"{":
        return value
    try:
        if value[:1] == _PREFIX_2:
            return _restore(_LOCAL.decompressor.decompress(value[1:]), refs())
        if value[:1] == _PREFIX_1:
            return _LOCAL.decompressor_1.decompress(value[1:])
    except zstandard.ZstdError as err:
        raise ValueError(f"stored payload cannot be unpacked: {err}") from None
    except (KeyError, IndexError):  # a NUL byte not followed by a mark's letter
        raise ValueError("stored payload cannot be unpacked: a damaged mark") from None
    raise ValueError(f"stored payload in an unknown format ({value[:1]!r})")


_PLAIN = re.compile(rb"[ !#-\[\]-~]+")
"""Printable ASCII but a quote or a backslash: a value JSON holds as it is, between quotes."""
_INSTANT = msgspec.json.Encoder()


@lru_cache(maxsize=1024)
def _instant_text(at: datetime) -> bytes:
    """When an event occurred as its JSON holds it (the rows of a cycle share a few)."""
    return _INSTANT.encode(at.astimezone(UTC))[1:-1]


def _values(refs: Refs) -> tuple[bytes, bytes, bytes, bytes]:
    event_id, meter_id, key_id, at = refs
    return event_id.encode(), meter_id.encode(), key_id.encode(), _instant_text(at)


def cut(text: bytes, refs: Refs) -> bytes:
    """An event's JSON with the values its row holds (`refs`) replaced by marks (format 2)."""
    for value, mark in zip(_values(refs), _MARKS, strict=True):
        if _PLAIN.fullmatch(value):
            text = text.replace(b'"%s"' % value, mark)
    return text


def _restore(text: bytes, refs: Refs) -> bytes:
    """`text` with each mark back to its value: one pass, where a `replace` each would copy
    the whole text four times."""
    parts = text.split(b"\x00")
    if len(parts) == 1:
        return text
    event_id, meter_id, key_id, at = refs
    values = {_E: event_id.encode(), _M: meter_id.encode(), _K: key_id.encode(), _T: _instant_text(at)}
    out = [parts[0]]
    for part in parts[1:]:
        out += (values[part[0]], part[1:])
    return b"".join(out)


_E, _M, _K, _T = (mark[2] for mark in _MARKS)
"""Each mark's letter, after its NUL byte."""
