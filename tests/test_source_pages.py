"""A page that is not JSON at all (truncated by a proxy) is asked again, then the sweep goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from alerter.config import SourceConfig
from alerter.errors import SourceError
from alerter.source import LeapClient

METER = {"meter_id": "11111111-1111-1111-1111-111111111111", "is_archived": False, "required_actions": {"partner": []}}


@asynccontextmanager
async def flaky_leap(bad_answers: int) -> AsyncIterator[tuple[str, list[int]]]:
    calls: list[int] = []

    async def search(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) <= bad_answers:
            return web.Response(body=b'{"meters": [{"meter_id": "11', content_type="application/json")
        return web.Response(body=orjson.dumps({"meters": [METER]}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/meters/enrollments/search", search)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", calls
    finally:
        await runner.cleanup()


def config(url: str) -> SourceConfig:
    return SourceConfig(base_url=url, api_key="k", max_retries=2)


async def test_truncated_page_is_asked_again() -> None:
    async with flaky_leap(bad_answers=2) as (url, calls), LeapClient(config(url), backoff_base=0.001) as client:
        pages = [p async for p in client.search({})]
    assert [r.meter_id for p in pages for r in p.records] == [METER["meter_id"]]
    assert len(calls) == 3
    assert client.stats.retries == 2


async def test_a_page_that_never_decodes_fails_the_sweep() -> None:
    async with flaky_leap(bad_answers=10) as (url, _), LeapClient(config(url), backoff_base=0.001) as client:
        with pytest.raises(SourceError, match="not JSON"):
            _ = [p async for p in client.search({})]
