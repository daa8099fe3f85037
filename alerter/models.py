"""Frozen domain models shared by every stage: records from Leap, obligations, events, notifications,
and what grouping decides (group heads, silences, one routing step's write); the store persists them.

Records mirror the JSON names of Leap's Enrollments v2 definition and keep only the
fields the product uses; unknown fields are ignored and enum-like fields are plain
strings so that a new program or region Leap adds never rejects a record. They are
pydantic models: Leap's pages are validated at the boundary. What the process builds from
them (meters, obligations, events, notifications) are msgspec Structs: built, copied,
encoded and decoded on the hot path without validating again what the process itself wrote
(the store reads its own rows back through `alerter.store.rows`' typed decoders).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, TypeGuard

import msgspec
from pydantic import AliasPath, BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetPydanticSchema
from pydantic_core import core_schema as cs
from typing_extensions import TypedDict

_RECORD = ConfigDict(frozen=True, extra="ignore")
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
"""A UUID in its text form: how Leap's definition names meters and webhook events (`format: uuid`)."""
_UUID = re.compile(UUID)


def is_uuid(value: object) -> TypeGuard[str]:
    """Whether `value` is a UUID in its text form, whole (a trailing newline is not one)."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def _utc(value: datetime) -> datetime:
    """Leap's time as an aware UTC instant: one without an offset is read as UTC (a date as its
    midnight UTC), one with an offset is converted; an instant that has no UTC form is invalid."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date-time out of range once converted to UTC") from None


def _leap_time_schema(source: Any, handler: GetCoreSchemaHandler) -> cs.CoreSchema:
    # Leap writes UTC (`...Z`): such a value is taken by the first schema, in Rust alone; only
    # a value without an offset, a date or another offset reaches `_utc`.
    return cs.union_schema(
        [cs.datetime_schema(tz_constraint=0), cs.no_info_after_validator_function(_utc, cs.datetime_schema())],
        mode="left_to_right",
        custom_error_type="leap_time",
        custom_error_message="Input should be an RFC 3339 date-time or a date, in range once read as UTC",
    )


LeapTime = Annotated[datetime, GetPydanticSchema(_leap_time_schema)]
"""A date-time of Leap's, aware and in UTC once validated: without an offset it is read as UTC,
a date as midnight UTC, another offset is converted to UTC."""


MeterId = Annotated[
    str,
    GetPydanticSchema(
        lambda source, handler: cs.custom_error_schema(
            cs.str_schema(pattern=f"^{UUID}$"),
            custom_error_type="meter_id",
            custom_error_message="must be a UUID, as Leap's meter ids are",
        )
    ),
]
"""A meter's id as Leap's definition has it (`format: uuid`), checked in Rust."""


class RequiredAction(BaseModel):
    """One entry of `required_actions.partner[]`."""

    model_config = _RECORD

    program_identifier: str
    delivery_period: str
    enrollment_deadline_date_time: LeapTime | None = None
    action_type: str
    action_description: str = ""
    action_code: str


class _Stated(TypedDict, total=False):
    """An object, whatever it holds (`Record.required_actions`): validated as one, and cheaper
    so than as a model (no instance per record)."""


class Record(BaseModel):
    """One meter enrollment as returned by `POST /v2/meters/enrollments/search`.

    Flat on purpose: `audit.updated_at` and `required_actions.partner` are read through
    their paths rather than as nested models, so a page of 500 records decodes into fewer
    objects (a sweep over a large portfolio decodes and frees millions of them). Leap-side
    actions (`required_actions.leap`) are not the partner's to act on and are not read.
    """

    model_config = _RECORD

    meter_id: MeterId
    """A UUID (Leap's definition): Leap refuses any other id when it is asked for again, so a
    record with one is invalid (skipped, counted and named) rather than watched for ever."""
    partner_reference: str = ""
    transmission_region: str = ""
    customer_classification: str = ""
    meter_type: str = ""
    load_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    customer_group: str = ""
    global_enrollment_status: str = ""
    is_archived: bool = False
    updated_at: LeapTime | None = Field(default=None, validation_alias=AliasPath("audit", "updated_at"))
    """`audit.updated_at`: the watermark is the highest seen."""
    partner_actions: tuple[RequiredAction, ...] = Field(
        default=(), validation_alias=AliasPath("required_actions", "partner")
    )
    """`required_actions.partner[]`: the obligations this product tracks."""
    required_actions: _Stated = Field(repr=False)
    """That `required_actions` is an object, as Leap's definition requires: a record without it
    (or with `null` or anything else there) cannot say that its meter's actions cleared, and
    read as listing none it would resolve every one of them. Its content is read above."""

    def meter(self) -> Meter:
        return Meter(
            meter_id=self.meter_id,
            partner_reference=self.partner_reference,
            transmission_region=self.transmission_region,
            customer_classification=self.customer_classification,
            meter_type=self.meter_type,
            load_types=self.load_types,
            tags=self.tags,
            customer_group=self.customer_group,
            global_enrollment_status=self.global_enrollment_status,
            is_archived=self.is_archived,
        )


