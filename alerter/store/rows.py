"""Conversions between domain models and the columns both SQL backends store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

import msgspec
import orjson

from alerter.models import Event, GroupState, Meter, Notification, Obligation, Silence
from alerter.store.base import Delivery
from alerter.store.packing import Refs, unpack
from alerter.store.schema import Dialect

TsParam = Callable[[datetime | None], Any]
"""How a backend binds a datetime: 8 bytes on SQLite (`instant`), the aware datetime on PostgreSQL."""


class Row(Protocol):
    """A result row addressable by column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: str, /) -> Any: ...


KEY_COLUMNS = "meter_id, program_identifier, delivery_period, action_type, action_code"
OBLIGATION_COLUMNS = (
    f"{KEY_COLUMNS}, key_id, status, action_description, deadline, meter, "
    "opened_at, first_seen, last_seen, resolved_at, resolution, version"
)
READ_COLUMNS: dict[Dialect, str] = {
    "postgres": OBLIGATION_COLUMNS,
    "sqlite": OBLIGATION_COLUMNS.replace(
        "action_description",
        "CASE WHEN typeof(action_description) = 'integer' THEN (SELECT text FROM descriptions "
        "WHERE id = action_description) ELSE action_description END AS action_description",
    )
    + ", partner_reference, transmission_region",
}
"""What `obligation_from_row` reads: on SQLite a description kept once, in `descriptions`, is
read back by its number, and the two meter attributes its columns hold (schema `_KEYED_BY_ID`)."""
WRITE_COLUMNS = f"{OBLIGATION_COLUMNS}, remind_at"
"""What `commit_page` writes: `remind_at` is when the reminders step next looks at an open
obligation: the write time (looked at on the next step) unless the writer says when (`FirstLook`)."""
EVENT_COLUMNS = "id, key_id, meter_id, kind, occurred_at, initial, payload"
DELIVERY_COLUMNS = (
    "d.notification_id, d.receiver, d.status, d.attempts, d.next_attempt_at, d.last_error, "
    "d.sent_at, d.external_id, d.steps, d.retry_from, n.payload"
)


def utc(dt: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is a programming error."""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()} given to the state store")
    return dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    """Fixed-width ISO text, as SQLite kept instants before the schema's `_PACKED_TIMES` (and
    as its migration reads them).

    Remembered by value for the last few thousand instants: the rows of one write share a few
    (the cycle's `now` is an obligation's opened_at, first_seen and last_seen; deadlines repeat)."""
    return None if dt is None else _iso_text(dt)


@lru_cache(maxsize=4096)
def _iso_text(dt: datetime) -> str:
    # equal instants (whatever their zone) have the same text; a naive one raises (not kept)
    return (dt if dt.utcoffset() == _ZERO else utc(dt)).isoformat(timespec="microseconds")


_ZERO = timedelta(0)


def instant(dt: datetime | None) -> bytes | None:
    """An instant as SQLite keeps it: its microseconds since the epoch, offset by 2**63, as 8
    big-endian bytes, so that SQLite compares instants as it compares blobs, byte by byte (9
    bytes stored where ISO text took 33, in each row and each index that holds the instant).

    Remembered by value for the last few thousand instants, as `iso` does."""
    return None if dt is None else _instant(dt)


@lru_cache(maxsize=4096)
def _instant(dt: datetime) -> bytes:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()} given to the state store")
    d = dt - _EPOCH
    return ((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds + _OFFSET).to_bytes(8, "big")


def instant_of(value: str | bytes | None) -> bytes | None:
    """A stored instant in `instant`'s form, whichever form it was kept in (ISO text before)."""
    return None if value is None or isinstance(value, bytes) else _instant(datetime.fromisoformat(value))


@lru_cache(maxsize=4096)
def _from_instant(value: bytes) -> datetime:
    """`instant`'s inverse, remembered as it is (a cycle's rows share a few instants)."""
    return _EPOCH + timedelta(microseconds=int.from_bytes(value, "big") - _OFFSET)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSET = 1 << 63


def aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else utc(dt)


