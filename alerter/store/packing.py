"""Event payloads as the SQLite store keeps them: zstd-compressed against a fixed dictionary.

An event's JSON copies its obligation and meter (about 1 KB); compressed against a dictionary
of the same JSON's shape, it takes about a third as much. The dictionary is part of the file
format: a packed payload starts with the number of the dictionary it was packed with, and a
dictionary, once released, never changes (a new one takes the next number, and the old ones
stay readable). A payload stored as JSON text (PostgreSQL's, or SQLite's before packing) is
read as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import zstandard

FORMAT_1 = 1
"""Packed with `DICTIONARY_1`."""

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

LEVEL = -1
"""zstd's level (the reader does not need it): payloads of ~1 KB pack into ~310 B in ~3 µs
and unpack in ~1 µs; level 1 packs them into ~270 B, but unpacks three times as slowly."""

_DICTIONARY = zstandard.ZstdCompressionDict(DICTIONARY_1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DICTIONARY.precompute_compress(level=LEVEL)
_PREFIX = bytes([FORMAT_1])


class _PerThread(threading.local):
    """A (de)compressor serves one thread at a time: the store's connection thread packs
    (zstd runs without the GIL, beside the main thread), the main thread unpacks."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            dict_data=_DICTIONARY, write_checksum=False, write_content_size=True, write_dict_id=False
        )
        self.decompressor = zstandard.ZstdDecompressor(dict_data=_DICTIONARY)


_LOCAL = _PerThread()
_BATCHES = "multi_compress_to_buffer" in zstandard.backend_features
"""Whether this build of zstandard packs a batch in one call (its bundled-libzstd C backend)."""


def pack(text: bytes) -> bytes:
    """A payload's JSON, packed (format 1)."""
    return _PREFIX + _LOCAL.compressor.compress(text)


def pack_all(texts: Sequence[bytes]) -> list[bytes]:
    """Payloads packed in one call, each as `pack` packs it. zstd runs without the GIL: one
    call for a page's events hands the GIL over once, where a call each would wait for it
    (up to the interpreter's switch interval) once per event whenever the main thread is busy."""
    if not _BATCHES or not texts:  # without: zstandard built against a system libzstd, or CFFI
        return [pack(t) for t in texts]
    batch: list[bytes | bytearray | memoryview] = list(texts)
    packed = _LOCAL.compressor.multi_compress_to_buffer(batch)
    return [_PREFIX + packed[i].tobytes() for i in range(len(packed))]


def unpack(value: str | bytes) -> str | bytes:
    """A stored payload's JSON: packed bytes unpacked, JSON text as it is. Raises ValueError
    for bytes that are neither."""
    if isinstance(value, str) or value[:1] == b"{":
        return value
    if value[:1] != _PREFIX:
        raise ValueError(f"stored payload in an unknown format ({value[:1]!r})")
    try:
        return _LOCAL.decompressor.decompress(value[1:])
    except zstandard.ZstdError as err:
        raise ValueError(f"stored payload cannot be unpacked: {err}") from None
