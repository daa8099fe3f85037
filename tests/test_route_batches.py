"""Routing a backlog batch by batch, each batch's write committing while the next one is decoded
and planned: the same groups, members, "told" rows and consumed events as routing it in one
batch, on both backends; a write that fails stops the batches after it. The same for an
initial sync's digest, whose batches are decoded and added while the one before is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from msgspec.structs import replace

from alerter import cycle
from alerter.errors import StoreError
from alerter.metrics import Metrics
from alerter.models import Event, RoutingWrite
from alerter.routes import Router
from alerter.rulefile import RuleSet, compile_rules
from alerter.store.base import META_INITIALIZED, Store
from alerter.yamlload import parse_yaml
from tests.support.stores import BACKENDS, T0, event, obligation, store_for

RULES = """\
receivers:
  - {name: ops, webhook: {url: "http://127.0.0.1:9/ops"}}
  - {name: crm, webhook: {url: "http://127.0.0.1:9/crm"}}
rules:
  - {name: by-type, group_by: [action_type], group_wait: 5m, send_resolved: true, receivers: [ops], continue: true}
  - {name: by-meter, group_by: [meter_id], group_wait: 5m, send_resolved: true, receivers: [crm]}
"""
NOW = T0 + timedelta(hours=1)


def ruleset() -> RuleSet:
    return compile_rules([parse_yaml(RULES, "rules.yaml", env={})])


def backlog() -> list[Event]:
    """Openings, then the resolution of the first one right behind them: with batches of two,
    the resolution is planned while the write that queued its opening has not committed."""
    opened = [obligation(f"m{i}") for i in range(5)]
    evs = [event(o) for o in opened]
    first = opened[0]
    resolved = replace(first, status="resolved", resolution="cleared", resolved_at=T0, version=2)
    evs.insert(3, event(resolved, "resolved", at=T0 + timedelta(minutes=1)))
    evs.append(event(obligation("m9", code="AUTH_2"), initial=True))  # an initial sync's straggler
    return evs


def steps(store: Store) -> cycle.Steps:
    return cycle.Steps(store, Metrics(), structlog.get_logger("test"), lambda _: None)


async def routed(store: Store, evs: list[Event], initial_sync: str = "notify") -> dict[str, Any]:
    """What routing `evs` leaves in the store."""
    await store.commit_page((), evs)
    rs = ruleset()
    await cycle.route(steps(store), Router(rs), rs, initial_sync, NOW)
    groups = await store.load_groups()
    return {
        "groups": [(g.key, g.receiver, g.flush_at, g.pending) for g in groups],
        "told": await store.notified_receivers(sorted({e.obligation.key_id for e in evs})),
        "pending": await store.pending_events(100),
    }


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("initial_sync", ["notify", "silent"])
async def test_batch_by_batch_routes_as_one_batch(
    backend: str, initial_sync: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evs = backlog()
    (tmp_path / "whole").mkdir()
    (tmp_path / "batches").mkdir()
    async with store_for(backend, tmp_path / "whole") as store:
        whole = await routed(store, evs, initial_sync)
    monkeypatch.setattr(cycle, "ROUTE_BATCH", 2)
    async with store_for(backend, tmp_path / "batches") as store:
        batches = await routed(store, evs, initial_sync)
    assert batches == whole
    assert whole["pending"] == []
    by_meter = {key: pending for key, receiver, _, pending in whole["groups"] if receiver == "crm"}
    resolution = evs[3]
    # the resolution follows its opening to both receivers, though it was planned beside the
    # write that queued the opening
    assert [p for p in by_meter.values() if resolution.id in p] == [(evs[0].id, resolution.id)]
    [(_, _, _, by_type)] = [g for g in whole["groups"] if g[1] == "ops"]
    routed_ids = [e.id for e in evs] if initial_sync == "notify" else [e.id for e in evs[:-1]]
    assert by_type == tuple(routed_ids)  # in arrival order; a silent sync's straggler is consumed, not routed


class FailingSecondWrite:
    """A store whose second routing write fails (as a deposed leader's fenced one would)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def commit_routing(self, write: RoutingWrite) -> None:
        self.writes += 1
        if self.writes == 2:
            raise StoreError("fenced")
        await self.store.commit_routing(write)


async def test_a_failed_write_stops_the_batches_after_it(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cycle, "ROUTE_BATCH", 2)
    evs = [event(obligation(f"m{i}")) for i in range(7)]
    async with store_for(backend, tmp_path) as store:
        await store.commit_page((), evs)
        failing = FailingSecondWrite(store)
        rs = ruleset()
        with pytest.raises(StoreError, match="fenced"):
            await cycle.route(steps(failing), Router(rs), rs, "notify", NOW)
        assert failing.writes == 2  # the third batch was read and planned, never written
        assert [e.id for e in await store.pending_events(100)] == [e.id for e in evs[2:]]
        [group] = [g for g in await store.load_groups() if g.receiver == "ops"]
        assert group.pending == tuple(e.id for e in evs[:2])
        await cycle.route(steps(store), Router(rs), rs, "notify", NOW)  # the next step takes them up
        assert await store.pending_events(100) == []
        [group] = [g for g in await store.load_groups() if g.receiver == "ops"]
        assert group.pending == tuple(e.id for e in evs)


DIGEST_RULES = """\
receivers:
  - {name: ops, webhook: {url: "http://127.0.0.1:9/ops", max_events: 3}}
  - {name: crm, webhook: {url: "http://127.0.0.1:9/crm"}}
rules:
  - {name: by-type, group_by: [action_type], receivers: [ops], continue: true}
  - {name: by-meter, group_by: [meter_id], receivers: [crm]}
"""


def initial_backlog() -> list[Event]:
    """An initial sync's backlog, deadlines out of arrival order (a digest lists the nearest first)."""
    return [event(obligation(f"m{i}", deadline=T0 + timedelta(days=(i * 5) % 7)), initial=True) for i in range(9)]


async def digested(store: Store, evs: list[Event]) -> dict[str, Any]:
    """What digesting `evs` (routing them with `initial_sync: digest`) leaves in the store."""
    rs = compile_rules([parse_yaml(DIGEST_RULES, "rules.yaml", env={})])
    await cycle.route(steps(store), Router(rs), rs, "digest", NOW)
    notes = [d.notification for d in await store.claim_deliveries(NOW, "w", 100, 30)]
    return {
        "notifications": sorted((n.id, n.receiver, n.part, tuple(e.id for e in n.events)) for n in notes),
        "told": await store.notified_receivers(sorted({e.obligation.key_id for e in evs})),
        "pending": await store.pending_events(100),
    }


@asynccontextmanager
async def with_backlog(backend: str, directory: Path, evs: list[Event]) -> AsyncIterator[Store]:
    """A store of its own in `directory` (made by the test) holding the backlog `evs` and their obligations."""
    async with store_for(backend, directory) as store:
        await store.commit_page([e.obligation for e in evs], evs)
        await store.set_meta({META_INITIALIZED: "1"})  # as the first sweep, complete, leaves it
        yield store


async def digested_whole(backend: str, tmp_path: Path, evs: list[Event]) -> dict[str, Any]:
    """What a digest of `evs` in one batch leaves, in a store of its own in `tmp_path / "whole"`."""
    async with with_backlog(backend, tmp_path / "whole", evs) as store:
        return await digested(store, evs)


async def test_a_digest_batch_by_batch_is_the_digest_of_one_batch(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evs = initial_backlog()
    for name in ("whole", "batches"):
        (tmp_path / name).mkdir()
    whole = await digested_whole(backend, tmp_path, evs)
    monkeypatch.setattr(cycle, "DIGEST_BATCH", 2)
    async with with_backlog(backend, tmp_path / "batches", evs) as store:
        batches = await digested(store, evs)
    assert batches == whole
    assert whole["pending"] == []
    assert whole["told"] == {e.obligation.key_id: {"ops", "crm"} for e in evs}
    ops = [(part, ids) for _, receiver, part, ids in whole["notifications"] if receiver == "ops"]
    assert [part for part, _ in sorted(ops)] == [(1, 3), (2, 3), (3, 3)]  # 9 events, 3 a part
    by_urgency = sorted(evs, key=lambda e: (e.obligation.deadline, e.obligation.meter_id))
    assert [i for _, ids in sorted(ops) for i in ids] == [e.id for e in by_urgency]


async def test_a_failed_digest_write_stops_the_batches_after_it_and_the_next_run_writes_the_same(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evs = initial_backlog()
    for name in ("whole", "failed"):
        (tmp_path / name).mkdir()
    whole = await digested_whole(backend, tmp_path, evs)
    monkeypatch.setattr(cycle, "DIGEST_BATCH", 2)
    async with with_backlog(backend, tmp_path / "failed", evs) as store:
        failing = FailingSecondWrite(store)
        with pytest.raises(StoreError, match="fenced"):
            await digested(failing, evs)
        assert failing.writes == 2  # the third batch was read and added, never written
        assert len(await store.pending_events(100)) == len(evs)  # nothing consumed
        assert await digested(store, evs) == whole  # the next run: the same parts, then consumed