def read_ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return _from_instant(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


_encode = msgspec.json.Encoder().encode
_METER = msgspec.json.Decoder(Meter)
_EVENT = msgspec.json.Decoder(Event)
_NOTIFICATION = msgspec.json.Decoder(Notification)


_METER_ROW = msgspec.json.Decoder(
    tuple[int | str, int | str, tuple[int | str, ...], tuple[str, ...], str, int | str, bool]
)  # fmt: skip
CLASSIFICATIONS: tuple[str, ...] = ("RESIDENTIAL", "COMMERCIAL")
METER_TYPES: tuple[str, ...] = ("UTILITY_METER", "SUBMETER", "DEVICE")
LOAD_TYPES: tuple[str, ...] = (
    "HVAC", "EV_CHARGING", "BATTERY_STORAGE", "COLD_STORAGE", "PUMPING", "WATER_HEATING",
    "BUILDING_AUTOMATION", "GENERATION", "MANUFACTURING", "LIGHTING", "OTHER",
)  # fmt: skip
STATUSES: tuple[str, ...] = ("ACTIVE", "ELIGIBLE", "INELIGIBLE", "NOT_PARTICIPATING", "PENDING")
"""Leap's enumerations of a meter's attributes, in its definitions' order: in SQLite's meter
array (`meter_row`) a value among them is its place, a number (one byte where its name took up
to 19); any other value stays its text. Part of the stored format: append, never reorder."""
_NUMBERS = {
    names: {name: i for i, name in enumerate(names)} for names in (CLASSIFICATIONS, METER_TYPES, LOAD_TYPES, STATUSES)
}


def _number(names: tuple[str, ...], value: str) -> int | str:
    return _NUMBERS[names].get(value, value)


def _name(names: tuple[str, ...], value: int | str) -> str:
    if isinstance(value, str):
        return value
    if not 0 <= value < len(names):
        raise ValueError(f"stored meter: {value} is not one of Leap's {len(names)} values there")
    return names[value]


_METER_ROW_WHOLE = msgspec.json.Decoder(
    tuple[str, str, str, str, tuple[str, ...], tuple[str, ...], str, str, bool]
)  # fmt: skip


def meter_row(m: Meter) -> bytes:
    """SQLite's form of an obligation's meter: a JSON array of its attributes but those the row
    holds in columns (its id, `partner_reference`, `transmission_region`), in `Meter`'s order,
    each of Leap's enumerated values as its number (`LOAD_TYPES`...): a sixth of its JSON
    object, and quicker to write and read. A new attribute of `Meter` needs a
    new form here (`meter_from_row` tells forms apart by their first character and length)."""
    return _encode(
        (
            _number(CLASSIFICATIONS, m.customer_classification),
            _number(METER_TYPES, m.meter_type),
            tuple(_number(LOAD_TYPES, t) for t in m.load_types),
            m.tags,
            m.customer_group,
            _number(STATUSES, m.global_enrollment_status),
            m.is_archived,
        )
    )


def meter_from_row(meter_id: str, stored: str | bytes, r: Row | None = None) -> Meter:
    """An obligation's stored meter: SQLite's array (`meter_row`, with the attributes of its row
    `r`), the longer array SQLite kept before schema step 19, or the JSON object PostgreSQL and
    earlier versions keep (a malformed one raises `msgspec.ValidationError`)."""
    if stored[:1] not in ("[", b"["):
        return _METER.decode(stored)
    try:
        classification, meter_type, loads, tags, group, status, archived = _METER_ROW.decode(stored)
    except msgspec.ValidationError:
        whole = _METER_ROW_WHOLE.decode(stored)
        reference, region, classification, meter_type, loads, tags, group, status, archived = whole
    else:
        if r is None:  # a caller that has not read the row's columns would get them wrong
            raise ValueError("stored meter: its partner_reference and transmission_region are its row's columns")
        reference, region = r["partner_reference"], r["transmission_region"]
    return Meter(
        meter_id=meter_id,
        partner_reference=reference,
        transmission_region=region,
        customer_classification=_name(CLASSIFICATIONS, classification),
        meter_type=_name(METER_TYPES, meter_type),
        load_types=tuple(_name(LOAD_TYPES, t) for t in loads),
        tags=tags,
        customer_group=group,
        global_enrollment_status=_name(STATUSES, status),
        is_archived=archived,
    )


def encode(value: msgspec.Struct) -> str:
    """A Struct as the JSON the store keeps (the same text the pydantic models wrote before)."""
    return _encode(value).decode()


def obligation_params(
    o: Obligation,
    ts: TsParam,
    remind_at: datetime | None,
    meter: Callable[[Meter], Any] = encode,
    *,
    seen_once: bool = False,
) -> tuple[Any, ...]:
    """An obligation's row (`WRITE_COLUMNS`); its meter is `meter` of the Meter, by default its
    JSON text (SQLite's is `meter_row`). With `seen_once` (SQLite), a `first_seen` or `last_seen`
    equal to `opened_at` is left out (NULL: `obligation_from_row`)."""
    opened = o.opened_at
    return (
        *o.key,
        o.key_id,
        o.status,
        o.action_description,
        ts(o.deadline),
        meter(o.meter),
        ts(opened),
        None if seen_once and o.first_seen == opened else ts(o.first_seen),
        None if seen_once and o.last_seen == opened else ts(o.last_seen),
        ts(o.resolved_at),
        o.resolution,
        o.version,
        ts(remind_at) if o.status == "open" else None,
    )


def obligation_from_row(r: Row) -> Obligation:
    """An obligation row as the process wrote it (typed by the schema: built, not validated;
    its meter decoded into a Meter, where a malformed one raises `msgspec.ValidationError`)."""
    opened_at = read_ts(r["opened_at"])
    assert opened_at is not None
    # SQLite keeps neither when it is `opened_at` (`obligation_params`' `seen_once`)
    first_seen, last_seen = read_ts(r["first_seen"]) or opened_at, read_ts(r["last_seen"]) or opened_at
    return Obligation(
        meter_id=r["meter_id"],
        program_identifier=r["program_identifier"],
        delivery_period=r["delivery_period"],
        action_type=r["action_type"],
        action_code=r["action_code"],
        action_description=r["action_description"],
        deadline=read_ts(r["deadline"]),
        meter=meter_from_row(r["meter_id"], r["meter"], r),
        status=r["status"],
        resolution=r["resolution"],
        opened_at=opened_at,
        first_seen=first_seen,
        last_seen=last_seen,
        resolved_at=read_ts(r["resolved_at"]),
        version=r["version"],
        key_id=r["key_id"],
    )


def event_params(e: Event, ts: TsParam, payload: Callable[[bytes, Event], Any]) -> tuple[Any, ...]:
    """An event's row; its payload is `payload` of its JSON and itself (the backend's `_payload`)."""
    o = e.obligation
    return (e.id, o.key_id, o.meter_id, e.kind, ts(e.occurred_at), e.initial, payload(_encode(e), e))


def event_refs(e: Event) -> Refs:
    """What an event's row holds beside its payload (`packing.Refs`)."""
    return (e.id, e.obligation.meter_id, e.obligation.key_id, e.occurred_at)


EVENT_READ = "id, meter_id, key_id, occurred_at, payload"
"""The columns `event_from_row` reads (a packed payload holds the others' values only in its row)."""


def event_from_row(r: Row) -> Event:
    """A stored event from its row (`EVENT_READ`), its payload JSON text or packed (a malformed
    one raises `msgspec.ValidationError` or ValueError)."""

    def refs() -> Refs:
        at = read_ts(r["occurred_at"])
        assert at is not None
        return (r["id"], r["meter_id"], r["key_id"], at)

    return _EVENT.decode(unpack(r["payload"], refs))


def group_params(g: GroupState, ts: TsParam) -> tuple[Any, ...]:
    return (
        g.key,
        g.rule,
        g.receiver,
        dumps(g.values),
        ts(g.flush_at),
        ts(g.last_flush_at),
    )


def group_from_row(r: Row, pending: tuple[str, ...] = (), waiting: bool = False) -> GroupState:
    """A group head row; its members (`pending`) are rows of their own."""
    flush_at = read_ts(r["flush_at"])
    assert flush_at is not None
    return GroupState(
        key=r["key"],
        rule=r["rule"],
        receiver=r["receiver"],
        values=orjson.loads(r["group_values"]),
        flush_at=flush_at,
        last_flush_at=read_ts(r["last_flush_at"]),
        pending=pending,
        waiting=waiting,
    )


def notification_params(n: Notification, ts: TsParam) -> tuple[Any, ...]:
    """The notification without its events: they are stored once, in `events`, and linked in
    order through `notification_events` (`events_by_reference`)."""
    header = msgspec.to_builtins(msgspec.structs.replace(n, events=(), refs=()))
    del header["events"], header["refs"]
    header["event_count"] = len(n.refs or n.events)
    return (n.id, n.kind, n.rule, n.receiver, ts(n.created_at), dumps(header))


def by_reference(payload: str) -> bool:
    """A stored notification whose events are linked rather than copied (every one written
    since; older ones carry their events)."""
    return "events" not in orjson.loads(payload)


def notification_from_row(payload: str, events: Sequence[Event] | None) -> Notification:
    """A stored notification; `events`: its linked events in order, for one `by_reference`."""
    n = _NOTIFICATION.decode(payload)  # one by reference: its header (`event_count` is ignored)
    return n if events is None else msgspec.structs.replace(n, events=tuple(events))


def delivery_from_row(r: Row, events: Sequence[Event] | None = None, unreadable: tuple[str, ...] = ()) -> Delivery:
    """A ledger row with its notification; one whose notification cannot be read holds only what
    the delivery needs to name it and set it apart (`Delivery.unreadable`)."""
    try:
        n = notification_from_row(r["payload"], events)
    except ValueError as err:
        n = Notification(id=r["notification_id"], rule="", receiver=r["receiver"], events=(), created_at=_EPOCH)
        unreadable = (f"notification: {err}",)
    return Delivery(
        notification=n,
        receiver=r["receiver"],
        status=r["status"],
        attempts=r["attempts"],
        next_attempt_at=read_ts(r["next_attempt_at"]),
        last_error=r["last_error"],
        sent_at=read_ts(r["sent_at"]),
        external_id=r["external_id"],
        steps=orjson.loads(r["steps"]) if r["steps"] else {},
        retry_from=read_ts(r["retry_from"]),
        unreadable=unreadable,
    )


def silence_params(s: Silence, ts: TsParam) -> tuple[Any, ...]:
    return (
        s.id,
        dumps(s.matchers),
        ts(s.starts_at),
        ts(s.ends_at),
        s.reason,
        s.created_by,
        ts(s.created_at),
    )


def silence_from_row(r: Row) -> Silence:
    starts_at, ends_at = read_ts(r["starts_at"]), read_ts(r["ends_at"])
    assert starts_at is not None and ends_at is not None
    return Silence(
        id=r["id"],
        matchers=orjson.loads(r["matchers"]),
        starts_at=starts_at,
        ends_at=ends_at,
        reason=r["reason"],
        created_by=r["created_by"],
        created_at=read_ts(r["created_at"]),
    )
