"""Builders for events and notifications in notifier, template and delivery tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from alerter.models import Event, EventKind, Meter, Notification, NotificationKind, Obligation, event_id

T0 = datetime.fromisoformat("2026-11-28T10:00:00+00:00")


def event(
    i: int,
    kind: EventKind = "opened",
    now: datetime = T0,
    *,
    action_type: str = "IS_AUTHORIZED",
    deadline: datetime | None = None,
    partner_reference: str | None = None,
    **kw: Any,
) -> Event:
    meter = Meter(
        meter_id=f"meter-{i:04d}",
        partner_reference=f"ACME-{i:04d}" if partner_reference is None else partner_reference,
        transmission_region="CAISO" if i % 2 else "NYISO",
    )
    o = Obligation(
        meter_id=meter.meter_id,
        program_identifier="CAISO_DRAM",
        delivery_period="2026-12",
        action_type=action_type,
        action_code="AUTH_0001",
        action_description="Customer must re-authorize",
        deadline=deadline if deadline is not None else now + timedelta(days=3),
        meter=meter,
        status="resolved" if kind == "resolved" else "open",
        resolution="cleared" if kind == "resolved" else None,
        opened_at=now,
        first_seen=now,
        last_seen=now,
    )
    return Event(id=event_id(o.key, kind, 1), kind=kind, occurred_at=now, obligation=o, **kw)


def notification(
    nid: str,
    events: list[Event],
    *,
    receiver: str = "r",
    kind: NotificationKind = "notification",
    created_at: datetime = T0,
) -> Notification:
    return Notification(
        id=nid,
        kind=kind,
        rule="rule-1",
        receiver=receiver,
        group={"action_type": events[0].obligation.action_type},
        events=tuple(events),
        created_at=created_at,
    )
