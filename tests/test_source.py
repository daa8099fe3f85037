"""The Leap client against the simulator: paging, filters, retries, auth, decoding, stats."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from alerter.decoding import _decode_each, decode_page
from alerter.errors import SourceError
from alerter.sim import Portfolio
from alerter.source import LeapClient, search_body
from tests.support.leap import API_KEY, FAST, check_request, leap, matches, source_config

SEARCH = "/v2/meters/enrollments/search"


def _ids(pages: list[Any]) -> list[str]:
    return [r.meter_id for p in pages for r in p.records]


async def _all(client: LeapClient, filters: dict[str, Any] | None = None) -> list[Any]:
    return [page async for page in client.search(filters or {})]


# --- paging and filters ----------------------------------------------------------------------------


async def test_a_sweep_pages_through_every_match_once() -> None:
    portfolio = Portfolio(2300, seed=21)
    async with leap(portfolio, config={"page_size": 500}) as (sim, client):
        pages = await _all(client)
    assert [len(p.records) for p in pages] == [500, 500, 500, 500, 300]
    assert [p.number for p in pages] == [1, 2, 3, 4, 5]
    assert _ids(pages) == [portfolio.meter_id(i) for i in range(2300)]
    assert pages[-1].next_page_token is None and all(p.next_page_token for p in pages[:-1])
    bodies = [r.body for r in sim.requests]
    assert all({k: v for k, v in b.items() if k != "page_token"} == {"page_size": 500} for b in bodies)
    assert "page_token" not in bodies[0] and all(b["page_token"] for b in bodies[1:])
    assert client.stats.pages == 5 and client.stats.records == 2300 and client.stats.requests == 5
    assert client.stats.latency_count == 5 and client.stats.latency_sum > 0


async def test_max_updated_at_is_the_pages_high_water_mark() -> None:
    portfolio = Portfolio(300, seed=2)
    async with leap(portfolio) as (_, client):
        portfolio.advance(600)
        portfolio.touch(portfolio.meter_id(17))
        (page,) = await _all(client)
    newest = max(r.updated_at for r in page.records if r.updated_at)
    assert page.max_updated_at == newest
    assert page.max_updated_at is not None and page.max_updated_at > datetime.now(UTC)


async def test_a_page_lists_its_meter_ids_and_the_records_listing_partner_actions() -> None:
    portfolio = Portfolio(700, action_rate=0.2, seed=12)
    async with leap(portfolio, config={"page_size": 500}) as (_, client):
        pages = await _all(client)
    for page in pages:
        assert page.meter_ids == [r.meter_id for r in page.records]
        acting = [r for r in page.records if r.partner_actions]
        assert page.acting == acting and all(a is b for a, b in zip(page.acting, acting, strict=True))
    acting_ids = [r.meter_id for p in pages for r in p.acting]
    assert acting_ids == list(portfolio.with_partner_actions()) and 0 < len(acting_ids) < 700


def _filter_cases(p: Portfolio) -> list[dict[str, Any]]:
    since = datetime.now(UTC) - timedelta(days=300)
    return [
        {"partner_action_required": True},
        {"partner_action_required": True, "last_modified_date_time": since},
        {"last_modified_date_time": since.isoformat()},
        {"meter_ids": [p.meter_id(i) for i in range(0, p.size, 9)]},
        {"action_type": ["IS_AUTHORIZED", "NO_MISSING_FIELDS"]},
        {"transmission_region": "NYISO"},
        {"customer_classification": "COMMERCIAL", "exclude_archived": True},
        {"tags": ["vip", "pilot"]},
        {"customer_groups": ["SMB"]},
        {"partner_references": [f"site-{i:07d}" for i in range(0, 100, 3)]},
        {"connection_reference_ids": [f"conn-{i:07d}" for i in range(50)]},
        {"global_enrollment_statuses": ["ACTIVE"]},
        {"meter_types": ["DEVICE", "SUBMETER"]},
        {"load_types": ["HVAC"]},
        {"created_after_date_time": p.record(300)["audit"]["created_at"]},
        {"created_before_date_time": p.record(300)["audit"]["created_at"]},
    ]


async def test_each_filter_is_sent_and_honoured() -> None:
    portfolio = Portfolio(900, action_rate=0.25, seed=31)
    portfolio.random_churn(40)
    for i in range(0, 900, 50):
        portfolio.archive(portfolio.meter_id(i))
    meters = [portfolio.record(i) for i in range(portfolio.size)]
    async with leap(portfolio, config={"page_size": 200}) as (sim, client):
        for filters in _filter_cases(portfolio):
            sent = search_body(filters, 200)
            check_request("POST", SEARCH, sent)
            expected = [
                m["meter_id"] for m in meters if matches(m, {k: v for k, v in sent.items() if k != "page_size"})
            ]
            assert _ids(await _all(client, filters)) == expected, filters
            assert expected, filters
            assert sim.requests[-1].status == 200


async def test_config_filters_merge_and_empty_filters_are_left_out() -> None:
    portfolio = Portfolio(400, action_rate=0.3, seed=5)
    config = {"page_size": 50, "filters": {"transmission_region": "CAISO", "tags": []}}
    async with leap(portfolio, config=config) as (sim, client):
        pages = await _all(client, {"partner_action_required": True, "meter_ids": None, "customer_groups": ()})
    body = sim.requests[0].body
    assert body == {"page_size": 50, "transmission_region": "CAISO", "partner_action_required": True}
    assert all(r.transmission_region == "CAISO" and r.partner_actions for p in pages for r in p.records)


async def test_search_meters_asks_for_at_most_1000_ids_a_request() -> None:
    portfolio = Portfolio(2600, seed=8)
    wanted = [portfolio.meter_id(i) for i in range(50, 2550)]
    since = datetime(2020, 1, 1, tzinfo=UTC)
    async with leap(portfolio) as (sim, client):
        pages = [p async for p in client.search_meters([*wanted, wanted[0]], since)]
        assert [p async for p in client.search_meters([])] == []
    sizes = [len(r.body["meter_ids"]) for r in sim.requests]
    assert sizes == [1000, 1000, 1000, 1000, 500]  # two pages of 500 for each full chunk
    assert all(r.body["last_modified_date_time"] == "2020-01-01T00:00:00.000000Z" for r in sim.requests)
    assert _ids(pages) == wanted
    assert [p.number for p in pages] == [1, 2, 3, 4, 5]
    assert all(p.meter_ids == [r.meter_id for r in p.records] for p in pages)  # kept when renumbered


async def test_get_enrollment() -> None:
    portfolio = Portfolio(50, action_rate=0.5, seed=4)
    meter_id = next(iter(portfolio.with_partner_actions()))
    async with leap(portfolio) as (_, client):
        record = await client.get_enrollment(meter_id)
        assert record is not None and record.meter_id == meter_id and record.partner_actions
        assert await client.get_enrollment("f5c5e328-e325-4d6d-b357-5015ed5962a7") is None
        with pytest.raises(SourceError, match="Meter id is not a UUID"):
            await client.get_enrollment("abcdef")


# --- retries ---------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds() -> None:
    async with leap(retry_after_max=5.0) as (sim, client):
        sim.faults.add(429, retry_after=1)
        started = time.monotonic()
        pages = await _all(client)
    assert time.monotonic() - started >= 0.9
    assert len(_ids(pages)) == 200
    assert client.stats.retries == 1 and client.stats.requests == 2


async def test_a_retry_after_longer_than_a_cycle_waits_ends_it_and_leap_is_not_called_before_then() -> None:
    async with leap(retry_after_limit=2.0) as (sim, client):
        sim.faults.add(429, retry_after=600)
        with pytest.raises(SourceError, match=r"429 Too Many Requests and asked not to be called for 600 s"):
            await _all(client)
        asked = len(sim.requests)
        with pytest.raises(SourceError, match=r"asked not to be called for (599|600) s more"):
            await _all(client)
    assert len(sim.requests) == asked == 1 and client.stats.retries == 0


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("429", "429 Too Many Requests"),
        ("500", "500 An error happened whilst processing your request"),
        ("502", "502 (HTML body)"),
        ("503", "503 (HTML body)"),
        ("504", "504 (HTML body)"),
        ("disconnect", "connection failed"),
    ],
)
async def test_retryable_failures_are_retried_then_give_up(fault: str, named: str) -> None:
    async with leap(config={"max_retries": 3}) as (sim, client):
        sim.faults.add(fault, times=3)
        assert len(_ids(await _all(client))) == 200
        assert client.stats.retries == 3
        sim.faults.add(fault, times=4)
        with capture_logs() as logs, pytest.raises(SourceError) as err:
            await _all(client)
    assert named in str(err.value) and "after 4 attempts" in str(err.value)
    assert not err.value.auth
    assert [e["event"] for e in logs] == ["source_retry"] * 3
    assert API_KEY not in str(err.value) + repr(logs)


async def test_timeouts_are_retried_then_give_up() -> None:
    async with leap(config={"max_retries": 1, "timeout": "100ms"}) as (sim, client):
        sim.faults.add("slow", times=2, delay=0.3)
        with pytest.raises(SourceError, match=r"after 2 attempts: timed out after 0.1s"):
            await _all(client)
        sim.faults.add("slow", delay=0.3)
        assert len(_ids(await _all(client))) == 200


async def test_an_unreachable_host_gives_up_after_the_budget() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = source_config(f"http://127.0.0.1:{port}", max_retries=2)
    async with LeapClient(config, **FAST) as client:
        with pytest.raises(SourceError, match="after 3 attempts: connection failed") as err:
            await _all(client)
    assert client.stats.requests == 3 and client.stats.retries == 2
    assert API_KEY not in str(err.value)


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_an_auth_error_without_the_key(status: int) -> None:
    async with leap() as (sim, client):
        sim.faults.add(status)
        with capture_logs() as logs, pytest.raises(SourceError) as err:
            await _all(client)
    message = str(err.value)
    assert err.value.auth and err.value.status == status
    assert f"Leap refused the API key ({status})" in message
    assert ("staging key used on production" if status == 403 else "source.api_key") in message
    assert API_KEY not in message + repr(logs)
    assert client.stats.requests == 1


async def test_a_wrong_key_is_refused() -> None:
    portfolio = Portfolio(10, seed=1)
    async with leap(portfolio) as (sim, _):
        wrong = "wrong-secret-value-123"
        async with LeapClient(source_config(sim.url, api_key=wrong), **FAST) as client:
            with pytest.raises(SourceError) as err:
                await _all(client)
    assert err.value.auth and wrong not in str(err.value)


async def test_a_bad_request_names_leaps_reason() -> None:
    async with leap() as (_, client):
        with pytest.raises(SourceError) as err:
            await _all(client, {"transmission_region": "MISO"})
    assert "Leap rejected the request (400): Bad Request" in str(err.value)
    assert "transmission_region" in str(err.value) and not err.value.auth


# --- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["missing_meter_id", "bad_action_type"])
async def test_an_invalid_record_is_skipped_and_counted(mode: str) -> None:
    portfolio = Portfolio(800, action_rate=0.5, seed=6)
    portfolio.advance(3600)
    broken = portfolio.meter_id(4)
    portfolio.touch(broken)  # the newest record of page 1 is the one that will be broken
    async with leap(portfolio, config={"page_size": 500}) as (sim, client):
        sim.faults.add("invalid_record", invalid=mode, record=4)
        with capture_logs() as logs:
            pages = await _all(client)
    first = pages[0]
    assert (len(first.records), first.invalid) == (499, 1)
    assert first.meter_ids == [r.meter_id for r in first.records] and broken not in first.meter_ids
    assert first.acting == [r for r in first.records if r.partner_actions] and first.acting
    assert broken not in _ids(pages) and len(_ids(pages)) == 799
    assert first.max_updated_at is not None
    assert first.max_updated_at.isoformat().startswith(portfolio.meter(broken)["audit"]["updated_at"][:26])
    assert client.stats.invalid_records == 1 and client.stats.records == 799
    (entry,) = [e for e in logs if e["event"] == "record_invalid"]
    assert entry["meter_id"] == (None if mode == "missing_meter_id" else broken)
    assert ("meter_id" if mode == "missing_meter_id" else "action_type") in entry["error"]


def _page(**changes: Any) -> bytes:
    meter = Portfolio(5, action_rate=1.0, seed=12).record(2)
    meter = {**meter, **changes}
    return orjson.dumps({"meters": [meter], "next_page_token": ""})


def test_unknown_enums_and_fields_are_accepted() -> None:
    raw = _page(
        transmission_region="MISO",
        meter_type="VIRTUAL_METER",
        global_enrollment_status="WAITLISTED",
        brand_new_field={"nested": [1, 2]},
        required_actions={
            "partner": [
                {
                    "program_identifier": "MISO-LMR",
                    "delivery_period": "MISO-LMR_2027_JUN",
                    "enrollment_deadline_date_time": "2027-05-29T00:00:00.123456789Z",
                    "action_type": "HAS_SMART_PANEL",
                    "action_description": "New in 2027",
                    "action_code": "PANEL_0001",
                    "severity": "HIGH",
                }
            ]
        },
    )
    page = decode_page(raw, 1)
    (record,) = page.records
    assert (record.transmission_region, record.meter_type) == ("MISO", "VIRTUAL_METER")
    (action,) = record.partner_actions
    assert (action.program_identifier, action.action_type) == ("MISO-LMR", "HAS_SMART_PANEL")
    assert action.enrollment_deadline_date_time == datetime(2027, 5, 29, 0, 0, 0, 123456, tzinfo=UTC)
    assert page.next_page_token is None and page.invalid == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-07-29T00:00:00.000Z", datetime(2024, 7, 29, tzinfo=UTC)),
        ("9000-12-31T23:59:59.999999999Z", datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2000-01-23T04:56:07.000+00:00", datetime(2000, 1, 23, 4, 56, 7, tzinfo=UTC)),
        # not RFC 3339, but met in the wild: no offset is UTC, a date is its midnight UTC
        ("2027-03-01T00:00:00", datetime(2027, 3, 1, tzinfo=UTC)),
        ("2027-03-01T08:30:00.250", datetime(2027, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)),
        ("2027-03-01", datetime(2027, 3, 1, tzinfo=UTC)),
        # another offset is converted to UTC
        ("2027-03-01T02:00:00+02:00", datetime(2027, 3, 1, tzinfo=UTC)),
        ("2027-02-28T19:00:00-05:00", datetime(2027, 3, 1, tzinfo=UTC)),
    ],
)
def test_leaps_timestamps_parse(text: str, expected: datetime) -> None:
    partner = [
        {
            "program_identifier": "CCA",
            "delivery_period": "CAISO-CCA_2026_DEC",
            "enrollment_deadline_date_time": text,
            "action_type": "IS_AUTHORIZED",
            "action_description": "",
            "action_code": "AUTH_0001",
        }
    ]
    raw = _page(required_actions={"partner": partner}, audit={"updated_at": text})
    page = decode_page(raw, 1)
    (record,) = page.records
    deadline = record.partner_actions[0].enrollment_deadline_date_time
    assert deadline == expected and deadline is not None and deadline.utcoffset() == timedelta(0)
    assert record.updated_at == expected and page.max_updated_at == expected
    # the record-by-record path reads the same instants
    assert _decode_each(raw, 1).records == page.records


@pytest.mark.parametrize("text", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00", "2027-13-01", "soon"])
def test_a_time_with_no_utc_form_makes_its_record_invalid(text: str) -> None:
    meter = Portfolio(5, action_rate=1.0, seed=12).record(2)
    action = {**meter["required_actions"]["partner"][0], "enrollment_deadline_date_time": text}
    broken = {**meter, "required_actions": {"partner": [action], "leap": []}}
    fine = Portfolio(5, action_rate=1.0, seed=12).record(3)
    with capture_logs() as logs:
        page = decode_page(orjson.dumps({"meters": [broken, fine]}), 1)
    assert [r.meter_id for r in page.records] == [fine["meter_id"]]
    assert (page.invalid, page.invalid_ids, page.unidentified) == (1, [meter["meter_id"]], 0)
    (entry,) = [e for e in logs if e["event"] == "record_invalid"]
    assert entry["meter_id"] == meter["meter_id"] and "enrollment_deadline_date_time" in entry["error"]


def test_garbage_records_are_each_counted_and_those_with_an_id_named() -> None:
    fine = Portfolio(5, action_rate=1.0, seed=12).record(3)
    named = {"meter_id": "33333333-3333-3333-3333-333333333333", "is_archived": "perhaps"}
    with capture_logs() as logs:
        page = decode_page(orjson.dumps({"meters": ["garbage", fine, None, named, {"meter_id": 7}]}), 1)
    assert [r.meter_id for r in page.records] == [fine["meter_id"]]
    assert (page.invalid, page.invalid_ids, page.unidentified) == (4, [named["meter_id"]], 3)
    entries = [(e["meter_id"], e["index"]) for e in logs if e["event"] == "record_invalid"]
    assert entries == [(None, 0), (None, 2), (named["meter_id"], 3), (None, 4)]


def test_a_lone_surrogate_fails_its_record_alone() -> None:
    """A lone surrogate escape (`\\ud800`) makes orjson and pydantic refuse the whole page: it is
    read leniently, the record holding it (text no store can keep) is skipped, the others go on."""
    fine = Portfolio(5, action_rate=1.0, seed=12).record(3)
    raw = orjson.dumps(
        {
            "meters": [
                fine,
                {"meter_id": "44444444-4444-4444-4444-444444444444", "partner_reference": "x", "required_actions": {}},
            ]
        }
    )
    raw = raw.replace(b'"partner_reference":"x"', b'"partner_reference":"x\\ud800"')
    with capture_logs() as logs:
        page = decode_page(raw, 1)
    assert [r.meter_id for r in page.records] == [fine["meter_id"]]
    assert page.invalid_ids == ["44444444-4444-4444-4444-444444444444"]
    (entry,) = [e for e in logs if e["event"] == "record_invalid"]
    assert "not valid Unicode" in entry["error"]


def test_missing_optional_keys_read_as_empty() -> None:
    meter = {"meter_id": "11111111-1111-1111-1111-111111111111", "required_actions": {}}
    (record,) = decode_page(orjson.dumps({"meters": [meter]}), 1).records
    assert (record.partner_reference, record.tags, record.partner_actions) == ("", (), ())
    assert record.updated_at is None


@pytest.mark.parametrize("actions", [None, "none", [], 0], ids=["null", "a string", "a list", "a number"])
def test_a_record_that_does_not_state_its_actions_is_invalid_and_its_meter_named(actions: object) -> None:
    # read as listing no action, it would resolve every open obligation of its meter
    stated: dict[str, Any] = {
        "meter_id": "11111111-1111-1111-1111-111111111111",
        "audit": None,
        "required_actions": {"partner": []},
    }
    silent = {"meter_id": "22222222-2222-2222-2222-222222222222"}
    broken = [{**silent, "required_actions": actions}, silent]
    with capture_logs() as logs:
        page = decode_page(orjson.dumps({"meters": [stated, *broken]}), 1)
    ((record,), invalid) = page.records, page.invalid
    assert (record.meter_id, record.partner_actions, record.updated_at, invalid) == (stated["meter_id"], (), None, 2)
    assert page.invalid_ids == [silent["meter_id"]] * 2
    assert all("required_actions" in e["error"] for e in logs if e["event"] == "record_invalid")


def test_a_null_action_list_is_invalid() -> None:
    broken = {"meter_id": "22222222-2222-2222-2222-222222222222", "required_actions": {"partner": None}}
    assert decode_page(orjson.dumps({"meters": [broken]}), 1).invalid == 1


@pytest.mark.parametrize("token", [12345, {"page": 2}, ["x"], True])
def test_a_page_token_that_is_not_a_string_is_an_error_not_the_last_page(token: object) -> None:
    # read as the end, it would cut the sweep short, and a reconcile sweep would then resolve
    # every meter on the pages it never read
    with pytest.raises(SourceError, match="next_page_token"):
        decode_page(orjson.dumps({"meters": [], "next_page_token": token}), 4)


@pytest.mark.parametrize("raw", [b"<html>oops</html>", b'{"next_page_token": "x"}', b'"a string"'])
def test_a_page_that_is_not_a_search_response_is_an_error(raw: bytes) -> None:
    with pytest.raises(SourceError, match="page 3"):
        decode_page(raw, 3)
