"""The Leap client against a Leap that misbehaves in ways the simulator does not: page tokens that
loop, error bodies that echo the request's key, answers that are not HTTP, ids that are not UUIDs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from alerter.errors import SourceError
from alerter.sim import Portfolio
from alerter.source import LeapClient
from tests.support.leap import API_KEY, FAST, source_config

SEARCH = "/v2/meters/enrollments/search"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def fake_leap(handler: Handler, **config: Any) -> AsyncIterator[tuple[LeapClient, list[dict[str, Any]]]]:
    """A Leap of `handler`'s making on loopback, a client for it, and the request bodies it got."""
    bodies: list[dict[str, Any]] = []

    async def search(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return await handler(request)

    app = web.Application()
    app.router.add_post(SEARCH, search)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with LeapClient(source_config(f"http://127.0.0.1:{port}", **config), **FAST) as client:
            yield client, bodies
    finally:
        await runner.cleanup()


def page(meters: list[dict[str, Any]], token: str | None = None) -> web.Response:
    return web.json_response({"meters": meters, "next_page_token": token})


async def test_a_page_token_given_again_stops_the_sweep() -> None:
    """A, B, A, ...: the sweep ends with an error at the first token seen before, not for ever."""
    following = {None: "A", "A": "B", "B": "A"}

    async def handler(request: web.Request) -> web.Response:
        if len(bodies) > 20:  # bounded, should the client follow the loop
            return page([])
        return page([], following[(await request.json()).get("page_token")])

    async with fake_leap(handler) as (client, bodies):
        with pytest.raises(SourceError, match="a page token it had already given"):
            [p async for p in client.search({})]
    tokens = [b.get("page_token") for b in bodies]
    assert tokens[:3] == [None, "A", "B"] and len(tokens) <= 4  # the next page's request may go ahead


@pytest.mark.parametrize("status", [400, 502])
async def test_an_error_body_echoing_the_key_is_not_repeated(status: int) -> None:
    """A gateway's error body repeats the request's Authorization header: neither the error nor
    the retry lines say the key."""

    async def handler(request: web.Request) -> web.Response:
        details = {"header": request.headers["Authorization"]}
        return web.json_response({"title": "Gateway error", "details": details}, status=status)

    async with fake_leap(handler, max_retries=1) as (client, _):
        with capture_logs() as logs, pytest.raises(SourceError) as err:
            [p async for p in client.search({})]
    said = str(err.value) + repr(logs)
    assert "Gateway error" in said and "Bearer ***" in said
    assert API_KEY not in said


@asynccontextmanager
async def not_http(answer: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering every connection with `answer` (a broken proxy); its URL and how many
    connections it took."""
    took: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        took.append(1)
        await reader.read(65536)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", took
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 2OO OK\r\n\r\n", b"garbage\r\n\r\n"])
async def test_an_answer_that_is_not_http_is_retried_then_a_source_error(answer: bytes) -> None:
    async with not_http(answer) as (url, took), LeapClient(source_config(url, max_retries=2), **FAST) as client:
        with capture_logs() as logs, pytest.raises(SourceError, match="after 3 attempts: connection failed"):
            [p async for p in client.search({})]
    assert len(took) == 3 and [e["event"] for e in logs] == ["source_retry"] * 2


async def test_a_record_whose_meter_id_is_not_a_uuid_is_skipped_counted_and_named() -> None:
    """Leap would refuse that id when asked for it again (400, the whole request): such a record
    is invalid, and such an id (stored by an earlier version) is not asked for."""
    portfolio = Portfolio(3, action_rate=1.0, seed=4)
    good, bad = portfolio.record(0), {**portfolio.record(1), "meter_id": "meter-42"}

    async def handler(request: web.Request) -> web.Response:
        return page([good, bad])

    async with fake_leap(handler) as (client, bodies):
        with capture_logs() as logs:
            [first] = [p async for p in client.search({})]
            [p async for p in client.search_meters([good["meter_id"], "meter-42", "", good["meter_id"]])]
    assert [r.meter_id for r in first.records] == [good["meter_id"]]
    assert first.invalid == 1 and first.invalid_ids == ["meter-42"]
    invalid = [e for e in logs if e["event"] == "record_invalid"]
    assert [e["meter_id"] for e in invalid] == ["meter-42"] * 2 and "meter_id" in invalid[0]["error"]
    assert bodies[1]["meter_ids"] == [good["meter_id"]]
    [left_out] = [e for e in logs if e["event"] == "meter_id_not_uuid"]
    assert left_out["meter_ids"] == ["meter-42", ""]


def test_a_meter_id_that_is_not_a_uuid_is_said_so() -> None:
    from pydantic import ValidationError

    from alerter.models import Record

    with pytest.raises(ValidationError, match="must be a UUID, as Leap's meter ids are"):
        Record.model_validate({"meter_id": "M-1", "required_actions": {}})
    for id_ in ("9c156b8c-8093-445a-88b4-efd51e93a636\n", " 9c156b8c-8093-445a-88b4-efd51e93a636", ""):
        with pytest.raises(ValidationError):
            Record.model_validate({"meter_id": id_, "required_actions": {}})
