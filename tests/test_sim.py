"""The Leap simulator: held to Leap's definition, its request validation, tokens, mutations and faults."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from alerter.sim import Portfolio, SimServer
from alerter.sim.catalog import END_OF_TIME, parse_rfc3339_us
from alerter.sim.faults import INVALID_MODES
from alerter.sim.query import Searcher, parse_search, select
from tests.support.leap import API_KEY, check_request, check_response, matches

SEARCH = "/v2/meters/enrollments/search"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(Portfolio(1200, action_rate=0.3, seed=5), api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, sim: SimServer, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(sim.url + SEARCH, data=data, headers=AUTH if headers is None else headers) as r:
        return r.status, await r.read(), r


async def sweep(http: aiohttp.ClientSession, sim: SimServer, body: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        status, raw, _ = await post(http, sim, {**body, **({"page_token": token} if token else {})})
        assert status == 200, raw
        page = orjson.loads(raw)
        ids += [m["meter_id"] for m in page["meters"]]
        token = page.get("next_page_token")
        if not token:
            return ids


# --- held to the definition ------------------------------------------------------------------------


async def test_search_pages_are_valid_by_the_definition(sim: SimServer, http: aiohttp.ClientSession) -> None:
    p = sim.portfolio
    meter = next(iter(p.with_partner_actions()))
    p.open_action(meter, action_type="DOCUMENTS_SIGNED", enrollment_deadline_date_time=p.now())
    p.archive(p.meter_id(3))
    for body in ({"page_size": 500}, {"partner_action_required": True, "page_size": 100}):
        status, raw, resp = await post(http, sim, body)
        assert status == 200
        check_request("POST", SEARCH, body)
        check_response("POST", SEARCH, 200, raw, request_body=body)
        assert resp.content_type == "application/json"
    page = orjson.loads(raw)
    assert page["next_page_token"]
    end_times = {pp["end_time"] for m in page["meters"] for pp in m["participation_preferences"]}
    assert end_times == {END_OF_TIME}


async def test_the_last_page_has_no_token_and_stays_valid(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"page_size": 500, "meter_ids": [sim.portfolio.meter_id(1)]}
    status, raw, _ = await post(http, sim, body)
    assert status == 200
    assert "next_page_token" not in orjson.loads(raw)
    check_response("POST", SEARCH, 200, raw, request_body=body)


async def test_get_enrollment_is_valid_by_the_definition(sim: SimServer, http: aiohttp.ClientSession) -> None:
    meter_id = next(iter(sim.portfolio.with_partner_actions()))
    path = f"/v2/meters/{meter_id}/enrollments"
    async with http.get(sim.url + path, headers=AUTH) as r:
        assert r.status == 200
        raw = await r.read()
    check_response("GET", path, 200, raw)
    assert orjson.loads(raw) == sim.portfolio.meter(meter_id)


@pytest.mark.parametrize(
    ("path", "status", "title"),
    [
        ("/v2/meters/abcdef/enrollments", 400, "Meter id is not a UUID"),
        ("/v2/meters/f5c5e328-e325-4d6d-b357-5015ed5962a7/enrollments", 404, "Meter not found"),
    ],
)
async def test_get_errors_follow_the_definition(
    sim: SimServer, http: aiohttp.ClientSession, path: str, status: int, title: str
) -> None:
    async with http.get(sim.url + path, headers=AUTH) as r:
        raw = await r.read()
        assert r.status == status
    check_response("GET", path, status, raw)
    error = orjson.loads(raw)
    assert error["title"] == title
    assert error["details"] == {"meter_id": path.split("/")[3]}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
async def test_a_missing_or_wrong_key_is_401(
    sim: SimServer, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, raw, _ = await post(http, sim, {}, headers)
    assert status == 401
    assert orjson.loads(raw) == {"title": "Unauthorized", "status": 401, "details": {}}
    check_response("POST", SEARCH, 401, raw)


async def test_injected_errors_have_leaps_shapes(sim: SimServer, http: aiohttp.ClientSession) -> None:
    for kind in ("500", "403"):
        sim.faults.add(kind)
        status, raw, _ = await post(http, sim, {})
        assert status == int(kind)
        check_response("POST", SEARCH, status, raw)
    assert orjson.loads(raw)["status"] == 403
    sim.faults.add(500)
    assert (await post(http, sim, {}))[1] == b'"An error happened whilst processing your request"'
    sim.faults.add(429, retry_after=7)
    status, _, resp = await post(http, sim, {})
    assert (status, resp.headers["Retry-After"]) == (429, "7")
    sim.faults.add(503, times=2)
    for _ in range(2):
        status, raw, resp = await post(http, sim, {})
        assert (status, resp.content_type) == (503, "text/html")
        assert raw.startswith(b"<html>")
    assert (await post(http, sim, {}))[0] == 200


@pytest.mark.parametrize("mode", sorted(INVALID_MODES))
async def test_an_injected_invalid_record_breaks_the_definition(
    sim: SimServer, http: aiohttp.ClientSession, mode: str
) -> None:
    sim.faults.add("invalid_record", invalid=mode, record=2)
    status, raw, _ = await post(http, sim, {"page_size": 10, "partner_action_required": True})
    assert status == 200
    with pytest.raises(AssertionError):
        check_response("POST", SEARCH, 200, raw)
    meters = orjson.loads(raw)["meters"]
    assert len(meters) == 10
    broken = meters[2]
    if mode in ("no_required_actions", "null_required_actions"):
        assert broken.get("required_actions") is None and "meter_id" in broken
        return
    if mode in ("missing_meter_id", "not_an_object"):
        assert not isinstance(broken, dict) or "meter_id" not in broken
        return
    assert broken["meter_id"] and broken["meter_id"] == sim.portfolio.meter(broken["meter_id"])["meter_id"]
    times = [a["enrollment_deadline_date_time"] for a in broken["required_actions"]["partner"]]
    if mode == "naive_deadline":
        assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", t) for t in times)
    elif mode == "date_deadline":
        assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d", t) for t in times)
    elif mode == "naive_updated_at":
        assert not broken["audit"]["updated_at"].endswith("Z")


async def test_an_invalid_record_fault_breaks_several_records_or_one_meter_wherever_served(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.faults.add("invalid_record", invalid="missing_meter_id", record=3, count=2)
    meters = orjson.loads((await post(http, sim, {"page_size": 10}))[1])["meters"]
    assert ["meter_id" in m for m in meters] == [True] * 3 + [False] * 2 + [True] * 5
    target = meters[7]["meter_id"]
    sim.faults.add("invalid_record", times=3, invalid="not_an_object", meter_id=target)
    meters = orjson.loads((await post(http, sim, {"page_size": 10}))[1])["meters"]
    assert [i for i, m in enumerate(meters) if not isinstance(m, dict)] == [7]
    other = meters[0]["meter_id"]
    async with http.get(f"{sim.url}/v2/meters/{other}/enrollments", headers=AUTH) as r:
        assert (await r.json())["meter_id"] == other  # another meter is served whole
    async with http.get(f"{sim.url}/v2/meters/{target}/enrollments", headers=AUTH) as r:
        assert await r.json() == "this is not a meter"


# --- request validation ----------------------------------------------------------------------------

BAD_BODIES: list[tuple[Any, str]] = [
    ({"page_size": 0}, "page_size"),
    ({"page_size": 501}, "page_size"),
    ({"page_size": "10"}, "page_size"),
    ({"page_size": True}, "page_size"),
    ({"modified_after": "2024-01-01T00:00:00Z"}, "modified_after"),
    ({"limit": 10}, "limit"),
    ({"meter_ids": [str(uuid.UUID(int=i)) for i in range(1001)]}, "meter_ids"),
    ({"meter_ids": ["abcdef"]}, "meter_id"),
    ({"meter_ids": "11111111-1111-1111-1111-111111111111"}, "meter_ids"),
    ({"tags": []}, "tags"),
    ({"tags": None}, "tags"),
    ({"customer_groups": [f"g{i}" for i in range(21)]}, "customer_groups"),
    ({"global_enrollment_statuses": ["ACTIVE", "ACTIVE"]}, "global_enrollment_statuses"),
    ({"transmission_region": "MISO"}, "transmission_region"),
    ({"action_type": ["NOT_A_TYPE"]}, "action_type"),
    ({"partner_action_required": "yes"}, "partner_action_required"),
    ({"last_modified_date_time": "yesterday"}, "last_modified_date_time"),
    ({"partner_references": ["ab"]}, "partner_references"),
    ([], "error"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_invalid_requests_get_the_400_envelope(
    sim: SimServer, http: aiohttp.ClientSession, body: Any, field: str
) -> None:
    status, raw, _ = await post(http, sim, body)
    assert status == 400
    check_response("POST", SEARCH, 400, raw)
    error = orjson.loads(raw)
    assert error["status"] == 400
    assert field in error["details"]


async def test_a_body_that_is_not_json_is_a_400(sim: SimServer, http: aiohttp.ClientSession) -> None:
    status, raw, _ = await post(http, sim, b"{nope")
    assert status == 400
    check_response("POST", SEARCH, 400, raw)


async def test_a_page_token_only_works_with_its_filter(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"partner_action_required": True, "page_size": 50}
    token = orjson.loads((await post(http, sim, body))[1])["next_page_token"]
    status, raw, _ = await post(http, sim, {"page_size": 50, "page_token": token})
    assert status == 400
    assert orjson.loads(raw)["title"] == "Invalid page token"
    status, raw, _ = await post(http, sim, {**body, "page_token": "not-a-token"})
    assert status == 400
    assert (await post(http, sim, {**body, "page_size": 20, "page_token": token}))[0] == 200


# --- filters and paging ----------------------------------------------------------------------------


def _filters(p: Portfolio) -> list[dict[str, Any]]:
    mid = p.record(p.size // 2)["audit"]
    recent = (p.now() - timedelta(days=200)).isoformat().replace("+00:00", "Z")
    return [
        {},
        {"partner_action_required": True},
        {"last_modified_date_time": recent},
        {"partner_action_required": True, "last_modified_date_time": recent},
        {"meter_ids": [p.meter_id(i) for i in range(0, p.size, 7)], "exclude_archived": True},
        {"action_type": ["IS_AUTHORIZED", "DOCUMENTS_SIGNED"]},
        {"transmission_region": "CAISO", "customer_classification": "COMMERCIAL"},
        {"tags": ["vip", "solar"], "customer_groups": ["SMB", "Enterprise"]},
        {"partner_references": [f"site-{i:07d}" for i in range(40)], "meter_types": ["UTILITY_METER"]},
        {"connection_reference_ids": [f"conn-{i:07d}" for i in range(60)]},
        {"global_enrollment_statuses": ["PENDING", "ELIGIBLE"], "load_types": ["EV_CHARGING", "OTHER"]},
        {"created_after_date_time": mid["created_at"], "exclude_archived": True},
        {"created_before_date_time": mid["created_at"]},
    ]


async def test_every_filter_returns_what_a_reference_reading_expects(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    p = sim.portfolio
    p.random_churn(60)
    p.archive(p.meter_id(0))
    meters = [p.record(i) for i in range(p.size)]
    for body in _filters(p):
        expected = [m["meter_id"] for m in meters if matches(m, body)]
        assert await sweep(http, sim, {**body, "page_size": 97}) == expected, body
        assert expected or body.get("meter_ids")


def test_cached_matches_are_patched_to_equal_a_fresh_selection() -> None:
    p = Portfolio(6000, action_rate=0.2, seed=14)
    searcher = Searcher(p)
    since = (p.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    requests = [
        parse_search(f)
        for f in (
            {"partner_action_required": True},
            {"last_modified_date_time": since},
            {"partner_action_required": True, "exclude_archived": True, "last_modified_date_time": since},
            {"action_type": ["IS_AUTHORIZED", "ADDRESS"], "transmission_region": "CAISO"},
            {"created_after_date_time": p.record(3000)["audit"]["created_at"]},
            {"meter_ids": [p.meter_id(i) for i in range(0, p.size, 11)], "partner_action_required": True},
        )
    ]
    for n in (0, 1, 7, 60, 300, 2):
        p.random_churn(n)
        if n == 7:
            p.advance(3600)
            p.touch(p.meter_id(5))
        for request in requests:
            assert list(searcher.matches(request)) == list(select(p, request.filters)), (n, request.filters)


async def test_paging_survives_changes_between_pages(sim: SimServer, http: aiohttp.ClientSession) -> None:
    p = sim.portfolio
    body = {"page_size": 100}
    first = orjson.loads((await post(http, sim, body))[1])
    p.random_churn(50)
    rest = await sweep(http, sim, {**body, "page_token": first["next_page_token"]})
    assert [m["meter_id"] for m in first["meters"]] + rest == [p.meter_id(i) for i in range(p.size)]


# --- the portfolio ---------------------------------------------------------------------------------


def test_the_portfolio_is_a_function_of_its_seed() -> None:
    anchor = datetime(2026, 11, 1, tzinfo=UTC)
    a, b = Portfolio(300, seed=9, anchor=anchor), Portfolio(300, seed=9, anchor=anchor)
    other = Portfolio(300, seed=10, anchor=anchor)
    assert [a.record(i) for i in range(300)] == [b.record(i) for i in range(300)]
    assert a.meter_id(0) != other.meter_id(0)
    ids = [a.meter_id(i) for i in range(300)]
    assert len(set(ids)) == 300
    assert all(uuid.UUID(m).version == 4 and a.index_of(m) == i for i, m in enumerate(ids))
    assert a.index_of(other.meter_id(0)) is None
    assert a.index_of(str(uuid.uuid4())) is None


def test_about_action_rate_of_meters_need_the_partner() -> None:
    p = Portfolio(4000, action_rate=0.1, seed=3)
    with_actions = [p.record(i) for i in range(p.size) if p.record(i)["required_actions"]["partner"]]
    assert 300 < len(with_actions) < 500
    assert all(1 <= len(m["required_actions"]["partner"]) <= 2 for m in with_actions)
    periods = {a["delivery_period"] for m in with_actions for a in m["required_actions"]["partner"]}
    assert all(re.fullmatch(r"[A-Z_-]+_\d{4}_[A-Z]{3}", d) for d in periods)
    assert any(m["required_actions"]["leap"] for m in map(p.record, range(p.size)))


def test_mutations_bump_updated_at_to_the_sim_clock() -> None:
    p = Portfolio(50, action_rate=0.0, seed=4)
    meter_id = p.meter_id(7)
    p.advance(3600)
    before = p.now()
    action = p.open_action(meter_id, action_type="IS_AUTHORIZED", delivery_period="CAISO-CCA_2026_DEC")
    assert action["action_code"] == "AUTH_0001"
    meter = p.meter(meter_id)
    assert meter["required_actions"]["partner"] == [action]
    updated = parse_rfc3339_us(meter["audit"]["updated_at"])
    assert updated is not None and updated >= int(before.timestamp() * 1e6)
    assert list(p.with_partner_actions()) == [meter_id]

    changed = p.change_action(meter_id, "AUTH_0001", description="Re-authorize", deadline="2026-12-01T00:00:00Z")
    assert changed["action_description"] == "Re-authorize"
    assert changed["enrollment_deadline_date_time"] == "2026-12-01T00:00:00Z"
    stamp = p.meter(meter_id)["audit"]["updated_at"]
    p.touch(meter_id)
    touched = p.meter(meter_id)
    assert touched["audit"]["updated_at"] > stamp
    assert touched["required_actions"] == p.meter(meter_id)["required_actions"]
    assert p.resolve_action(meter_id, "AUTH_0001") == [changed]
    assert p.meter(meter_id)["required_actions"]["partner"] == []
    assert list(p.with_partner_actions()) == []
    p.archive(meter_id)
    assert p.meter(meter_id)["is_archived"] is True
    with pytest.raises(KeyError):
        p.resolve_action(meter_id, "AUTH_0001")
    with pytest.raises(KeyError):
        p.touch(str(uuid.uuid4()))


def test_random_churn_changes_meters() -> None:
    p = Portfolio(500, action_rate=0.2, seed=8)
    changes = p.random_churn(200)
    assert len(changes) == 200
    assert {c.kind for c in changes} >= {"opened", "changed", "resolved"}
    assert p.version >= 200


@pytest.mark.parametrize("seed", [1, 5, 77])
def test_rendered_text_is_exactly_what_orjson_makes_of_the_record(seed: int) -> None:
    anchor = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)
    p, again = (Portfolio(50_000, action_rate=0.2, seed=seed, anchor=anchor) for _ in range(2))
    rng = random.Random(seed)
    indices = [*range(20), p.size - 1, *rng.sample(range(p.size), 600)]
    for i in indices:
        text = p.json(i)
        assert orjson.dumps(orjson.loads(text)) == text.encode(), i
        assert orjson.loads(text) == p.record(i) == again.record(i)
    records = [p.record(i) for i in indices]
    assert {len(m["program_enrollment"]) for m in records} == {1, 2, 3}
    assert any(m["required_actions"]["leap"] for m in records)
    assert any(len(m["required_actions"]["partner"]) == 2 for m in records)
    assert any("market_group_id" in e for m in records for e in m["program_enrollment"])


def test_pages_serve_overridden_meters_from_their_dicts() -> None:
    p = Portfolio(3000, action_rate=0.2, seed=6)
    p.random_churn(300)
    p.archive(p.meter_id(1))
    assert p.overrides
    searcher = Searcher(p)
    token = None
    served: list[Any] = []
    while True:
        request = parse_search({"page_size": 500, **({"page_token": token} if token else {})})
        page = orjson.loads(searcher.page_json(request))
        served += page["meters"]
        token = page.get("next_page_token")
        if token is None:
            break
    assert served == [p.record(i) for i in range(p.size)]
    assert served[1]["is_archived"] is True
    assert all(served[i] == p.overrides[i] for i in p.overrides)


async def test_pages_across_a_large_portfolio_are_valid_by_the_definition(http: aiohttp.ClientSession) -> None:
    p = Portfolio(200_000, action_rate=0.3, seed=13)
    rng = random.Random(13)
    async with SimServer(p, api_key=API_KEY) as sim:
        for _ in range(2):
            body = {"meter_ids": [p.meter_id(i) for i in rng.sample(range(p.size), 500)]}
            status, raw, _ = await post(http, sim, body)
            assert status == 200
            check_response("POST", SEARCH, 200, raw, request_body=body)
            assert len(orjson.loads(raw)["meters"]) == 500


# --- the control API and the command ---------------------------------------------------------------


async def test_the_control_api_mutates_and_injects(sim: SimServer, http: aiohttp.ClientSession) -> None:
    meter_id = sim.portfolio.meter_id(10)
    base = sim.url + "/_sim"
    async with http.post(f"{base}/meters/{meter_id}/open", json={"action_type": "ADDRESS"}) as r:
        assert r.status == 200
        assert (await r.json())["result"]["action_code"] == "ADDR_0001"
    async with http.post(f"{base}/meters/{meter_id}/change", json={"action_code": "ADDR_0001", "description": "x"}):
        pass
    async with http.get(f"{base}/meters/{meter_id}") as r:
        partner = (await r.json())["required_actions"]["partner"]
        assert [a["action_description"] for a in partner if a["action_code"] == "ADDR_0001"] == ["x"]
    async with http.post(f"{base}/meters/{meter_id}/resolve", json={"action_code": "ADDR_0001"}) as r:
        assert r.status == 200
    async with http.post(f"{base}/meters/{meter_id}/resolve", json={"action_code": "ADDR_0001"}) as r:
        assert r.status == 404
    async with http.post(f"{base}/meters/{meter_id}/open", json={"nonsense": 1}) as r:
        assert r.status == 400
    before = sim.portfolio.now()
    async with http.post(f"{base}/clock", json={"advance": 86400}) as r:
        now = datetime.fromisoformat((await r.json())["now"])
        assert now - before >= timedelta(days=1)
    async with http.post(f"{base}/churn", json={"n": 5}) as r:
        assert len((await r.json())["changes"]) == 5
    async with http.post(f"{base}/faults", json={"kind": "429", "times": 2}) as r:
        assert (await r.json())["faults"][0]["times"] == 2
    assert (await post(http, sim, {}))[0] == 429
    async with http.delete(f"{base}/faults") as r:
        assert (await r.json())["faults"] == []
    assert (await post(http, sim, {}))[0] == 200
    assert [r.status for r in sim.requests][-2:] == [429, 200]


async def test_alerter_sim_prints_its_url_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alerter",
        "sim",
        "--port",
        "0",
        "--meters",
        "2000",
        "--api-key",
        "k",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"http://[\d.]+:\d+", line)
        assert match, line
        async with (
            aiohttp.ClientSession() as http,
            http.post(match.group(0) + SEARCH, json={}, headers={"Authorization": "Bearer k"}) as r,
        ):
            assert len((await r.json())["meters"]) == 500
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _deadline(p: Portfolio, meter_id: str, code: str) -> datetime:
    [action] = [a for a in p.meter(meter_id)["required_actions"]["partner"] if a["action_code"] == code]
    return datetime.fromisoformat(action["enrollment_deadline_date_time"].replace("Z", "+00:00"))


def test_partner_churn_opens_moves_and_resolves_in_turn_with_future_deadlines() -> None:
    p = Portfolio(3000, action_rate=0.02, seed=4)
    open_before = sum(len(p.record(i)["required_actions"]["partner"]) for i in range(p.size))
    for _ in range(20):
        soon, later = p.now() + timedelta(days=2), p.now() + timedelta(days=60)
        [opened] = p.partner_churn(1)
        assert opened.kind == "opened" and soon < _deadline(p, opened.meter_id, opened.action_code) < later
        before = {i: p.record(i)["required_actions"]["partner"] for i in range(p.size) if p.columns.has_partner[i]}
        [changed] = p.partner_churn(1)
        # A change moves the deadline of an action that was open, to a time at least two days ahead.
        index = p.index_of(changed.meter_id)
        assert changed.kind == "changed" and index in before
        old = {a["action_code"]: a["enrollment_deadline_date_time"] for a in before[index]}
        new = _deadline(p, changed.meter_id, changed.action_code)
        assert new > soon and parse_rfc3339_us(old[changed.action_code]) != parse_rfc3339_us(new.isoformat())
        before = {i: p.record(i)["required_actions"]["partner"] for i in range(p.size) if p.columns.has_partner[i]}
        [resolved] = p.partner_churn(1)
        assert resolved.kind == "resolved" and p.index_of(resolved.meter_id) in before
    assert sum(len(p.record(i)["required_actions"]["partner"]) for i in range(p.size)) == open_before


def test_partner_churn_on_a_portfolio_where_nothing_is_open() -> None:
    p = Portfolio(50, action_rate=0.0, seed=2)
    opened, changed, resolved = p.partner_churn(3)  # the only open action is the one it just opened
    assert (opened.kind, changed.kind, resolved.kind) == ("opened", "changed", "resolved")
    assert opened.meter_id == changed.meter_id == resolved.meter_id and not p.columns.has_partner.count(1)
    assert Portfolio(0).partner_churn(5) == []


def test_random_churn_sets_no_deadline_in_the_past() -> None:
    p = Portfolio(400, action_rate=0.3, seed=3)
    for _ in range(300):
        for change in p.random_churn(1):
            if change.kind in ("opened", "changed"):
                assert _deadline(p, change.meter_id, change.action_code) > p.now() + timedelta(days=2)
