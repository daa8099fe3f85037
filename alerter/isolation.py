"""Per-meter fault isolation for the poller: a meter the store or the diff cannot take is set
apart with its error, and the other meters of its page and cycle go on.

How this works: a step over many meters (reading their stored obligations, committing their
changes) that failed is tried again on each half of its meters, and so on down to single
meters; a meter that still fails alone is returned with its error, for the caller to skip,
count and name. k bad meters among n cost about 2·k·log2(n) extra attempts, and nothing is
tried twice when nothing fails. The store itself may be down rather than one meter's data bad:
when a meter fails alone before any attempt succeeded, `probe` (an empty write) asks the store,
and its error, if it fails too, is raised as the step's would have been. A lost lease
(FencedError) is always raised. The diff is pure: one that fails for a group is run meter by
meter, and the meters whose diff still fails are set apart the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from alerter.diff import DiffResult, diff_records
from alerter.errors import FencedError
from alerter.models import Event, FirstLook, Obligation, ObligationKey, Record
from alerter.store.base import ObligationStore

Faults = dict[str, Exception]
"""meter_id -> the error its processing raised when tried alone."""


async def isolate(
    meters: Sequence[str],
    attempt: Callable[[list[str]], Awaitable[object]],
    probe: Callable[[], Awaitable[object]],
) -> Faults:
    """Runs `attempt` over halves of `meters` (whose whole already failed), down to single
    meters; returns those that fail alone. Raises the probe's error when the store is down."""
    failed: Faults = {}
    succeeded = False
    parts = deque(_halves(list(dict.fromkeys(meters))))
    while parts:
        part = parts.popleft()
        try:
            await attempt(part)
        except FencedError:
            raise
        except Exception as err:
            if len(part) > 1:
                parts.extendleft(reversed(_halves(part)))
                continue
            if not succeeded and not failed:
                await probe()  # raises when the store, not this meter, is at fault
            failed[part[0]] = err
        else:
            succeeded = True
    return failed


def _halves(items: list[str]) -> list[list[str]]:
    if len(items) <= 1:
        return [items]
    middle = len(items) // 2
    return [items[:middle], items[middle:]]


async def load_apart(
    store: ObligationStore, meter_ids: Sequence[str], probe: Callable[[], Awaitable[object]]
) -> tuple[dict[ObligationKey, Obligation], Faults]:
    """The stored obligations of these meters, but for the meters whose rows cannot be read."""
    try:
        return await store.load_obligations(meter_ids), {}
    except FencedError:
        raise
    except Exception:
        pass
    prior: dict[ObligationKey, Obligation] = {}

    async def attempt(part: list[str]) -> None:
        prior.update(await store.load_obligations(part))

    failed = await isolate(meter_ids, attempt, probe)
    return prior, failed


async def commit_apart(
    store: ObligationStore,
    obligations: Sequence[Obligation],
    events: Sequence[Event],
    probe: Callable[[], Awaitable[object]],
    look: FirstLook | None = None,
) -> Faults:
    """Commits obligation changes and events in one transaction; when that fails, commits
    them meter by meter (halving) and returns the meters the store would not take."""
    try:
        await store.commit_page(obligations, events, look=look)
        return {}
    except FencedError:
        raise
    except Exception:
        pass
    meters = [o.meter_id for o in obligations] + [e.obligation.meter_id for e in events]

    async def attempt(part: list[str]) -> None:
        chosen = set(part)
        await store.commit_page(
            [o for o in obligations if o.meter_id in chosen],
            [e for e in events if e.obligation.meter_id in chosen],  # in their order
            look=look,
        )

    return await isolate(meters, attempt, probe)


def diff_apart(
    records: Sequence[Record],
    prior: Mapping[ObligationKey, Obligation],
    now: datetime,
    initial: bool,
    with_events: bool = True,
) -> tuple[DiffResult, Faults]:
    """`diff_records` of a group; when it fails, record by record, setting apart those that fail."""
    try:
        return diff_records(records, prior, now, initial=initial, with_events=with_events), {}
    except Exception:
        pass
    by_meter: dict[str, dict[ObligationKey, Obligation]] = {}
    for key, ob in prior.items():
        by_meter.setdefault(ob.meter_id, {})[key] = ob
    result = DiffResult()
    failed: Faults = {}
    for record in records:
        try:
            one = diff_records(
                [record], by_meter.get(record.meter_id, {}), now, initial=initial, with_events=with_events
            )
        except Exception as err:
            failed[record.meter_id] = err
            continue
        result.obligations.extend(one.obligations)
        result.events.extend(one.events)
    return result, failed
