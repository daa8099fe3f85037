"""Pacer on a fake clock: turns in arrival order an interval apart, Retry-After blocks, cancelled waiters."""

from __future__ import annotations

import asyncio

import pytest

from alerter.pacing import Pacer, Pacers
from tests.support.clock import FakeClock, on_fake_time


def paced(interval: float = 1.0) -> tuple[FakeClock, Pacers, Pacer]:
    clock = FakeClock()
    pacers = Pacers(clock, clock.sleep)
    return clock, pacers, pacers.get("#c", interval)


async def test_turns_come_in_arrival_order_an_interval_apart() -> None:
    clock, pacers, pacer = paced()
    start, turns = clock(), []

    async def sender(name: str) -> None:
        await pacer.turn()
        turns.append((name, clock() - start))

    await on_fake_time(clock, pacers, *(sender(n) for n in "abc"))
    assert turns == [("a", 0), ("b", 1), ("c", 2)]
    clock.now += 5  # idle for longer than the interval: the next turn is at once
    await pacer.turn()
    assert clock.slept == [1, 1]


async def test_a_block_holds_back_the_turn_already_waiting() -> None:
    clock, pacers, pacer = paced()
    start, turns = clock(), []

    async def sender(block: float = 0) -> None:
        await pacer.turn()
        turns.append(clock() - start)
        if block:
            pacer.block(block)  # e.g. the answer was a 429 with Retry-After: 30

    await on_fake_time(clock, pacers, sender(block=30), sender())
    assert turns == [0, 30]
    assert pacer.expected_wait() == 0
    pacer.block(10)
    pacer.block(2)  # a shorter block does not shorten the longer one
    assert pacer.expected_wait() == 10


async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    clock, _, pacer = paced()
    await pacer.turn()
    waiting = asyncio.ensure_future(pacer.turn())
    await asyncio.sleep(0)
    assert pacer.queued == 1 and clock.next_wake == pytest.approx(clock() + 1)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert pacer.queued == 0 and clock.next_wake is None
    clock.now += 1
    await pacer.turn()  # not held up by the place given up


def test_pacers_are_shared_by_key() -> None:
    clock = FakeClock()
    pacers = Pacers(clock, clock.sleep)
    assert pacers.get(("t", "#a"), 1) is pacers.get(("t", "#a"), 5)
    assert pacers.get(("t", "#b"), 1) is not pacers.get(("t", "#a"), 1)
    assert len(list(pacers)) == 2
