"""The reminders step reads only the open obligations due a look (`remind_at`), sets each one's
next look, and looks at all of them again when the rules change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import msgspec

from alerter.service import Service
from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config


def reminders(service: Service) -> float:
    """The reminder events made so far (`alerter_events_total{type="reminder"}`)."""
    for line in service.metrics.render().decode().splitlines():
        if line.startswith('alerter_events_total{type="reminder"}'):
            return float(line.rpartition(" ")[2])
    return 0.0


@asynccontextmanager
async def with_actions(tmp_path: Path, count: int, remind: str) -> AsyncIterator[tuple[Portfolio, list[str], Service]]:
    """A running service over `count` meters with one open action each, under `remind`."""
    p = Portfolio(30, action_rate=0.0, seed=4)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:count]
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url(), remind=remind)
        )
        async with running(load(cfg)) as service:
            yield p, meters, service


async def test_only_obligations_due_a_look_are_read_and_new_rules_look_at_all(tmp_path: Path) -> None:
    async with with_actions(tmp_path, 5, "{every: 1h}") as (_, meters, service):
        t0 = service.clock()
        await service.run_cycle(t0, flush_all=True)
        store = service.store
        assert await store.reminder_candidates(t0 + timedelta(minutes=59)) == []  # none due a look yet
        due = await store.reminder_candidates(t0 + timedelta(hours=1, seconds=1))
        assert {o.meter_id for o in due} == set(meters)

        assert await service._remind(t0 + timedelta(hours=1, seconds=1)) == 5  # every:1 each
        assert await store.reminder_candidates(t0 + timedelta(hours=1, minutes=59)) == []
        assert await service._remind(t0 + timedelta(hours=1, minutes=30)) == 0

        seen = await store.get_meta("remind_rules")
        service.rules_digests = {Path("other.yaml"): "changed"}  # as a reload of other rules does
        await store.reset_remind_at(t0)  # what the step does for new rules: every one is due a look
        assert len(await store.reminder_candidates(t0 + timedelta(hours=1, minutes=31))) == 5
        assert await service._remind(t0 + timedelta(hours=1, minutes=31)) == 0  # every one looked at
        assert await store.get_meta("remind_rules") not in (None, seen)
        assert await store.reminder_candidates(t0 + timedelta(hours=1, minutes=32)) == []
        assert await service._remind(t0 + timedelta(hours=2, seconds=2)) == 5  # every:2


async def test_a_new_obligation_is_written_with_its_first_reminder_time(tmp_path: Path) -> None:
    """An initial sync of a large backlog does not read every obligation back for a first look:
    the poll writes each new one's next reminder time, and a changed one is looked at next step."""
    async with with_actions(tmp_path, 4, "{every: 2h}") as (p, meters, service):
        t0 = service.clock()
        await service.poller.run_cycle(t0)  # the poll alone: no reminders step ran
        store = service.store
        assert await store.reminder_candidates(t0 + timedelta(hours=1, minutes=59)) == []
        due = await store.reminder_candidates(t0 + timedelta(hours=2))
        assert sorted(o.meter_id for o in due) == sorted(meters)

        p.change_action(meters[0], "AUTH_0001", description="Re-authorize, now with a new form")
        t1 = t0 + timedelta(minutes=10)
        await service.poller.run_cycle(t1, force_reconcile=True)
        assert [o.meter_id for o in await store.reminder_candidates(t1)] == [meters[0]]  # changed: looked at
        assert await service._remind(t1) == 0
        assert await store.reminder_candidates(t1 + timedelta(minutes=1)) == []


async def test_a_reworded_action_is_not_reminded_again_of_what_it_was_told(tmp_path: Path) -> None:
    """A reminder's id is its obligation's opening (and deadline), not its version: Leap changing
    the description moves the version, and the reminders already sent are not sent again."""
    async with with_actions(tmp_path, 2, "{every: 1h}") as (p, meters, service):
        t0 = service.clock()
        await service.run_cycle(t0, flush_all=True)
        assert await service._remind(t0 + timedelta(hours=1, seconds=1)) == 2  # every:1 each
        p.change_action(meters[0], "AUTH_0001", description="Reworded by Leap")
        report = await service.run_cycle(t0 + timedelta(hours=1, minutes=1), flush_all=True)  # and its reminders
        assert report is not None and dict(report.events) == {"changed": 1}
        assert reminders(service) == 2  # not every:1 again
        assert await service._remind(t0 + timedelta(hours=1, minutes=2)) == 0
        assert await service._remind(t0 + timedelta(hours=2, seconds=2)) == 2  # every:2, once each


async def test_a_reminder_an_earlier_version_sent_is_not_sent_again(tmp_path: Path) -> None:
    """Versions before this one gave a reminder an id with the obligation's version in it: one
    already stored under that id counts as sent, though new rules look at every obligation."""
    from alerter.models import event_id
    from alerter.reminders import reminders_due
    from alerter.routes import Router

    async with with_actions(tmp_path, 3, "{every: 1h}") as (_, meters, service):
        t0 = service.clock()
        await service.run_cycle(t0, flush_all=True)
        at = t0 + timedelta(hours=1, seconds=1)
        store = service.store
        [old] = [o for o in await store.reminder_candidates(at) if o.meter_id == meters[0]]
        [due] = reminders_due(old, Router(service.ruleset).remind_policy(old, at), at)
        legacy = msgspec.structs.replace(due, id=event_id(old.key, "reminder", old.version, due.detail))
        await store.commit_page((), [legacy])  # as an earlier version wrote it
        [by_n] = [o for o in await store.reminder_candidates(at) if o.meter_id == meters[1]]
        [due] = reminders_due(by_n, Router(service.ruleset).remind_policy(by_n, at), at)
        n_based = event_id(by_n.key, "reminder", 0, f"{due.detail}|{by_n.opened_at.isoformat()}")
        await store.commit_page((), [msgspec.structs.replace(due, id=n_based)])  # as the version before wrote it
        assert await service._remind(at) == 1  # the third one


async def test_a_changed_every_reminds_at_its_own_instants_once_each(tmp_path: Path) -> None:
    """`every: 1h` becomes `2h` after three reminders: the one due at 4 h (the second of 2 h) is
    not taken for the one sent at 2 h; `2h` back to `1h` at 4 h 10 min: the one due (at 4 h) is
    the one just sent, not another. So also when a rule with a shorter `every` stops matching."""
    async with with_actions(tmp_path, 2, "{every: 1h}") as (_, _meters, service):
        t0 = service.clock()
        await service.run_cycle(t0, flush_all=True)
        for hour in (1, 2, 3):
            assert await service._remind(t0 + timedelta(hours=hour, seconds=1)) == 2
        rules = tmp_path / "rules.yaml"
        rules.write_text(rules.read_text().replace("every: 1h", "every: 2h"))
        assert service.reload() == "ok"
        assert await service._remind(t0 + timedelta(hours=3, minutes=30)) == 0
        assert await service._remind(t0 + timedelta(hours=4, seconds=1)) == 2
        rules.write_text(rules.read_text().replace("every: 2h", "every: 1h"))
        assert service.reload() == "ok"
        assert await service._remind(t0 + timedelta(hours=4, minutes=10)) == 0
        assert await service._remind(t0 + timedelta(hours=5, seconds=1)) == 2
