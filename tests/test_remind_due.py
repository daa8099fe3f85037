"""The reminders step reads only the open obligations due a look (`remind_at`), sets each one's
next look, and looks at all of them again when the rules change."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config


async def test_only_obligations_due_a_look_are_read_and_new_rules_look_at_all(tmp_path: Path) -> None:
    p = Portfolio(30, action_rate=0.0, seed=4)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:5]
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url(), remind="{every: 1h}")
        )
        async with running(load(cfg)) as service:
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
