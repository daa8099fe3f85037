"""Pure: prior obligations of a page's meters + the page's records -> obligation changes and events.

How this works: for each record, the partner actions it lists are the meter's open
obligations at that moment. A key not open before is `opened` (a resolved key comes back
as a new version), an open key whose description or deadline moved is `changed`, an open
key the record no longer lists is `resolved` (`cleared`, or `archived` when the meter is
archived). A meter modified with identical actions yields nothing; its stored copy is only
rewritten when the meter attributes rules match on have changed, or `last_seen` is stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from msgspec.structs import replace

from alerter.models import (
    Event,
    EventKind,
    Meter,
    Obligation,
    ObligationKey,
    Record,
    RequiredAction,
    Resolution,
    event_id,
    obligation_key,
)

LAST_SEEN_REFRESH = timedelta(hours=1)
"""An unchanged obligation's `last_seen` is rewritten at most this often (keeps sweeps cheap)."""


@dataclass
class DiffResult:
    obligations: list[Obligation] = field(default_factory=list)
    """Obligations to upsert (new, changed, resolved or refreshed)."""
    events: list[Event] = field(default_factory=list)


def _event(
    kind: EventKind,
    ob: Obligation,
    now: datetime,
    initial: bool,
    detail: str = "",
    previous: dict[str, object] | None = None,
) -> Event:
    return Event(
        id=event_id(ob.key, kind, ob.version),
        kind=kind,
        occurred_at=now,
        obligation=ob,
        previous=previous,
        detail=detail,
        initial=initial,
    )


def open_obligation(
    key: ObligationKey, action: RequiredAction, meter: Meter, prior: Obligation | None, now: datetime
) -> Obligation:
    return Obligation(
        meter_id=key[0],
        program_identifier=key[1],
        delivery_period=key[2],
        action_type=key[3],
        action_code=key[4],
        action_description=action.action_description,
        deadline=action.enrollment_deadline_date_time,
        meter=meter,
        status="open",
        opened_at=now,
        first_seen=prior.first_seen if prior else now,
        last_seen=now,
        version=prior.version + 1 if prior else 1,
    )


def resolve(ob: Obligation, reason: Resolution, now: datetime, initial: bool = False) -> Event:
    """The `resolved` transition of an open obligation."""
    done = replace(ob, status="resolved", resolution=reason, resolved_at=now, last_seen=now, version=ob.version + 1)
    return _event("resolved", done, now, initial, detail=reason)


def diff_records(
    records: Iterable[Record],
    prior: Mapping[ObligationKey, Obligation],
    now: datetime,
    *,
    initial: bool = False,
    with_events: bool = True,
) -> DiffResult:
    """Events for a page. `prior` holds every known obligation of the page's meters.
    Without `with_events`, only the obligation changes (a baseline that is not announced)."""
    by_meter: dict[str, list[Obligation]] = {}
    for ob in prior.values():
        if ob.status == "open":
            by_meter.setdefault(ob.meter_id, []).append(ob)

    result = DiffResult()
    seen_meters: set[str] = set()
    for record in records:
        if record.meter_id in seen_meters:
            continue  # a meter listed twice in one page: the first copy wins
        seen_meters.add(record.meter_id)
        partner = record.partner_actions
        if not partner and record.meter_id not in by_meter:
            continue  # the common case in a sweep: nothing needed, nothing open
        meter = record.meter()
        current: dict[ObligationKey, RequiredAction] = {}
        if not record.is_archived:
            for action in partner:
                current.setdefault(obligation_key(record.meter_id, action), action)

        for key, action in current.items():
            before = prior.get(key)
            if before is None or before.status == "resolved":
                ob = open_obligation(key, action, meter, before, now)
                result.obligations.append(ob)
                if with_events:
                    result.events.append(_event("opened", ob, now, initial))
                continue
            changes: dict[str, object] = {}
            if before.action_description != action.action_description:
                changes["action_description"] = before.action_description
            if before.deadline != action.enrollment_deadline_date_time:
                changes["deadline"] = before.deadline.isoformat() if before.deadline else None
            if changes:
                ob = replace(
                    before,
                    action_description=action.action_description,
                    deadline=action.enrollment_deadline_date_time,
                    meter=meter,
                    last_seen=now,
                    version=before.version + 1,
                )
                result.obligations.append(ob)
                if with_events:
                    result.events.append(_event("changed", ob, now, initial, previous=changes))
            elif before.meter != meter or now - before.last_seen >= LAST_SEEN_REFRESH:
                result.obligations.append(replace(before, meter=meter, last_seen=now))

        reason: Resolution = "archived" if record.is_archived else "cleared"
        for ob in by_meter.get(record.meter_id, ()):
            if ob.key not in current:
                ev = resolve(replace(ob, meter=meter), reason, now, initial)
                result.obligations.append(ev.obligation)
                if with_events:
                    result.events.append(ev)
    return result
