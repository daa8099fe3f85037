"""One bad record or meter never stops the rest: scenarios through the simulator, on both stores.

Each test reads as a timeline: the simulator serves crafted records (its `invalid_record`
faults, or odd but readable values), a cycle runs, the webhook collector and the store show
what went through, the metrics and the log what was skipped and why.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from alerter.poller import CycleReport
from alerter.service import Service
from alerter.sim import Portfolio, SimServer
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
    state: str

    @property
    def meters(self) -> list[str]:
        """Meters that are not archived."""
        p = self.portfolio
        return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]

    async def cycle(self, **kw: Any) -> tuple[CycleReport, list[dict[str, Any]]]:
        """One cycle, everything it produced delivered (self-alerts too): its report and the
        webhook bodies received."""
        before = len(self.hook.delivered())
        report = await self.service.run_cycle(flush_all=True, **kw)
        assert report is not None
        await self.service.alerts.flush()
        stats = await self.service.drain(10)
        assert stats.undelivered == 0
        return report, [r.body for r in self.hook.delivered()[before:]]

    async def sql(self, statement: str) -> None:
        """Runs SQL on the state store from outside the service, as an operator (or a fault) would."""
        if self.state.startswith("sqlite:///"):
            conn = sqlite3.connect(self.state.removeprefix("sqlite:///"))
            try:
                conn.executescript(statement)
            finally:
                conn.close()
            return
        parts = urlsplit(self.state)
        schema = parts.query.removeprefix("schema=")
        pg = await asyncpg.connect(parts._replace(query="").geturl())
        try:
            await pg.execute(f'SET search_path TO "{schema}"; {statement}')
        finally:
            await pg.close()

    def metric(self, name: str) -> float:
        value: float = getattr(self.service.metrics, name)._value.get()
        return value


def events_of(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((e["type"], e["meter"]["meter_id"]) for b in bodies for e in b["data"]["events"])


def alerts_of(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(b["data"]["group"]["alert"], b["data"]["group"]["status"]) for b in bodies if b["type"] == "alerter.alert"]


@asynccontextmanager
async def world(tmp_path: Path, backend: str, *, meters: int = 20, **cfg: str) -> AsyncIterator[World]:
    portfolio = Portfolio(meters, action_rate=0.0, seed=3)
    async with (
        SimServer(portfolio, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url(backend, tmp_path) as url,
    ):
        config = config_yaml(sim.url, url, **cfg) + "operations_receiver: crm\n"
        path = write_config(tmp_path, config, rules_yaml(hook.url()))
        async with running(load(path)) as service:
            yield World(portfolio, sim, hook, service, url)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_offset_less_and_date_only_times_are_read_as_utc_and_notified(tmp_path: Path, backend: str) -> None:
    """The poison record of old: a deadline without an offset, or a date, is stored as UTC."""
    async with world(tmp_path, backend) as w:
        await w.cycle()
        naive, date, plain = w.meters[:3]
        w.portfolio.open_action(naive, action_code="AUTH_0001", enrollment_deadline_date_time="2027-03-01T08:30:00")
        w.portfolio.open_action(date, action_code="AUTH_0002", enrollment_deadline_date_time="2027-03-01")
        w.portfolio.open_action(plain, action_code="AUTH_0003")
        w.sim.faults.add("invalid_record", times=5, invalid="naive_updated_at", meter_id=plain)
        report, bodies = await w.cycle()
        assert (report.invalid, report.failed) == (0, 0)
        assert events_of(bodies) == sorted(("action.opened", m) for m in (naive, date, plain))
        deadlines = {
            e["meter"]["meter_id"]: e["action"]["enrollment_deadline_date_time"]
            for b in bodies
            for e in b["data"]["events"]
        }
        assert deadlines[naive].startswith("2027-03-01T08:30:00") and deadlines[naive].endswith("Z")
        assert deadlines[date].startswith("2027-03-01T00:00:00") and deadlines[date].endswith("Z")
        stored = {ob.meter_id: ob.deadline for ob in (await w.service.store.load_obligations([naive, date])).values()}
        assert stored == {naive: datetime(2027, 3, 1, 8, 30, tzinfo=UTC), date: datetime(2027, 3, 1, tzinfo=UTC)}
        # the offset-less `audit.updated_at` of the newest record moved the watermark as UTC
        updated = w.portfolio.meter(plain)["audit"]["updated_at"]
        watermark = await w.service.store.get_meta("watermark")
        assert watermark is not None and datetime.fromisoformat(watermark) == datetime.fromisoformat(updated)
        assert w.metric("invalid_records") == 0
        w.sim.faults.clear()
        assert (await w.cycle())[1] == []  # read again: the same instants, nothing changed


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_invalid_record_with_a_readable_id_keeps_its_meter_open_while_others_resolve(
    tmp_path: Path, backend: str
) -> None:
    async with world(tmp_path, backend, page_size="5") as w:
        await w.cycle()
        broken, cleared = w.meters[3], w.meters[7]
        for m in (broken, cleared):
            w.portfolio.open_action(m, action_code="AUTH_0001")
        assert events_of((await w.cycle())[1]) == sorted(("action.opened", m) for m in (broken, cleared))
        # one is cleared where only a full sweep can see it; the other still needs action, but
        # its record breaks the definition: the sweep lists it, unreadable
        resolve_quietly(w.portfolio, cleared)
        w.sim.faults.add("invalid_record", times=100, invalid="bad_action_type", meter_id=broken)
        with capture_logs() as logs:
            report, bodies = await w.cycle(force_reconcile=True)
        assert (report.kind, report.invalid, report.unidentified, report.incomplete) == ("reconcile", 1, 0, False)
        assert events_of(bodies) == [("action.resolved", cleared)]  # the sweep went on for the others
        assert await w.service.store.open_meter_ids() == [broken]  # listed, though unreadable: kept open
        (entry,) = [e for e in logs if e["event"] == "record_invalid"]
        assert entry["meter_id"] == broken and "action_type" in entry["error"]
        assert not [e for e in logs if e["event"] == "reconcile_skipped"]
        assert alerts_of(bodies) == [("invalid_records", "firing")]
        (alert,) = [b for b in bodies if b["type"] == "alerter.alert"]
        assert broken in alert["data"]["group"]["message"]
        # the record stays invalid: the alert stays raised, not sent again; the count goes on
        report, bodies = await w.cycle(force_reconcile=True)
        assert (report.invalid, bodies) == (1, [])
        assert w.metric("invalid_records") == 2
        # once Leap serves it whole again, the next sweep reads it (unchanged) and clears the alert
        w.sim.faults.clear()
        report, bodies = await w.cycle(force_reconcile=True)
        assert alerts_of(bodies) == [("invalid_records", "resolved")] and events_of(bodies) == []
        resolve_quietly(w.portfolio, broken)
        report, bodies = await w.cycle(force_reconcile=True)
        assert events_of(bodies) == [("action.resolved", broken)]
        assert await w.service.store.open_meter_ids() == []


@pytest.mark.parametrize("invalid", ["no_required_actions", "null_required_actions"])
async def test_a_record_that_does_not_state_its_actions_resolves_nothing(tmp_path: Path, invalid: str) -> None:
    async with world(tmp_path, "sqlite", page_size="5") as w:
        await w.cycle()
        m = w.meters[3]
        w.portfolio.open_action(m, action_code="AUTH_0001")
        assert events_of((await w.cycle())[1]) == [("action.opened", m)]
        w.portfolio.touch(m)  # the incremental read lists it again
        w.sim.faults.add("invalid_record", times=100, invalid=invalid, meter_id=m)
        for kw in ({}, {"force_reconcile": True}):
            report, bodies = await w.cycle(**kw)
            assert report.invalid == 1 and events_of(bodies) == []
            assert await w.service.store.open_meter_ids() == [m]
        assert w.metric("invalid_records") == 2


async def test_two_bad_records_on_one_page_count_two_and_each_is_named(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", page_size="10") as w:
        await w.cycle()
        acting = {w.meters[4], w.meters[5], w.meters[9]}
        for m in acting:
            w.portfolio.open_action(m, action_code="AUTH_0001")
        w.sim.faults.add("invalid_record", times=2, invalid="bad_action_type", record=0, count=2)
        with capture_logs() as logs:
            report, bodies = await w.cycle()
        assert (report.pages, report.records, report.invalid, report.unidentified) == (1, 1, 2, 0)
        assert w.metric("invalid_records") == 2
        named = [(e["meter_id"], e["index"]) for e in logs if e["event"] == "record_invalid"]
        assert [i for _, i in named] == [0, 1]
        broken = {m for m, _ in named}
        assert len(broken) == 2 and broken < acting
        assert events_of(bodies) == [("action.opened", m) for m in acting - broken]
        assert [e["invalid"] for e in logs if e["event"] == "cycle_done"] == [2]
        (alert,) = [b for b in bodies if b["type"] == "alerter.alert"]
        message = alert["data"]["group"]["message"]
        assert message.startswith("2 record(s) from Leap skipped") and all(m in message for m in broken)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_meter_the_store_will_not_take_is_set_apart_and_the_rest_commits(tmp_path: Path, backend: str) -> None:
    """SQLite: a trigger refuses the meter's rows. PostgreSQL: a NUL character, which its text
    type cannot hold, in the meter's action description."""
    async with world(tmp_path, backend, page_size="4") as w:
        await w.cycle()
        bad, others = w.meters[5], [w.meters[1], w.meters[6], w.meters[12]]
        description = None
        if backend == "sqlite":
            await w.sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON obligations "
                f"WHEN NEW.meter_id = '{bad}' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            )
        else:
            description = "Sign the form\x00 again"
        w.portfolio.open_action(bad, action_code="AUTH_0001", action_description=description)
        for m in others:
            w.portfolio.open_action(m, action_code="AUTH_0001")
        with capture_logs() as logs:
            report, bodies = await w.cycle()
        assert (report.failed, report.skipped_meters) == (1, [bad])
        assert events_of(bodies) == sorted(("action.opened", m) for m in others)
        (entry,) = [e for e in logs if e["event"] == "meter_failed"]
        assert (entry["meter_id"], entry["stage"]) == (bad, "commit")
        assert await w.service.store.open_meter_ids() == sorted(others)
        # the next poll goes on too: a new action elsewhere is notified
        w.portfolio.open_action(w.meters[0], action_code="AMI_0001", action_type="HAS_AMI")
        report, bodies = await w.cycle()
        assert events_of(bodies) == [("action.opened", w.meters[0])]


