"""The simulator's own activity: the changes a partner sees on Leap, made at a steady rate.

How this works: `Portfolio.partner_churn(n)` makes, in turn, the three changes that matter to a
partner — it opens a new partner action, moves the deadline of an open one, and resolves an open
one — so every kind shows within any three changes. It picks the meters that have partner actions
for changes and resolutions (a random meter almost never has one). The deadlines it sets lie days
to weeks ahead, at midnight UTC, like Leap's enrollment deadlines. `run_churn` calls it about
`rate` times a second until stopped: `alerter sim --churn RATE` and `alerter demo` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from alerter.sim import catalog as c
from alerter.sim.columns import Columns

DAY_US = 86_400_000_000
KINDS = ("opened", "changed", "resolved")
"""The order `partner_churn` makes its changes in."""


@dataclass(frozen=True)
class Change:
    """One mutation `random_churn` made (or any mutation, for the demo's log)."""

    kind: str  # opened | changed | resolved | archived | touched
    meter_id: str
    action_type: str = ""
    action_code: str = ""


class Churnable(Protocol):
    """What churn needs of `alerter.sim.portfolio.Portfolio`."""

    @property
    def columns(self) -> Columns: ...

    @property
    def size(self) -> int: ...

    def partner_churn(self, n: int) -> list[Change]: ...


def future_deadline(now_us: int, rng: random.Random, low: int = 3, high: int = 42) -> str:
    """Midnight UTC `low` to `high` days after now, in Leap's deadline style."""
    return c.fmt_ms((now_us // DAY_US + rng.randint(low, high)) * DAY_US)


def moved_deadline(old: str | None, now_us: int, rng: random.Random) -> str:
    """A deadline a week earlier or one or two weeks later, never within two days of now (then
    a fresh one a week to four weeks ahead); always different from `old`."""
    old_us = c.parse_rfc3339_us(old) if old else None
    if old_us is not None:
        new_us = old_us + rng.choice((-7, 7, 14)) * DAY_US
        if new_us > now_us + 2 * DAY_US:
            return c.fmt_ms(new_us)
    new = future_deadline(now_us, rng, 7, 28)
    return new if new != old else c.fmt_ms((c.parse_rfc3339_us(new) or now_us) + DAY_US)


def meter_with_actions(portfolio: Churnable, rng: random.Random) -> int | None:
    """A random meter that lists partner actions and is not archived, or None if there is none."""
    cols = portfolio.columns
    has, archived = cols.has_partner, cols.archived
    if not portfolio.size:
        return None
    start = rng.randrange(portfolio.size)
    for lo, hi in ((start, portfolio.size), (0, start)):
        i = has.find(1, lo, hi)
        while i >= 0 and archived[i]:
            i = has.find(1, i + 1, hi)
        if i >= 0:
            return i
    return None


async def run_churn(
    portfolio: Churnable,
    rate: float,
    stop: asyncio.Event,
    on_changes: Callable[[list[Change]], None] | None = None,
) -> None:
    """About `rate` partner changes a second (`partner_churn`) until `stop` is set; 0 makes none."""
    if rate <= 0:
        return
    loop = asyncio.get_running_loop()
    tick = min(1.0, 1.0 / rate)
    due, last = 0.0, loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        now = loop.time()
        due += rate * (now - last)
        last = now
        n = int(due)
        due -= n
        if n and not stop.is_set():
            changes = portfolio.partner_churn(n)
            if on_changes is not None:
                on_changes(changes)