class Meter(msgspec.Struct, frozen=True, kw_only=True):
    """The meter attributes rules can match on, kept with each obligation."""

    meter_id: str
    partner_reference: str = ""
    transmission_region: str = ""
    customer_classification: str = ""
    meter_type: str = ""
    load_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    customer_group: str = ""
    global_enrollment_status: str = ""
    is_archived: bool = False


ObligationKey = tuple[str, str, str, str, str]
"""(meter_id, program_identifier, delivery_period, action_type, action_code)."""

ObligationStatus = Literal["open", "resolved"]
Resolution = Literal["cleared", "archived", "reconcile"]
EventKind = Literal["opened", "changed", "reminder", "resolved"]


def obligation_key(meter_id: str, action: RequiredAction) -> ObligationKey:
    return (
        meter_id,
        action.program_identifier,
        action.delivery_period,
        action.action_type,
        action.action_code,
    )


def key_id(key: ObligationKey) -> str:
    """A stable short id for an obligation key (used in event ids, Slack threads, email refs)."""
    return hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:24]


class Obligation(msgspec.Struct, frozen=True, kw_only=True):
    """What the state store remembers about one partner action of one meter."""

    meter_id: str
    program_identifier: str
    delivery_period: str
    action_type: str
    action_code: str
    action_description: str = ""
    deadline: datetime | None = None
    meter: Meter
    status: ObligationStatus = "open"
    resolution: Resolution | None = None
    opened_at: datetime
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None = None
    version: int = 1
    """Increments on every transition (opened=1, then each change, resolution or reopening)."""

    key_id: str = ""
    """`key_id(key)`, computed once when the obligation is built without it (a copy keeps it:
    no copy changes a key field, a new key is a new obligation, `diff.open_obligation`)."""

    def __post_init__(self) -> None:
        if not self.key_id:
            msgspec.structs.force_setattr(self, "key_id", key_id(self.key))

    @property
    def key(self) -> ObligationKey:
        return (self.meter_id, self.program_identifier, self.delivery_period, self.action_type, self.action_code)


FirstLook = Callable[[Obligation], datetime | None]
"""When the reminders step first looks at an open obligation being written (its `remind_at`)."""


def event_id(key: ObligationKey, kind: EventKind, version: int, detail: str = "") -> str:
    """Deterministic: the same transition always has the same id, so replays deduplicate."""
    raw = "\x1f".join((*key, kind, str(version), detail))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One transition of an obligation: opened, changed, reminder or resolved."""

    id: str
    kind: EventKind
    occurred_at: datetime
    obligation: Obligation
    """The obligation as it stands after the transition."""
    previous: dict[str, Any] | None = None
    """For `changed`: the old values of the fields that changed (description, deadline)."""
    detail: str = ""
    """For `reminder`: the threshold (`every:3`, `before:2d`, `overdue`); for `resolved`: the reason."""
    initial: bool = False
    """Part of an initial sync (the backlog found on an empty state)."""

    def fields(self) -> dict[str, Any]:
        """The fields an event offers to `match`, `group_by` and templates."""
        o = self.obligation
        m = o.meter
        return {
            "event": self.kind,
            "meter_id": o.meter_id,
            "partner_reference": m.partner_reference,
            "transmission_region": m.transmission_region,
            "customer_classification": m.customer_classification,
            "meter_type": m.meter_type,
            "load_types": list(m.load_types),
            "tags": list(m.tags),
            "customer_group": m.customer_group,
            "global_enrollment_status": m.global_enrollment_status,
            "is_archived": m.is_archived,
            "action_type": o.action_type,
            "action_code": o.action_code,
            "action_description": o.action_description,
            "program_identifier": o.program_identifier,
            "delivery_period": o.delivery_period,
            "deadline": o.deadline,
            "opened_at": o.opened_at,
        }


class EventRef(NamedTuple):
    """What a group flush needs of an event it sends (its notification links the event by id;
    the event is read whole when the notification is delivered)."""

    id: str
    kind: EventKind
    key_id: str
    """Its obligation's key id."""
    told: bool = False
    """Read from its group's member row: routing recorded its receiver as told of the obligation
    (`RoutingWrite.told`) when it queued it there, so its flush need not record it again."""

    @classmethod
    def of(cls, e: Event) -> EventRef:
        return cls(e.id, e.kind, e.obligation.key_id)


