"""Pages fetched and decoded ahead of the consumer, so the server renders while this process diffs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

P = TypeVar("P")


async def read_ahead(pages: AsyncIterator[P], depth: int = 2) -> AsyncGenerator[P, None]:
    """Fetch up to `depth` pages ahead while the caller diffs and commits the current one.

    A page's next-page token is in its body, so page n+1 can only be requested once page n
    is decoded. A producer task requests it right then, not when the caller is done with the
    page before, so the server renders while this process diffs and commits. An error of the
    source is raised to the caller after the pages before it.
    """
    async with contextlib.aclosing(read_ahead_groups(pages, depth)) as groups:
        async for group in groups:
            for page in group:
                yield page


async def read_ahead_groups(pages: AsyncIterator[P], depth: int = 2, least: int = 1) -> AsyncGenerator[list[P], None]:
    """`read_ahead` in groups: at least `least` pages (fewer only at the end), and any more
    already fetched, in order. The caller does its per-page round trips once per group; the
    wait costs nothing, as the pages are requested and decoded meanwhile."""
    queue: asyncio.Queue[tuple[P] | BaseException | None] = asyncio.Queue(maxsize=max(1, depth - 1))

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put((page,))
        except Exception as err:
            await queue.put(err)
        else:
            await queue.put(None)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            items = [await queue.get()]
            while isinstance(items[-1], tuple) and len(items) < least:
                items.append(await queue.get())
            while isinstance(items[-1], tuple) and not queue.empty():
                items.append(queue.get_nowait())
            group = [item[0] for item in items if isinstance(item, tuple)]
            if group:
                yield group
            last = items[-1]
            if last is None:
                break
            if isinstance(last, BaseException):
                raise last
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