async def test_a_record_without_a_readable_id_leaves_the_sweep_incomplete_but_polls_go_on(tmp_path: Path) -> None:
    async with world(tmp_path, "sqlite", page_size="5", overlap="0s") as w:
        await w.cycle()
        cleared, hidden = w.meters[7], w.meters[12]
        for m in (cleared, hidden):
            w.portfolio.open_action(m, action_code="AUTH_0001")
        await w.cycle()
        resolve_quietly(w.portfolio, cleared)
        # the hidden meter still needs action, but Leap serves its record as a bare string
        w.sim.faults.add("invalid_record", times=100, invalid="not_an_object", meter_id=hidden)
        with capture_logs() as logs:
            report, bodies = await w.cycle(force_reconcile=True)
        assert (report.invalid, report.unidentified, report.incomplete) == (1, 1, True)
        assert events_of(bodies) == []  # which meter it was is unknown: nothing resolved by absence
        assert await w.service.store.open_meter_ids() == sorted([cleared, hidden])
        (skipped,) = [e for e in logs if e["event"] == "reconcile_skipped"]
        assert skipped["unidentified"] == 1
        assert [e["meter_id"] for e in logs if e["event"] == "record_invalid"] == [None]
        assert sorted(alerts_of(bodies)) == [("invalid_records", "firing"), ("sweep_incomplete", "firing")]
        # the incremental poll still proceeds, the unreadable record (modified again) skipped again
        fresh = w.meters[11]
        w.portfolio.open_action(fresh, action_code="AUTH_0009")
        w.portfolio.touch(hidden)
        report, bodies = await w.cycle()
        assert report.kind == "incremental" and report.invalid >= 1
        assert events_of(bodies) == [("action.opened", fresh)]
        # a complete sweep resolves what the incomplete one could not, and clears both alerts
        w.sim.faults.clear()
        report, bodies = await w.cycle(force_reconcile=True)
        assert events_of(bodies) == [("action.resolved", cleared)]
        assert sorted(alerts_of(bodies)) == [("invalid_records", "resolved"), ("sweep_incomplete", "resolved")]
