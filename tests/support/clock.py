"""A fake monotonic clock for pacing tests: time moves only when the test moves it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable

from alerter.pacing import Pacers


class FakeClock:
    """`clock()` reads the fake time; `await clock.sleep(s)` waits until the test `advance`s past it."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.slept: list[float] = []
        """Every sleep asked for, in order."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    def _live(self) -> list[tuple[float, int, asyncio.Future[None]]]:
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        return self._sleepers

    @property
    def next_wake(self) -> float | None:
        """When the earliest sleeper wakes, or None when nobody sleeps."""
        live = self._live()
        return live[0][0] if live else None

    def advance_to_next(self) -> None:
        """Move the time to the earliest wake-up and wake every sleeper due by then."""
        live = self._live()
        if not live:
            raise AssertionError("nobody is sleeping")
        self.now = max(self.now, live[0][0])
        while (live := self._live()) and live[0][0] <= self.now:
            heapq.heappop(live)[2].set_result(None)


async def on_fake_time(clock: FakeClock, pacers: Pacers, *sends: Awaitable[object]) -> None:
    """Runs the sends to their end on the fake clock, which moves to the next wake-up only when
    every unfinished send is waiting for its turn (none is talking to Slack)."""
    tasks = [asyncio.ensure_future(s) for s in sends]

    def settled() -> bool:
        unfinished = sum(not t.done() for t in tasks)
        return unfinished == 0 or (clock.next_wake is not None and sum(p.queued for p in pacers) == unfinished)

    loop = asyncio.get_running_loop()
    while not all(t.done() for t in tasks):
        give_up = loop.time() + 20
        while not settled():
            assert loop.time() < give_up, "the sends neither finished nor waited for the clock"
            await asyncio.sleep(0.005)
        if not all(t.done() for t in tasks):
            clock.advance_to_next()
            await asyncio.sleep(0)  # let the woken sender take its turn before the next look
    await asyncio.gather(*tasks)
