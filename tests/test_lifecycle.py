"""Lifecycle scenarios on both stores: the simulator changes, a cycle runs, the webhook receives.

Each test reads as a timeline: at t0 the API shows A, a cycle runs, the collector holds X.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from alerter.errors import SourceError
from alerter.models import Silence
from alerter.service import Service
from alerter.sim import Portfolio, SimServer
from alerter.store.base import META_WATERMARK
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.service import (
    API_KEY,
    WEBHOOK_SECRET,
    config_yaml,
    load,
    resolve_quietly,
    rules_yaml,
    running,
    state_url,
    write_config,
)

BACKENDS = ["sqlite", "postgres"]


@dataclass
class World:
    portfolio: Portfolio
    sim: SimServer
    hook: WebhookCollector
    service: Service

    @property
    def meters(self) -> list[str]:
        """Meters that are not archived."""
        p = self.portfolio
        return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]

    async def cycle(self, now: datetime | None = None, **kw: Any) -> list[dict[str, Any]]:
        """One cycle, everything it produced delivered; returns the webhook events received.
        With `now`, the service's clock runs from that moment (reminders, due deliveries)."""
        if now is not None:
            offset = now - datetime.now(UTC)
            self.service.clock = lambda: datetime.now(UTC) + offset
            kw["now"] = now
        before = len(self.hook.delivered())
        await self.service.run_cycle(flush_all=True, **kw)
        stats = await self.service.drain(10)
        assert stats.undelivered == 0
        bodies = [r.body for r in self.hook.delivered()[before:]]
        assert all(r.verified for r in self.hook.delivered())
        return bodies


