"""read_ahead: pages arrive in order, a source error after some pages reaches the caller after
them, and a caller that stops early closes the source. The poller's batched commits: a meter on
two pages of one batch, a full batch, a failed read, and which meters a sweep reads state for."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from alerter import isolation, poller
from alerter.config import PollConfig
from alerter.errors import SourceError
from alerter.models import Record
from alerter.poller import Poller
from alerter.readahead import read_ahead, read_ahead_groups
from alerter.store.base import META_LAST_CYCLE, META_WATERMARK
from alerter.store.sqlite import SqliteStore
from tests.test_diff import T0, action, record


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


async def test_groups_hold_at_least_the_asked_pages_but_the_last() -> None:
    groups = [g async for g in read_ahead_groups(pages(10), depth=4, least=4)]
    assert [p for g in groups for p in g] == list(range(10))
    assert all(len(g) >= 4 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 10


async def test_a_group_error_arrives_after_the_pages_before_it() -> None:
    got: list[int] = []
    with pytest.raises(SourceError, match="page 5"):
        async for g in read_ahead_groups(pages(10, fail_at=5), depth=4, least=4):
            got.extend(g)
    assert got == [0, 1, 2, 3, 4]


async def test_stopping_early_closes_the_source() -> None:
    log: list[str] = []
    reader = read_ahead(pages(100, log=log))
    async for p in reader:
        if p == 2:
            break
    await reader.aclose()
    assert log == ["closed"]


# -- the poller's batched commits, on a real SQLite store, with pages given directly --


@dataclass
class FakePage:
    records: list[Record]
    invalid: int = 0
    max_updated_at: datetime | None = None
    invalid_ids: list[str] = field(default_factory=list)

    @property
    def meter_ids(self) -> list[str]:
        return [r.meter_id for r in self.records]

    @property
    def acting(self) -> list[Record]:
        return [r for r in self.records if r.partner_actions]


class ListSource:
    """Serves fixed pages to the sweep; `fail_after` pages, then a SourceError. With `gate`,
    page i is served only once the poller has diffed i groups (the page before), so each page
    is diffed on its own."""

    def __init__(
        self, pages: list[list[Record]], fail_after: int | None = None, gate: CountingStore | None = None
    ) -> None:
        self.pages = pages
        self.fail_after = fail_after
        self.gate = gate

    async def _serve(self) -> AsyncIterator[FakePage]:
        for i, records in enumerate(self.pages):
            while self.gate is not None and self.gate.diffed < i:
                self.gate.progress.clear()
                await self.gate.progress.wait()
            if i == self.fail_after:
                raise SourceError(f"page {i} failed")
            yield FakePage(records)

    def search(self, filters: dict[str, object]) -> AsyncIterator[FakePage]:
        return self._serve()

    def search_meters(
        self, meter_ids: Sequence[str], last_modified: datetime | None = None, filters: Mapping[str, Any] | None = None
    ) -> AsyncIterator[FakePage]:
        return ListSource([]).search({})


class CountingStore(SqliteStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.commits: list[int] = []
        self.loaded: list[list[str]] = []
        self.diffed = 0
        """Groups the poller diffed against this store (counted by the `store` fixture)."""
        self.progress = asyncio.Event()

    async def commit_page(self, obligations: Any, events: Any, meta: Any = None, look: Any = None) -> int:
        self.commits.append(len(events))
        return await super().commit_page(obligations, events, meta, look)

    async def load_obligations(self, meter_ids: Sequence[str]) -> Any:
        self.loaded.append(list(meter_ids))
        return await super().load_obligations(meter_ids)


@pytest.fixture
async def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CountingStore]:
    s = CountingStore(f"sqlite:///{tmp_path / 'state.db'}")
    diff = isolation.diff_apart

    def counted(*args: Any, **kwargs: Any) -> Any:
        s.diffed += 1
        s.progress.set()
        return diff(*args, **kwargs)

    monkeypatch.setattr(poller, "diff_apart", counted)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _meter(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


async def _kinds(store: SqliteStore, meter_id: str) -> list[tuple[str, int]]:
    return [(h.event.kind, h.event.obligation.version) for h in await store.history(meter_id)]


async def test_a_meter_on_two_pages_of_one_batch_diffs_against_the_uncommitted_first(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    m = _meter(1)
    first = record(action(action_description="Sign the form."), meter_id=m)
    second = record(action(action_description="Sign the new form."), meter_id=m)
    await Poller(store, ListSource([[first], [second]], gate=store), PollConfig()).run_cycle(T0)
    assert store.diffed == 2  # diffed apart
    assert store.loaded == [[m]]  # a fresh state: only what the sync wrote is read back
    assert store.commits == [2]  # committed together
    assert await _kinds(store, m) == [("opened", 1), ("changed", 2)]
    (ob,) = (await store.load_obligations([m])).values()
    assert (ob.action_description, ob.version) == ("Sign the new form.", 2)


async def test_a_meter_twice_in_one_group_is_diffed_as_its_later_copy(store: CountingStore) -> None:
    m = _meter(1)
    first = record(action(action_description="Sign the form."), meter_id=m)
    second = record(action(action_description="Sign the new form."), meter_id=m)
    report = await Poller(store, ListSource([[first], [record(meter_id=_meter(2))], [second]]), PollConfig()).run_cycle(
        T0
    )
    assert (report.pages, report.records, store.diffed) == (3, 3, 1)  # one group of three pages
    assert await _kinds(store, m) == [("opened", 1)]
    (ob,) = (await store.load_obligations([m])).values()
    assert ob.action_description == "Sign the new form."


@pytest.mark.parametrize(("copies", "opened"), [((True, False), 0), ((False, True), 1)])
async def test_a_meter_twice_in_one_page_of_a_sweep_is_its_later_copy(
    store: CountingStore, copies: tuple[bool, bool], opened: int
) -> None:
    m = _meter(1)
    page = [record(*((action(),) if acts else ()), meter_id=m) for acts in copies]
    report = await Poller(store, ListSource([[*page, record(meter_id=_meter(2))]]), PollConfig()).run_cycle(T0)
    assert (report.records, report.events.get("opened", 0)) == (3, opened)
    assert await store.open_meter_ids() == ([m] if opened else [])


async def test_a_meter_listed_again_later_in_a_sweep_without_actions_is_resolved_in_it(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its actions cleared while the sweep paged: the later copy, in another group, is diffed
    too, whether its obligations were open before the sweep or opened by the sweep itself."""
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    before, during = _meter(1), _meter(2)
    await Poller(store, ListSource([[record(action(), meter_id=before)]]), PollConfig()).run_cycle(T0)
    pages = [
        [record(action(), meter_id=before), record(action(), meter_id=during)],
        [record(meter_id=_meter(3))],
        [record(meter_id=before), record(meter_id=during)],
    ]
    report = await Poller(store, ListSource(pages, gate=store), PollConfig()).run_cycle(T0, force_reconcile=True)
    assert report.events == {"opened": 1, "resolved": 2}
    assert await _kinds(store, during) == [("opened", 1), ("resolved", 2)]
    assert [k for k, _ in await _kinds(store, before)] == ["opened", "resolved"]
    assert await store.open_meter_ids() == []


