"""The pure diff: records + prior obligations -> events, table by table, with a fixed `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerter.diff import LAST_SEEN_REFRESH, diff_records
from alerter.models import Obligation, ObligationKey, Record

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 12, 1, tzinfo=UTC)
METER = "11111111-1111-1111-1111-111111111111"


def action(code: str = "AUTH_0001", **over: Any) -> dict[str, Any]:
    base = {
        "program_identifier": "CCA",
        "delivery_period": "CAISO-CCA_2026_DEC",
        "enrollment_deadline_date_time": DEADLINE.isoformat(),
        "action_type": "IS_AUTHORIZED",
        "action_description": "End customer must re-authorize meter.",
        "action_code": code,
    }
    base.update(over)
    return base


def record(*actions: dict[str, Any], archived: bool = False, meter_id: str = METER, **over: Any) -> Record:
    data: dict[str, Any] = {
        "meter_id": meter_id,
        "partner_reference": "site-1",
        "transmission_region": "CAISO",
        "tags": ["vip"],
        "is_archived": archived,
        "required_actions": {"partner": list(actions), "leap": []},
    }
    data.update(over)
    return Record.model_validate(data)


def state(*records: Record, at: datetime = T0) -> dict[ObligationKey, Obligation]:
    result = diff_records(records, {}, at)
    return {ob.key: ob for ob in result.obligations}


def kinds(result: Any) -> list[str]:
    return [e.kind for e in result.events]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param([], [action()], ["opened"], id="new action opens"),
        pytest.param([action()], [action()], [], id="identical actions: nothing"),
        pytest.param([action()], [], ["resolved"], id="cleared action resolves"),
        pytest.param([action()], [action(action_description="Sign again")], ["changed"], id="description change"),
        pytest.param(
            [action()],
            [action(enrollment_deadline_date_time="2026-12-15T00:00:00Z")],
            ["changed"],
            id="deadline change",
        ),
        pytest.param([action()], [action(), action("AUTH_0002")], ["opened"], id="second action opens"),
        pytest.param(
            [action()],
            [action(delivery_period="CAISO-CCA_2027_JAN")],
            ["opened", "resolved"],
            id="same code, other period: distinct obligation",
        ),
        pytest.param([], [action(), action()], ["opened"], id="duplicate entries in one record count once"),
    ],
)
def test_transitions(before: list[dict[str, Any]], after: list[dict[str, Any]], expected: list[str]) -> None:
    prior = state(record(*before)) if before else {}
    result = diff_records([record(*after)], prior, T0 + timedelta(minutes=5))
    assert sorted(kinds(result)) == sorted(expected)


def test_archived_meter_resolves_with_reason() -> None:
    prior = state(record(action()))
    result = diff_records([record(action(), archived=True)], prior, T0 + timedelta(minutes=5))
    assert kinds(result) == ["resolved"]
    assert result.events[0].obligation.resolution == "archived"
    assert result.events[0].obligation.status == "resolved"


def test_cleared_resolution_reason_and_version() -> None:
    prior = state(record(action()))
    result = diff_records([record()], prior, T0 + timedelta(minutes=5))
    ob = result.events[0].obligation
    assert (ob.resolution, ob.version, ob.resolved_at) == ("cleared", 2, T0 + timedelta(minutes=5))


def test_reopened_obligation_gets_new_version_and_event_id() -> None:
    opened = state(record(action()))
    resolved = diff_records([record()], opened, T0 + timedelta(minutes=5))
    prior = {ob.key: ob for ob in resolved.obligations}
    again = diff_records([record(action())], prior, T0 + timedelta(minutes=10))
    assert kinds(again) == ["opened"]
    first_id = next(iter(diff_records([record(action())], {}, T0).events)).id
    assert again.events[0].obligation.version == 3
    assert again.events[0].id != first_id
    assert again.events[0].obligation.first_seen == T0


def test_changed_event_carries_previous_values() -> None:
    prior = state(record(action()))
    result = diff_records([record(action(action_description="Sign again"))], prior, T0)
    assert result.events[0].previous == {"action_description": "End customer must re-authorize meter."}


def test_event_ids_are_deterministic() -> None:
    a = diff_records([record(action())], {}, T0)
    b = diff_records([record(action())], {}, T0 + timedelta(hours=1))
    assert [e.id for e in a.events] == [e.id for e in b.events]


def test_meter_attribute_change_updates_state_without_event() -> None:
    prior = state(record(action()))
    result = diff_records([record(action(), tags=["vip", "new"])], prior, T0 + timedelta(minutes=1))
    assert result.events == []
    assert [ob.meter.tags for ob in result.obligations] == [("vip", "new")]


def test_unchanged_meter_writes_nothing_until_last_seen_is_stale() -> None:
    prior = state(record(action()))
    fresh = diff_records([record(action())], prior, T0 + timedelta(minutes=1))
    assert (fresh.events, fresh.obligations) == ([], [])
    stale = diff_records([record(action())], prior, T0 + LAST_SEEN_REFRESH)
    assert stale.events == []
    assert [ob.last_seen for ob in stale.obligations] == [T0 + LAST_SEEN_REFRESH]


def test_leap_actions_are_context_only() -> None:
    rec = Record.model_validate({"meter_id": METER, "required_actions": {"partner": [], "leap": [action("LEAP_0001")]}})
    assert diff_records([rec], {}, T0).events == []


def test_initial_flag_propagates() -> None:
    result = diff_records([record(action())], {}, T0, initial=True)
    assert all(e.initial for e in result.events)


def test_other_meters_obligations_untouched() -> None:
    prior = state(record(action(), meter_id="22222222-2222-2222-2222-222222222222"))
    result = diff_records([record()], prior, T0)
    assert result.events == []


def test_unknown_enum_values_flow_through() -> None:
    result = diff_records([record(action(action_type="BRAND_NEW_TYPE", program_identifier="NEW-PROGRAM"))], {}, T0)
    assert result.events[0].obligation.action_type == "BRAND_NEW_TYPE"
