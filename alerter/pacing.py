"""Turn-taking for a paced channel: one turn per interval, and a Retry-After block, on an injected clock.

How this works: a `Pacer` hands out turns in arrival order, each at least `interval` seconds
after the one before; `block(seconds)` (a 429's Retry-After) holds every turn back until then,
including one already waiting. Time is whatever `clock` returns (monotonic seconds) and waiting
is `sleep`: the service gives the event loop's, a test a fake one. `Pacers` keeps one pacer per
key, so every sender to the same channel shares its turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """One channel's turns."""

    def __init__(self, interval: float, clock: Clock, sleep: Sleep) -> None:
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.blocked_until = float("-inf")
        self.queued = 0
        """Senders waiting for (or sleeping until) their turn."""
        self._last = float("-inf")
        self._line = asyncio.Lock()  # first come, first served

    def expected_wait(self) -> float:
        """Roughly how long a sender arriving now waits for its turn."""
        return max(0.0, self.blocked_until - self.clock()) + self.queued * self.interval

    def block(self, seconds: float) -> None:
        """No turn for `seconds` from now (an earlier, longer block stands)."""
        self.blocked_until = max(self.blocked_until, self.clock() + seconds)

    async def turn(self) -> None:
        """Wait for this sender's turn."""
        self.queued += 1
        try:
            async with self._line:
                while (wait := max(self._last + self.interval, self.blocked_until) - self.clock()) > 0:
                    await self.sleep(wait)
                self._last = self.clock()
        finally:
            self.queued -= 1


class Pacers:
    """The pacers of one service, by key (e.g. workspace and channel), on one clock."""

    def __init__(self, clock: Clock, sleep: Sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self._pacers: dict[Hashable, Pacer] = {}

    def get(self, key: Hashable, interval: float) -> Pacer:
        """The pacer of `key`, made with `interval` the first time it is asked for."""
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(interval, self.clock, self.sleep)
        return pacer

    def __iter__(self) -> Iterator[Pacer]:
        return iter(list(self._pacers.values()))
