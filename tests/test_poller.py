"""read_ahead: pages arrive in order, a source error after some pages reaches the caller after
them, and a caller that stops early closes the source."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from alerter.errors import SourceError
from alerter.poller import read_ahead


async def pages(n: int, fail_at: int | None = None, log: list[str] | None = None) -> AsyncIterator[int]:
    try:
        for i in range(n):
            if i == fail_at:
                raise SourceError(f"page {i} failed")
            yield i
    finally:
        if log is not None:
            log.append("closed")


async def test_pages_in_order() -> None:
    assert [p async for p in read_ahead(pages(7), depth=3)] == list(range(7))


async def test_error_arrives_after_the_pages_before_it() -> None:
    got: list[int] = []
    with pytest.raises(SourceError, match="page 3"):
        async for p in read_ahead(pages(10, fail_at=3)):
            got.append(p)
    assert got == [0, 1, 2]


async def test_stopping_early_closes_the_source() -> None:
    log: list[str] = []
    reader = read_ahead(pages(100, log=log))
    async for p in reader:
        if p == 2:
            break
    await reader.aclose()
    assert log == ["closed"]
