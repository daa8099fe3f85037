"""Per-meter isolation, table by table: halving finds the meters that fail alone, a store that is
down is not mistaken for bad meters, a lost lease is never swallowed, a failing diff is retried
meter by meter."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from msgspec.structs import replace

from alerter.errors import FencedError, StoreError
from alerter.isolation import diff_apart, isolate
from tests.test_diff import T0, action, record, state

METERS = [f"m{i}" for i in range(16)]


class Attempts:
    """An attempt that fails whenever its part holds a `bad` meter; `down` fails every one."""

    def __init__(self, bad: set[str], down: bool = False) -> None:
        self.bad = bad
        self.down = down
        self.parts: list[list[str]] = []
        self.probes = 0

    async def attempt(self, part: list[str]) -> None:
        self.parts.append(part)
        if self.down or self.bad.intersection(part):
            raise StoreError(f"refused {sorted(self.bad.intersection(part))}")

    async def probe(self) -> None:
        self.probes += 1
        if self.down:
            raise StoreError("the store is down")


@pytest.mark.parametrize("bad", [{"m0"}, {"m15"}, {"m3", "m4"}, {"m1", "m9", "m14"}, set(METERS)])
async def test_halving_sets_apart_exactly_the_meters_that_fail_alone(bad: set[str]) -> None:
    tries = Attempts(bad)
    failed = await isolate(METERS, tries.attempt, tries.probe)
    assert set(failed) == bad
    assert all(isinstance(err, StoreError) for err in failed.values())
    committed = [m for part in tries.parts for m in part if not bad.intersection(part)]
    assert sorted(committed) == sorted(set(METERS) - bad)  # every other meter exactly once
    assert len(tries.parts) <= 2 * len(bad) * 4 + 2  # about 2·k·log2(n)


async def test_a_store_that_is_down_is_not_taken_for_bad_meters() -> None:
    tries = Attempts(set(), down=True)
    with pytest.raises(StoreError, match="down"):
        await isolate(METERS, tries.attempt, tries.probe)
    assert tries.probes == 1 and [len(p) for p in tries.parts] == [8, 4, 2, 1]  # down to one meter, then asked


async def test_the_probe_is_asked_only_while_nothing_succeeded() -> None:
    tries = Attempts({"m0", "m15"})
    await isolate(METERS, tries.attempt, tries.probe)
    assert tries.probes == 1  # m0 fails first; m15 fails after others succeeded


async def test_a_lone_meter_whose_step_failed_is_tried_again_before_being_set_apart() -> None:
    """The caller's step over one meter failed (a hiccup): isolation tries it once more."""
    calls: list[list[str]] = []

    async def attempt(part: list[str]) -> None:
        calls.append(part)

    async def probe() -> None:
        raise AssertionError("not asked: nothing failed alone")

    assert await isolate(["m1"], attempt, probe) == {}
    assert calls == [["m1"]]


async def test_a_lost_lease_is_raised_at_once() -> None:
    async def attempt(part: list[str]) -> None:
        raise FencedError("deposed")

    async def probe() -> None:
        raise AssertionError("not asked")

    with pytest.raises(FencedError):
        await isolate(METERS, attempt, probe)


def test_a_diff_that_fails_for_one_meter_is_run_meter_by_meter() -> None:
    ok, bad = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    prior = state(record(action(), meter_id=ok), record(action(), meter_id=bad))
    # a stored `last_seen` without an offset (as a hand-edited row might give) breaks that meter's diff
    prior = {
        key: replace(ob, last_seen=datetime(2026, 11, 1)) if ob.meter_id == bad else ob for key, ob in prior.items()
    }
    records = [
        record(action(action_description="Sign again"), meter_id=ok),
        record(action(), meter_id=bad),
    ]
    result, failed = diff_apart(records, prior, T0 + timedelta(hours=2), False)
    assert list(failed) == [bad] and isinstance(failed[bad], TypeError)
    assert [(e.kind, e.obligation.meter_id) for e in result.events] == [("changed", ok)]


def test_a_diff_that_succeeds_is_returned_as_is() -> None:
    result, failed = diff_apart([record(action())], {}, T0, True)
    assert failed == {} and [(e.kind, e.initial) for e in result.events] == [("opened", True)]