async def test_a_cycle_cancelled_while_a_batch_commits_leaves_it_to_itself_and_loses_nothing(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    monkeypatch.setattr(poller, "BATCH_ROWS", 2)  # each page's obligation and event commit apart
    pages = [[record(action(), meter_id=_meter(i))] for i in range(4)]
    started, gate = asyncio.Event(), asyncio.Event()
    commit = store.commit_page

    async def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await gate.wait()
        return await commit(*args, **kwargs)

    class Stalling(ListSource):
        async def _serve(self) -> AsyncIterator[FakePage]:
            yield FakePage(pages[0])
            await asyncio.Event().wait()  # Leap never answers the next page
            yield FakePage(pages[1])

    monkeypatch.setattr(store, "commit_page", held)
    cycle = asyncio.create_task(Poller(store, Stalling(pages), PollConfig()).run_cycle(T0))
    await started.wait()  # the first batch is committing while the sweep waits for a page
    cycle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cycle
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert store.commits == []  # the batch left to itself did not commit after the cycle ended
    monkeypatch.setattr(store, "commit_page", commit)
    await Poller(store, ListSource(pages), PollConfig()).run_cycle(T0)  # read again, whole
    assert await store.open_meter_ids() == [_meter(i) for i in range(4)]
    assert [await _kinds(store, _meter(i)) for i in range(4)] == [[("opened", 1)]] * 4


async def test_a_full_batch_commits_before_the_sweep_ends(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    monkeypatch.setattr(poller, "BATCH_ROWS", 4)  # two opened obligations and their events
    pages = [[record(action(), meter_id=_meter(i))] for i in range(5)]
    await Poller(store, ListSource(pages, gate=store), PollConfig()).run_cycle(T0)
    assert store.commits == [2, 2, 1]
    assert len(await store.open_meter_ids()) == 5


async def test_a_failed_read_keeps_what_the_pages_before_it_found(store: CountingStore) -> None:
    pages = [[record(action(), meter_id=_meter(i))] for i in range(4)]
    with pytest.raises(SourceError, match="page 2"):
        await Poller(store, ListSource(pages, fail_after=2), PollConfig()).run_cycle(T0)
    assert store.commits == [2]
    assert await store.open_meter_ids() == [_meter(0), _meter(1)]
    assert await store.get_meta(META_WATERMARK) is None  # the watermark did not move


async def test_an_initial_sync_of_a_fresh_state_reads_back_only_meters_it_wrote(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    monkeypatch.setattr(poller, "BATCH_ROWS", 2)  # each page's obligation and event commit apart
    m = _meter(1)
    pages = [
        [record(action(), meter_id=m)],
        [record(action(), meter_id=_meter(2))],
        [record(action(action_description="Sign the new form."), meter_id=m)],  # listed again
    ]
    await Poller(store, ListSource(pages, gate=store), PollConfig()).run_cycle(T0)
    assert store.loaded == [[m]]
    assert store.commits == [1, 1, 1]
    assert await _kinds(store, m) == [("opened", 1), ("changed", 2)]
    store.loaded.clear()
    await Poller(store, ListSource([[record(action(), meter_id=_meter(3))]]), PollConfig()).run_cycle(
        T0, force_reconcile=True
    )
    assert store.loaded[0] == [_meter(3)]  # the state holds obligations: a listed meter is read


async def test_a_sweep_reads_state_only_for_meters_that_can_change(store: CountingStore) -> None:
    await Poller(store, ListSource([[record(action(), meter_id=_meter(1))]]), PollConfig()).run_cycle(T0)
    store.loaded.clear()
    quiet = [record(meter_id=_meter(i)) for i in range(2, 6)]
    page = [record(meter_id=_meter(1)), *quiet, record(action(), meter_id=_meter(9))]
    report = await Poller(store, ListSource([page]), PollConfig()).run_cycle(T0, force_reconcile=True)
    # meter 1 had an open obligation, meter 9 lists an action; the four quiet meters are not read
    assert store.loaded == [[_meter(1), _meter(9)]]
    assert report.events == {"resolved": 1, "opened": 1}


async def test_changes_wait_at_most_batch_seconds_for_quiet_pages_after_them(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller, "GROUP_PAGES", 1)
    monkeypatch.setattr(poller, "BATCH_SECONDS", 0.05)
    committed_when_served: list[int] = []

    class Slow(ListSource):
        """Serves a page 0.1 s after the one before, noting how many commits preceded it."""

        async def _serve(self) -> AsyncIterator[FakePage]:
            async for page in super()._serve():
                committed_when_served.append(len(store.commits))
                yield page
                await asyncio.sleep(0.1)

    # a change, then pages that change nothing: the change is committed while the sweep goes on
    pages = [[record(action(), meter_id=_meter(1))], [record(meter_id=_meter(2))], [record(meter_id=_meter(3))]]
    await Poller(store, Slow(pages), PollConfig()).run_cycle(T0)
    assert committed_when_served == [0, 0, 1]
    assert store.commits == [1]


async def test_a_meter_whose_stored_state_cannot_be_read_is_set_apart(store: CountingStore, tmp_path: Path) -> None:
    meters = [_meter(i) for i in range(1, 6)]
    await Poller(store, ListSource([[record(action(), meter_id=m) for m in meters]]), PollConfig()).run_cycle(T0)
    bad = meters[2]
    with sqlite3.connect(tmp_path / "state.db") as conn:  # a row no model reads (edited by hand, say)
        conn.execute("UPDATE obligations SET meter = '{}' WHERE meter_id = ?", (bad,))
    changed = [record(action(action_description="Sign the new form."), meter_id=m) for m in meters]
    with capture_logs() as logs:
        report = await Poller(store, ListSource([changed]), PollConfig()).run_cycle(
            T0 + timedelta(hours=2), force_reconcile=True
        )
    assert (report.failed, report.skipped_meters, report.incomplete) == (1, [bad], False)
    assert report.events == {"changed": 4}  # the others' changes, committed; nothing resolved
    (entry,) = [e for e in logs if e["event"] == "meter_failed"]
    assert (entry["meter_id"], entry["stage"]) == (bad, "load") and "ValidationError" in entry["error"]
    assert await store.get_meta(META_LAST_CYCLE) is not None  # the cycle completed


def test_the_written_filter_knows_every_meter_added_and_few_others() -> None:
    written = poller.Written()
    added = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(245_000)]
    for meter_id in added:
        written.add(meter_id)
    assert all(map(written.might, added))
    others = sum(map(written.might, (f"{n:08d}-1111-4000-8000-000000000000" for n in range(100_000))))
    assert others <= 20  # ~2 expected: a group of 2,000 meters seldom reads stored state for nothing
