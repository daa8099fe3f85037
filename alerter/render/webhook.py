"""The webhook's JSON body for one notification (README, "What gets delivered")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import to_builtins

from alerter.models import Event, Notification
from alerter.templates import digest_counts, iso, previous_values


def webhook_event(e: Event, digest: bool) -> dict[str, Any]:
    """One event of a notification; `initial` only in a digest (a group's events of an initial
    sync in `notify` mode went out as new)."""
    o = e.obligation
    event: dict[str, Any] = {
        "type": f"action.{e.kind}",
        "id": e.id,
        "occurred_at": iso(e.occurred_at),
        "obligation_id": o.key_id,
        "meter": to_builtins(o.meter),
        "action": {
            "action_type": o.action_type,
            "action_code": o.action_code,
            "action_description": o.action_description,
            "program_identifier": o.program_identifier,
            "delivery_period": o.delivery_period,
            "enrollment_deadline_date_time": iso(o.deadline),
        },
        "status": o.status,
        "opened_at": iso(o.opened_at),
        "initial": e.initial and digest,
    }
    if e.detail:
        event["detail"] = e.detail
    if o.resolution:
        event["resolution"] = o.resolution
    if e.previous:
        event["previous"] = previous_values(e)
    return event


def webhook_body(n: Notification, now: datetime | None = None) -> dict[str, Any]:
    """The webhook's JSON body. Deadline buckets of a digest are counted at `now`, by default
    the notification's creation time, so that every retry sends the same bytes."""
    data: dict[str, Any] = {"id": n.id, "rule": n.rule, "receiver": n.receiver, "group": dict(n.group)}
    data["part"] = {"index": n.part[0], "count": n.part[1]}
    if n.kind == "digest":
        data["counts"] = n.summary if n.summary is not None else digest_counts(n.events, now or n.created_at)
    data["events"] = [webhook_event(e, n.kind == "digest") for e in n.events]
    kind = {"digest": "alerter.digest", "alert": "alerter.alert"}.get(n.kind, "alerter.notification")
    return {"type": kind, "timestamp": iso(n.created_at), "data": data}