def events_of(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((e["type"], e["action"]["action_code"]) for b in bodies for e in b["data"]["events"])


@asynccontextmanager
async def world(
    tmp_path: Path,
    backend: str,
    *,
    meters: int = 20,
    action_rate: float = 0.0,
    remind: str = "{}",
    group_wait: str = "0s",
    **cfg: str,
) -> AsyncIterator[World]:
    portfolio = Portfolio(meters, action_rate=action_rate, seed=3)
    async with (
        SimServer(portfolio, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url(backend, tmp_path) as url,
    ):
        path = write_config(
            tmp_path, config_yaml(sim.url, url, **cfg), rules_yaml(hook.url(), remind=remind, group_wait=group_wait)
        )
        async with running(load(path)) as service:
            yield World(portfolio, sim, hook, service)


@pytest.mark.parametrize(
    ("backend", "check"), [("sqlite", "meter_ids"), ("postgres", "meter_ids"), ("sqlite", "unfiltered")]
)
async def test_opened_changed_noop_resolved(tmp_path: Path, backend: str, check: str) -> None:
    async with world(tmp_path, backend, resolution_check=check) as w:
        assert await w.cycle() == []  # t0: nothing needs action
        m = w.meters[0]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert events_of(await w.cycle()) == [("action.opened", "AUTH_0001")]

        w.portfolio.change_action(m, "AUTH_0001", description="Customer must sign again")
        bodies = await w.cycle()
        assert events_of(bodies) == [("action.changed", "AUTH_0001")]
        assert bodies[0]["data"]["events"][0]["action"]["action_description"] == "Customer must sign again"

        w.portfolio.touch(m)  # modified, same actions
        assert await w.cycle() == []

        w.portfolio.resolve_action(m, "AUTH_0001")
        assert events_of(await w.cycle()) == [("action.resolved", "AUTH_0001")]
        assert await w.cycle() == []  # and only once
        assert list(await w.service.store.group_heads()) == []  # idle groups are cleaned up


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_action_resolved_before_its_group_flushed_is_told_resolved(tmp_path: Path, backend: str) -> None:
    async with world(tmp_path, backend, group_wait="5m") as w:
        assert await w.cycle() == []
        m = w.meters[0]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        await w.service.run_cycle()  # routed into its group, which waits for group_wait
        assert w.hook.delivered() == []
        w.portfolio.resolve_action(m, "AUTH_0001")
        bodies = await w.cycle()  # resolved before the group flushed
        assert sorted(events_of(bodies)) == [("action.opened", "AUTH_0001"), ("action.resolved", "AUTH_0001")]
        assert await w.cycle() == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_archived_meter_resolves(tmp_path: Path, backend: str) -> None:
    async with world(tmp_path, backend) as w:
        m = w.meters[1]
        w.portfolio.open_action(m, action_type="DOCUMENTS_SIGNED")
        await w.cycle()
        w.portfolio.archive(m)
        bodies = await w.cycle()
        assert [e["type"] for b in bodies for e in b["data"]["events"]] == ["action.resolved"]
        history = await w.service.store.history(m)
        assert [h.event.obligation.resolution for h in history if h.event.kind == "resolved"] == ["archived"]


@pytest.mark.parametrize("mode", ["digest", "notify", "silent"])
async def test_initial_sync_modes(tmp_path: Path, mode: str) -> None:
    async with world(tmp_path, "sqlite", meters=200, action_rate=0.2, initial_sync=mode) as w:
        backlog = len(
            {
                (m, a["program_identifier"], a["delivery_period"], a["action_type"], a["action_code"])
                for m in w.meters
                for a in w.portfolio.meter(m)["required_actions"]["partner"]
            }
        )
        assert backlog > 10
        bodies = await w.cycle()
        if mode == "digest":
            assert [b["type"] for b in bodies] == ["alerter.digest"]
            assert len(bodies[0]["data"]["events"]) == backlog
            assert {e["initial"] for e in bodies[0]["data"]["events"]} == {True}
        elif mode == "notify":
            assert {b["type"] for b in bodies} == {"alerter.notification"}
            assert sum(len(b["data"]["events"]) for b in bodies) == backlog
            assert {e["initial"] for b in bodies for e in b["data"]["events"]} == {False}  # went out as new
            types = {e["action"]["action_type"] for b in bodies for e in b["data"]["events"]}
            assert len(bodies) == len(types)  # grouped by action_type
        else:
            assert bodies == []
            # the baseline is the obligations alone: no events are written for it
            some = next(m for m in w.meters if w.portfolio.meter(m)["required_actions"]["partner"])
            assert await w.service.store.load_obligations([some])
            assert await w.service.store.history(some) == []
        # the backlog is the baseline: the next cycle says nothing more
        assert await w.cycle() == []
        # and a new action afterwards is notified normally in every mode
        w.portfolio.open_action(w.meters[5], action_type="HAS_AMI", action_code="AMI_0009")
        assert events_of(await w.cycle()) == [("action.opened", "AMI_0009")]


async def _first_sync_stopped_after_a_page(w: World) -> None:
    """Six meters with an action, three pages of two: Leap fails from the second page on, the
    first sync stops with one page read, then Leap answers again."""
    for m in w.meters[:6]:
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    recovered = _fail_nth_request(w.sim, 2, times=10)
    with pytest.raises(SourceError):
        await w.service.run_cycle(flush_all=True)
    recovered()


async def test_a_first_sync_that_fails_midway_still_sends_one_digest_of_the_whole_backlog(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", meters=30, page_size="2", initial_sync="digest") as w:
        await _first_sync_stopped_after_a_page(w)
        await w.service.route_step()  # the every-second routing, meanwhile: it waits for the sync
        assert (await w.service.drain(5)).sent == {}
        [digest] = await w.cycle()
        assert digest["type"] == "alerter.digest"
        assert sorted(e["meter"]["meter_id"] for e in digest["data"]["events"]) == sorted(w.meters[:6])
        assert await w.cycle() == []


async def test_a_first_sync_read_again_digests_each_obligation_once_as_it_stands(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", meters=30, page_size="2", initial_sync="digest") as w:
        await _first_sync_stopped_after_a_page(w)
        first_page = [m for m in w.meters[:6] if await w.service.store.history(m)]
        assert len(first_page) == 2
        # meanwhile one action of the page read is cleared, the other one's description changes
        w.portfolio.resolve_action(first_page[0])
        w.portfolio.change_action(first_page[1], "AUTH_0001", description="Sign again, please")
        [digest] = await w.cycle()
        listed = [(e["type"], e["meter"]["meter_id"]) for e in digest["data"]["events"]]
        assert sorted(m for _, m in listed) == sorted(set(w.meters[:6]) - {first_page[0]})
        assert ("action.changed", first_page[1]) in listed and digest["data"]["counts"]["total"] == 5
        assert await w.cycle() == []


async def test_a_meter_leap_answers_404_for_in_a_recheck_leaves_the_others_rechecked(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", overlap="0s") as w:
        gone, cleared, kept = w.meters[1:4]
        for m in (gone, cleared, kept):
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert len(events_of(await w.cycle())) == 3
        w.portfolio.resolve_action(cleared)  # the incremental query lists meters with actions: the recheck sees it
        w.sim.faults.add("not_found", times=2, meter_id=gone)  # the incremental search, then the recheck
        with capture_logs() as logs:
            bodies = await w.cycle()
        assert [(e["type"], e["meter"]["meter_id"]) for b in bodies for e in b["data"]["events"]] == [
            ("action.resolved", cleared)
        ]
        assert [e["meter_id"] for e in logs if e["event"] == "meter_not_found"] == [gone]
        searches = [r for r in w.sim.requests if r.path.endswith("/search") and "meter_ids" in (r.body or {})]
        assert [(r.status, gone in r.body["meter_ids"]) for r in searches[-2:]] == [(404, True), (200, False)]
        assert set(await w.service.store.open_meter_ids()) == {gone, kept}  # left to the next sweep


async def test_a_meter_a_shifting_page_left_out_of_a_sweep_is_asked_for_before_it_is_resolved(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", overlap="0s") as w:
        skipped, cleared = w.meters[1:3]
        for m in (skipped, cleared):
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert len(events_of(await w.cycle())) == 2
        resolve_quietly(w.portfolio, cleared)
        w.sim.faults.add("skipped", times=1, meter_id=skipped)  # the sweep's one page leaves it out
        bodies = await w.cycle(force_reconcile=True)
        assert [(e["type"], e["meter"]["meter_id"]) for b in bodies for e in b["data"]["events"]] == [
            ("action.resolved", cleared)
        ]
        assert set(await w.service.store.open_meter_ids()) == {skipped}
        [reread] = [r for r in w.sim.requests if r.path.endswith("/search") and (r.body or {}).get("meter_ids")]
        assert sorted(reread.body["meter_ids"]) == sorted([skipped, cleared])
        assert reread.body["partner_action_required"] is True
        assert (await w.service.store.history(cleared))[-1].event.obligation.resolution == "reconcile"


async def test_a_record_dated_in_the_future_does_not_stop_the_incremental_reads(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", overlap="0s") as w:
        early, later = w.meters[1:3]
        assert await w.cycle() == []
        w.portfolio.offset = timedelta(days=365 * 70)  # Leap dates this change decades ahead
        w.portfolio.open_action(early, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        w.portfolio.offset = timedelta(0)
        with capture_logs() as logs:
            assert events_of(await w.cycle()) == [("action.opened", "AUTH_0001")]
        assert [e["event"] for e in logs if e["event"] == "updated_at_in_future"] == ["updated_at_in_future"]
        w.portfolio.open_action(later, action_type="NO_MISSING_FIELDS", action_code="SERV_0005")
        assert events_of(await w.cycle()) == [("action.opened", "SERV_0005")]
        # a watermark an earlier version stored in the future is brought back too
        await w.service.store.set_meta({META_WATERMARK: "2099-01-01T00:00:00Z"})
        w.portfolio.open_action(w.meters[4], action_type="HAS_AMI", action_code="AMI_0001")
        assert events_of(await w.cycle()) == [("action.opened", "AMI_0001")]


async def test_a_resolution_goes_only_to_receivers_told_of_the_latest_opening(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", overlap="0s") as w:
        m = w.meters[2]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert events_of(await w.cycle()) == [("action.opened", "AUTH_0001")]
        w.portfolio.resolve_action(m)
        assert events_of(await w.cycle()) == [("action.resolved", "AUTH_0001")]
        # opened again while a silence holds its meter: crm is not told of this opening
        now = datetime.now(UTC)
        silence = Silence("s-visit", {"meter_id": m}, now - timedelta(minutes=1), now + timedelta(hours=1), "visit")
        await w.service.store.add_silence(silence)
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert await w.cycle() == []
        assert await w.service.store.expire_silence("s-visit", datetime.now(UTC))
        w.portfolio.resolve_action(m)
        assert await w.cycle() == []  # so it is not told of its resolution either
        history = await w.service.store.history(m)
        assert [h.event.kind for h in history] == ["opened", "resolved", "opened", "resolved"]


async def test_a_silence_made_while_an_event_waits_in_its_group_mutes_it(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", group_wait="5m") as w:
        quiet, loud = w.meters[1:3]
        for m in (quiet, loud):
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        t0 = datetime.now(UTC)
        await w.service.run_cycle(now=t0)  # both queued, the group due in 5 minutes
        assert (await w.service.drain(5)).sent == {}
        silence = Silence("s-noisy", {"meter_id": quiet}, t0, t0 + timedelta(hours=1), "noisy meter")
        await w.service.store.add_silence(silence)
        bodies = await w.cycle(now=t0 + timedelta(minutes=6))
        assert [e["meter"]["meter_id"] for b in bodies for e in b["data"]["events"]] == [loud]
        [opened] = await w.service.store.history(quiet)
        assert opened.outcomes == ("silenced s-noisy",)
        # crm never got that opening: once the silence is over, it is not sent its resolution
        assert await w.service.store.expire_silence("s-noisy", t0 + timedelta(minutes=7))
        w.portfolio.resolve_action(quiet)
        assert await w.cycle(now=t0 + timedelta(minutes=20)) == []


async def test_resolution_seen_only_by_reconcile(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", overlap="0s") as w:
        m = w.meters[2]
        w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert events_of(await w.cycle()) == [("action.opened", "AUTH_0001")]
        resolve_quietly(w.portfolio, m)
        assert await w.cycle() == []  # the incremental query cannot see it
        bodies = await w.cycle(force_reconcile=True)
        assert events_of(bodies) == [("action.resolved", "AUTH_0001")]
        history = await w.service.store.history(m)
        assert history[-1].event.obligation.resolution == "reconcile"


async def test_failed_page_resolves_nothing(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", meters=30, page_size="2") as w:
        for m in w.meters[:6]:
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert len(events_of(await w.cycle())) == 6
        for m in w.meters[:6]:
            resolve_quietly(w.portfolio, m)
        for m in w.meters[10:15]:  # the sweep has three pages of two
            w.portfolio.open_action(m, action_type="HAS_AMI", action_code="AMI_0001")
        # the reconcile sweep fails on its second page: no absence-based resolution
        watermark = await w.service.store.get_meta("watermark")
        fail_second = _fail_nth_request(w.sim, 2, times=10)
        with pytest.raises(SourceError):
            await w.service.run_cycle(flush_all=True, force_reconcile=True)
        fail_second()
        assert await w.service.store.get_meta("watermark") == watermark
        still_open = set(await w.service.store.open_meter_ids())
        assert set(w.meters[:6]) <= still_open  # the first page was committed; nothing resolved
        # once the API recovers, the complete sweep resolves them
        bodies = await w.cycle(force_reconcile=True)
        assert [t for t, _ in events_of(bodies)].count("action.resolved") == 6
        assert set(await w.service.store.open_meter_ids()) == set(w.meters[10:15])


def _fail_nth_request(sim: SimServer, n: int, times: int) -> Any:
    """Let n-1 requests through, then answer 503 `times` times (past the client's retry budget)."""
    sim.faults.add("slow", times=n - 1, delay=0.0)
    sim.faults.add("503", times=times)
    return sim.faults.clear


async def test_invalid_record_skipped_and_counted(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", meters=10) as w:
        for m in w.meters[:3]:
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        w.sim.faults.add("invalid_record", invalid="bad_action_type", record=0)
        await w.service.run_cycle(flush_all=True)
        assert w.service.metrics.invalid_records._value.get() == 1
        assert len(await w.service.store.open_meter_ids()) == 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_crash_between_commit_and_watermark_loses_and_repeats_nothing(tmp_path: Path, backend: str) -> None:
    async with world(tmp_path, backend, page_size="2") as w:
        await w.cycle()
        for m in w.meters[:5]:
            w.portfolio.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        store = w.service.store
        real_set_meta = store.set_meta

        async def crash(values: Any) -> None:
            raise RuntimeError("killed before the watermark moved")

        store.set_meta = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await w.service.run_cycle(flush_all=True)
        store.set_meta = real_set_meta  # type: ignore[method-assign]
        # the pages were committed, the watermark was not: the rerun re-reads and diffs to nothing new
        bodies = await w.cycle()
        assert events_of(bodies) == [("action.opened", "AUTH_0001")] * 5
        assert await w.cycle() == []


async def test_deadline_reminders_fire_once_each(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", remind="{before_deadline: [7d, 2d, 1d], overdue: true}") as w:
        await w.cycle()
        t0 = datetime.now(UTC)
        w.portfolio.open_action(
            w.meters[0],
            action_type="IS_AUTHORIZED",
            action_code="AUTH_0001",
            enrollment_deadline_date_time=t0 + timedelta(days=3),
        )
        assert events_of(await w.cycle()) == [("action.opened", "AUTH_0001")]
        assert await w.cycle(now=t0 + timedelta(hours=12)) == []  # 7d was crossed before it opened
        bodies = await w.cycle(now=t0 + timedelta(days=1, hours=12))
        assert events_of(bodies) == [("action.reminder", "AUTH_0001")]  # the 2d threshold
        assert await w.cycle(now=t0 + timedelta(days=1, hours=13)) == []  # once per threshold
        later = await w.cycle(now=t0 + timedelta(days=2, hours=1))
        assert events_of(later) == [("action.reminder", "AUTH_0001")]  # the 1d threshold
        overdue = await w.cycle(now=t0 + timedelta(days=3, hours=1))
        assert events_of(overdue) == [("action.reminder", "AUTH_0001")]


async def test_a_silence_muting_one_rules_copy_keeps_the_resolution_another_rule_owes(tmp_path: Path) -> None:
    """`t` hears of an action through `fast` (sent at once) and `slow` (waiting 5 min). A silence
    made meanwhile mutes `slow`'s copy: `t` was told all the same, so once the silence is over
    it hears the action resolved, where the muted copy made it forget it had been told."""
    rules = """\
receivers:
  - {{name: t, webhook: {{url: "{url}", secret: {secret}}}}}
rules:
  - {{name: fast, receivers: [t], group_wait: 0s, continue: true}}
  - {{name: slow, receivers: [t], group_wait: 5m}}
"""
    p = Portfolio(10, action_rate=0.0, seed=3)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        text = rules.format(url=hook.url(), secret=WEBHOOK_SECRET)
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), text)
        async with running(load(path)) as service:
            t0 = datetime.now(UTC)

            async def cycle(minutes: float, **kw: Any) -> None:
                offset = timedelta(minutes=minutes)  # the service's clock at t0 + minutes
                service.clock = lambda: datetime.now(UTC) + offset
                await service.run_cycle(now=t0 + offset, **kw)
                assert (await service.drain(10)).undelivered == 0

            await cycle(0, flush_all=True)
            m = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
            p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            await cycle(0.1)  # fast flushes, slow waits
            silence = Silence("s-1", {"meter_id": m}, t0 + timedelta(minutes=1), t0 + timedelta(hours=1), "a visit")
            await service.store.add_silence(silence)  # made after both copies were queued
            await cycle(6)  # slow's copy: muted
            assert await service.store.expire_silence("s-1", t0 + timedelta(minutes=7))
            p.resolve_action(m)
            await cycle(8, flush_all=True)
    kinds = [e["type"] for r in hook.delivered() for e in r.body["data"]["events"]]
    assert kinds.count("action.opened") == 1 and "action.resolved" in kinds, kinds


RESOLUTION_RULES = """\
receivers:
  - {{name: x, webhook: {{url: "{x}", secret: {secret}}}}}
  - {{name: y, webhook: {{url: "{y}", secret: {secret}}}}}
defaults: {{group_wait: 0s, group_interval: 0s}}
rules:
{rules}
"""


async def resolution_story(
    tmp_path: Path, rules: str, days: tuple[int, int], backend: str = "sqlite"
) -> list[tuple[str, str]]:
    """An action opens `days[0]` days before its deadline, the deadline moves to `days[1]` days
    out, the action is resolved; (receiver's path, event type) of everything delivered."""
    p = Portfolio(10, action_rate=0.0, seed=3)
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url(backend, tmp_path) as url,
    ):
        text = RESOLUTION_RULES.format(x=hook.url("/x"), y=hook.url("/y"), secret=WEBHOOK_SECRET, rules=rules)
        path = write_config(tmp_path, config_yaml(sim.url, url), text)
        async with running(load(path)) as service:
            await service.run_cycle(flush_all=True)
            m = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
            now = datetime.now(UTC)
            p.open_action(m, action_code="AUTH_0001", enrollment_deadline_date_time=now + timedelta(days=days[0]))
            await service.run_cycle(flush_all=True)
            p.change_action(m, "AUTH_0001", deadline=now + timedelta(days=days[1]))
            await service.run_cycle(flush_all=True)
            p.resolve_action(m)
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0
    return sorted((r.path, e["type"]) for r in hook.delivered() for e in r.body["data"]["events"])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_resolution_reaches_the_receiver_a_change_moved_it_from(tmp_path: Path, backend: str) -> None:
    """`near` (deadline within 7 days) → x, the fallback → y. The action opens 10 days out (y
    is told), moves to 5 days out (x is told of the change): its resolution goes to both, y
    through the rule that told it (its stored opening says which), where y heard nothing."""
    rules = (
        "  - {name: near, match: {deadline: {within: 7d}}, receivers: [x]}\n"
        "  - {name: rest, fallback: true, receivers: [y]}"
    )
    assert await resolution_story(tmp_path, rules, (10, 5), backend) == [
        ("/x", "action.changed"),
        ("/x", "action.resolved"),
        ("/y", "action.opened"),
        ("/y", "action.resolved"),
    ]


async def test_a_resolution_reaches_the_receiver_of_a_rule_a_change_moved_it_out_of(tmp_path: Path) -> None:
    """The mirror: the action opens 5 days out (`near` tells x), moves to 10 days out (the
    fallback tells y of the change): x is sent the resolution through `near`, which took the
    opening as it was, though the obligation as it is now matches it no more."""
    rules = (
        "  - {name: near, match: {deadline: {within: 7d}}, receivers: [x]}\n"
        "  - {name: rest, fallback: true, receivers: [y]}"
    )
    assert await resolution_story(tmp_path, rules, (5, 10)) == [
        ("/x", "action.opened"),
        ("/x", "action.resolved"),
        ("/y", "action.changed"),
        ("/y", "action.resolved"),
    ]


async def test_a_receiver_taking_openings_alone_is_not_sent_the_resolution(tmp_path: Path) -> None:
    """`new` takes openings alone (`match: {event: opened}`) to x; every other event goes to y, and
    the fallback names x too: x is told of the opening and of nothing else."""
    rules = (
        "  - {name: new, match: {event: opened}, receivers: [x]}\n"
        "  - {name: other, match: {event: [changed, resolved]}, receivers: [y]}\n"
        "  - {name: rest, fallback: true, receivers: [x]}"
    )
    assert await resolution_story(tmp_path, rules, (10, 5)) == [
        ("/x", "action.opened"),
        ("/y", "action.changed"),
        ("/y", "action.resolved"),
    ]
