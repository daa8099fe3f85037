"""What a receiver is told about one obligation arrives in the order it happened, through the
wire on both backends: a resolution made while its opening waits in a backoff (the receiver
failed it) waits behind it, in the claim that finds both due as after it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.service import (
    API_KEY,
    WEBHOOK_SECRET,
    config_yaml,
    load,
    rules_yaml,
    running,
    state_url,
    write_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("failures", [1, 3])
async def test_a_resolution_never_overtakes_its_opening_in_a_backoff(
    tmp_path: Path, backend: str, failures: int
) -> None:
    p = Portfolio(10, action_rate=0.0, seed=1)
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        state_url(backend, tmp_path) as url,
    ):
        cfg = write_config(tmp_path, config_yaml(sim.url, url), rules_yaml(hook.url()))
        async with running(load(cfg)) as svc:
            await svc.run_cycle(flush_all=True)
            m = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
            p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            hook.script.extend([503] * failures)  # the receiver fails the opening, then the next tries
            t0 = svc.clock()
            await svc.run_cycle(flush_all=True)
            await svc.deliverer.run_once(t0)
            p.resolve_action(m)
            await svc.run_cycle(flush_all=True, force_reconcile=True)  # the resolution, due at once
            with capture_logs() as logs:
                for k in range(1, 200):
                    await svc.deliverer.run_once(t0 + timedelta(seconds=k * 5))
            undelivered = await svc.store.undelivered_count()
    told = [[e["type"] for e in r.body["data"]["events"]] for r in hook.received]
    assert told == [["action.opened"]] * (failures + 1) + [["action.resolved"]], told
    assert undelivered == 0
    assert any(e["event"] == "delivery_waits" for e in logs)