NotificationKind = Literal["notification", "digest", "alert"]
"""`alert`: the service reporting on itself; no events, `group` holds alert, status, message."""


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One message to one receiver: the events of one group (or an initial-sync digest)."""

    id: str
    kind: NotificationKind = "notification"
    rule: str
    receiver: str
    group: dict[str, str] = msgspec.field(default_factory=dict)
    events: tuple[Event, ...] = ()
    created_at: datetime
    part: tuple[int, int] = (1, 1)
    """(index, count), 1-based: a group or digest larger than its receiver's `max_events` is sent
    as several notifications, each with its own id."""
    summary: dict[str, Any] | None = None
    """A digest's counts over all its events (every part carries the whole digest's)."""
    refs: tuple[EventRef, ...] = ()
    """A group flush's notification as it is written: its events by reference (`events` is
    empty until the notification is read back to be delivered)."""

    def members(self) -> tuple[EventRef, ...]:
        """Its events by reference, in order (from `refs`, or from `events`)."""
        return self.refs or tuple(map(EventRef.of, self.events))


@dataclass(frozen=True, slots=True)
class GroupState:
    """A group of events waiting to be flushed to one receiver under one rule.

    The store keeps a group's head (this, without `pending`) and its members (event ids,
    in arrival order) apart: routing appends members, a flush removes the ones it sent.
    `load_groups` and `due_groups` fill `pending`; `group_heads` and the groups of a
    RoutingWrite leave it empty and tell through `waiting` whether the group has members.
    """

    key: str
    """rule + receiver + group_by values, stable."""
    rule: str
    receiver: str
    values: dict[str, str]
    flush_at: datetime
    """When the pending events are due (first event + group_wait, or last flush + group_interval)."""
    last_flush_at: datetime | None = None
    pending: tuple[str, ...] = ()
    """Event ids waiting in this group, in arrival order (when loaded with its members)."""
    waiting: bool = False
    """The group has members (always true when `pending` is not empty)."""

    def __post_init__(self) -> None:
        if self.pending and not self.waiting:
            object.__setattr__(self, "waiting", True)


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: dict[str, Any]
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class RoutingWrite:
    """Everything one routing step decided, written in one transaction."""

    consumed: Sequence[str]
    """Event ids that are now routed (no longer pending)."""
    groups: Sequence[GroupState] = ()
    """Group heads created or updated (rule, receiver, values, flush_at, last_flush_at). Their
    `pending` and `waiting` are not written: members change only through `appended` and `flushed`."""
    appended: Sequence[tuple[str, str]] = ()
    """(group key, event id) members added, in arrival order; one already in its group is ignored."""
    refs: Mapping[str, EventRef] = field(default_factory=dict)
    """What a flush needs of the appended events (kind and key id, by event id), kept with
    their member rows so that it need not read the events for it."""
    flushed: Sequence[tuple[str, str]] = ()
    """(group key, event id) members a flush sent: removed from their group."""
    deleted_groups: Sequence[str] = ()
    """Groups removed with their members."""
    notifications: Sequence[Notification] = ()
    """New notifications; a ledger row (status pending, due now) is created for each."""
    silenced: Sequence[tuple[str, str]] = ()
    """(event id, silence id) pairs."""
    unrouted: Sequence[tuple[str, str]] = ()
    """(event id, event kind) of consumed events that no rule took: counted, nothing to write."""
    events_stored: bool = False
    """The notifications' events were read from the store (routing, flushes and digests build
    them so): the store need not look for ones it lacks (`commit_routing` stores those)."""
    told: Sequence[tuple[str, str]] = ()
    """(obligation key id, receiver) of openings, changes and reminders queued in a group: the
    receiver will be told of them, so their resolution goes to it even before the group flushes."""
    untold: Sequence[tuple[str, str, str]] = ()
    """(obligation key id, receiver, opening's event id) recorded as told when the opening was
    queued, that it was not: the opening was silenced in its group before the flush. Unless a
    notification already gave the receiver that opening (through another rule): then it was."""
    lost: Sequence[tuple[str, str]] = ()
    """(meter id, obligation key id) of resolutions a receiver told of the opening gets through
    no rule that matches them now or as the obligation opened: `plan` again with their stored
    openings (`openings`) finds the rule that told it. Not written."""
    told_reset: Sequence[str] = ()
    """Obligation key ids opened again: the receivers told of an earlier opening are forgotten
    before `told` is recorded, so a resolution goes only to those told of this opening."""
