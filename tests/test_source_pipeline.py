"""The next page is asked for while the current one is decoded, from the token read out of its raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from aiohttp import web

from alerter import source
from alerter.config import SourceConfig
from alerter.decoding import Page, peek_next_token
from alerter.errors import SourceError
from alerter.readahead import read_ahead
from alerter.source import LeapClient
from tests.support.leap import FAST

Render = Callable[[list[dict[str, Any]], str | None], bytes]


def plain(meters: list[dict[str, Any]], token: str | None) -> bytes:
    return orjson.dumps({"meters": meters, "next_page_token": token})


def token_of(page: int) -> str:
    """Tokens with characters JSON escapes, so the raw and the decoded token differ."""
    return f't{page}/\u00e9"q\\'


@dataclass
class Leap:
    """A paged search of `pages` pages; `faults[token]` are answers given before the right one."""

    pages: int
    render: Render = plain
    faults: dict[str | None, list[int | str]] = field(default_factory=dict)
    delay: dict[str | None, float] = field(default_factory=dict)
    asked: list[str | None] = field(default_factory=list)
    url: str = ""

    def page(self, token: str | None) -> int:
        if token is None:
            return 0
        return next(n for n in range(1, self.pages) if token_of(n) == token)

    async def search(self, request: web.Request) -> web.Response:
        token = (await request.json()).get("page_token")
        self.asked.append(token)
        if token in self.delay:
            await asyncio.sleep(self.delay[token])
        faults = self.faults.get(token)
        if faults:
            fault = faults.pop(0)
            if fault == "truncated":
                return web.Response(body=b'{"meters": [{"meter_id": "11', content_type="application/json")
            assert isinstance(fault, int)
            return web.json_response({"title": "no"}, status=fault)
        n = self.page(token)
        meters = [
            {
                "meter_id": meter_uuid(n, i),
                "audit": {"updated_at": f"2024-01-{n % 28 + 1:02d}T00:00:0{i}Z"},
                "required_actions": {"partner": []},
            }
            for i in range(3)
        ]
        after = token_of(n + 1) if n + 1 < self.pages else None
        return web.Response(body=self.render(meters, after), content_type="application/json")


@asynccontextmanager
async def serve(leap: Leap) -> AsyncIterator[Leap]:
    app = web.Application()
    app.router.add_post("/v2/meters/enrollments/search", leap.search)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    leap.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield leap
    finally:
        await runner.cleanup()


def client(leap: Leap) -> LeapClient:
    return LeapClient(SourceConfig(base_url=leap.url, api_key="secret-key-9", max_retries=2), **FAST)


def shape(pages: list[Page]) -> list[tuple[Any, ...]]:
    return [(p.number, p.records, p.invalid, p.next_page_token, p.max_updated_at) for p in pages]


def requests_in_flight() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "LeapClient._request"]  # type: ignore[union-attr]


async def sweep(leap: Leap) -> tuple[list[Page], LeapClient]:
    async with client(leap) as leap_client:
        pages = [p async for p in leap_client.search({})]
    return pages, leap_client


def meter_uuid(page: int, index: int) -> str:
    """The id of the `index`th meter of page `page` (a UUID, as Leap's are)."""
    return f"00000000-0000-4000-8000-{page:06d}{index:06d}"


def generator(leap_client: LeapClient) -> AsyncGenerator[Page, None]:
    return cast(AsyncGenerator[Page, None], leap_client.search({}))


async def test_pages_are_those_of_the_sequential_path(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve(Leap(pages=6)) as leap:
        pipelined, fast = await sweep(leap)
        assert leap.asked == [None] + [token_of(n) for n in range(1, 6)]
        leap.asked.clear()
        monkeypatch.setattr(source, "peek_next_token", lambda raw: None)
        sequential, slow = await sweep(leap)
    assert shape(pipelined) == shape(sequential)
    assert [p.next_page_token for p in pipelined] == [token_of(n) for n in range(1, 6)] + [None]
    assert (fast.stats.requests, fast.stats.pages, fast.stats.records) == (6, 6, 18)
    assert (slow.stats.requests, slow.stats.pages, slow.stats.records) == (6, 6, 18)
    assert fast.stats.latency_count == 6


def odd(meters: list[dict[str, Any]], token: str | None) -> bytes:
    """The token after `meters`, with whitespace around the colon and the key spelt with an escape."""
    return b'{"meters" : ' + orjson.dumps(meters) + b',\n "next_page_\\u0074oken"\t:\n ' + orjson.dumps(token) + b"}"


def spaced(meters: list[dict[str, Any]], token: str | None) -> bytes:
    quoted = orjson.dumps(token).replace(b"/", b"\\/").replace("\u00e9".encode(), b"\\u00e9")
    return b'{"next_page_token"  \n:\t' + quoted + b', "meters":\n' + orjson.dumps(meters) + b"}"


def test_the_raw_token_reads_as_json_does() -> None:
    for n in (1, 2):
        assert peek_next_token(spaced([], token_of(n))) == token_of(n)
        assert peek_next_token(plain([{"meter_id": "m"}], token_of(n))) == token_of(n)
        assert peek_next_token(odd([], token_of(n))) is None
    assert peek_next_token(plain([], None)) is None
    assert peek_next_token(b'{"meters": [], "next_page_token": ""}') is None
    assert peek_next_token(b'{"meters": [], "next_page_token": "abc') is None


@pytest.mark.parametrize("render", [odd, spaced])
async def test_a_token_written_oddly_still_pages_through(render: Render) -> None:
    async with serve(Leap(pages=4, render=render)) as leap:
        pages, leap_client = await sweep(leap)
    assert [r.meter_id for p in pages for r in p.records] == [meter_uuid(n, i) for n in range(4) for i in range(3)]
    assert leap.asked == [None] + [token_of(n) for n in range(1, 4)]
    assert leap_client.stats.requests == 4


def decoy(meters: list[dict[str, Any]], token: str | None) -> bytes:
    """A record carrying its own `next_page_token` after the real one: the raw guess is wrong."""
    meters = [*meters[:-1], {**meters[-1], "extra": {"next_page_token": "decoy"}}]
    return b'{"next_page_token": ' + orjson.dumps(token) + b', "meters": ' + orjson.dumps(meters) + b"}"


async def test_a_wrong_guess_is_dropped_and_the_right_page_asked_for() -> None:
    async with serve(Leap(pages=3, render=decoy, delay={"decoy": 0.05})) as leap:
        pages, leap_client = await sweep(leap)
        assert not requests_in_flight()
    assert [p.next_page_token for p in pages] == [token_of(1), token_of(2), None]
    assert [t for t in leap.asked if t != "decoy"] == [None, token_of(1), token_of(2)]
    assert leap_client.stats.pages == 3


@pytest.mark.parametrize("through_read_ahead", [False, True])
async def test_a_consumer_that_stops_early_leaves_no_request_behind(through_read_ahead: bool) -> None:
    async with serve(Leap(pages=5, delay={token_of(2): 0.2})) as leap, client(leap) as leap_client:
        pages = generator(leap_client)
        wrapped = read_ahead(pages) if through_read_ahead else pages
        async with contextlib.aclosing(wrapped) as stream:
            async for page in stream:
                if page.number == 2:
                    assert requests_in_flight()  # page 3's request, started before page 2 was decoded
                    break
        assert not requests_in_flight()
        await pages.aclose()
    gc.collect()


async def test_an_error_of_the_request_ahead_is_raised_for_its_page_only() -> None:
    async with serve(Leap(pages=4, faults={token_of(2): [400]})) as leap, client(leap) as leap_client:
        got: list[int] = []
        with pytest.raises(SourceError, match="rejected the request") as raised:
            async for page in leap_client.search({}):
                got.append(page.number)
                await asyncio.sleep(0.05)  # page 3's request has failed by now; page 2 is still given
        assert got == [1, 2]
        assert "secret-key-9" not in str(raised.value)
        assert not requests_in_flight()


async def test_an_error_no_one_asks_for_is_not_left_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with serve(Leap(pages=4, faults={token_of(2): [400]})) as leap, client(leap) as leap_client:
            async with contextlib.aclosing(generator(leap_client)) as stream:
                async for page in stream:
                    if page.number == 2:
                        await asyncio.sleep(0.05)
                        break
            assert not requests_in_flight()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_the_request_ahead_has_its_own_retries_and_undecodable_reasks() -> None:
    faults: dict[str | None, list[int | str]] = {token_of(1): [503, 503], token_of(2): ["truncated", "truncated"]}
    async with serve(Leap(pages=4, faults=faults)) as leap:
        pages, leap_client = await sweep(leap)
    assert [p.number for p in pages] == [1, 2, 3, 4]
    assert leap_client.stats.requests == 8
    assert leap_client.stats.retries == 4
    assert leap_client.stats.latency_count == 8


async def test_the_retry_budget_is_per_request_ahead() -> None:
    async with serve(Leap(pages=3, faults={token_of(1): [503, 503, 503]})) as leap, client(leap) as leap_client:
        with pytest.raises(SourceError, match="failed after 3 attempts"):
            async for _ in leap_client.search({}):
                pass
    assert leap_client.stats.requests == 4


def looping(meters: list[dict[str, Any]], token: str | None) -> bytes:
    return plain(meters, token_of(1))


async def test_the_same_token_twice_still_stops_the_sweep() -> None:
    async with serve(Leap(pages=3, render=looping)) as leap, client(leap) as leap_client:
        with pytest.raises(SourceError, match="a page token it had already given"):
            async for _ in leap_client.search({}):
                pass
        assert not requests_in_flight()
    assert leap.asked == [None, token_of(1)]
