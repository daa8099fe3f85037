"""The commands README lists, run as real processes against the simulator and a webhook collector."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.proc import Service, alerter
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, rules_yaml, write_config

pytestmark = pytest.mark.timeout(180)


def unarchived(p: Portfolio) -> list[str]:
    return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]


async def test_once_delivers_and_exits_0(tmp_path: Path) -> None:
    p = Portfolio(50, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        for m in unarchived(p)[:3]:
            p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        first = await alerter("once", "-c", str(cfg))
        assert first.code == 0, first.stderr
        assert sum(len(r.body["data"]["events"]) for r in hook.delivered()) == 3
        again = await alerter("once", "-c", str(cfg))
        assert again.code == 0, again.stderr
        assert sum(len(r.body["data"]["events"]) for r in hook.delivered()) == 3  # nothing twice


async def test_once_refused_key_exits_1_with_one_line(tmp_path: Path) -> None:
    async with SimServer(Portfolio(5), api_key=API_KEY) as sim, webhook_collector() as hook:
        secret_key = "wrong-key-0123456789"
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", api_key=secret_key),
            rules_yaml(hook.url()),
        )
        result = await alerter("once", "-c", str(cfg))
    assert result.code == 1
    assert "refused the API key" in result.stderr
    assert "Traceback" not in result.stderr
    assert secret_key not in result.stderr + result.stdout


async def test_once_unreachable_source_exits_1(tmp_path: Path) -> None:
    async with webhook_collector() as hook:
        cfg = write_config(
            tmp_path, config_yaml("http://127.0.0.1:9", f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())
        )
        result = await alerter("once", "-c", str(cfg), timeout=90)
    assert result.code == 1
    assert "Traceback" not in result.stderr
    assert "alerter:" in result.stderr


async def test_once_bad_config_exits_2_with_position(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("source:\n  api_key: k\n  page_size: 9000\npoll:\n  intervall: 5m\n")
    result = await alerter("once", "-c", str(cfg))
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{cfg}:3:") and "page_size" in line for line in lines), lines
    assert any(line.startswith(f"{cfg}:5:") and "intervall" in line for line in lines), lines


async def test_once_undelivered_stays_queued_then_delivers(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        p.open_action(unarchived(p)[0], action_type="HAS_AMI", action_code="AMI_0001")
        hook.script.extend([503] * 50)
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        failed = await alerter("once", "-c", str(cfg), "--deadline", "2")
        assert failed.code == 1
        assert "undelivered" in failed.stderr
        assert hook.delivered() == []
        hook.script.clear()
        # the row waits for its backoff: a replay-free rerun delivers once it is due
        dead = await alerter("dlq", "list", "-c", str(cfg))
        assert dead.code == 0
        ok = await alerter("once", "-c", str(cfg), "--deadline", "60")
        assert ok.code == 0, ok.stderr
        ids = {r.headers["webhook-id"] for r in hook.received}
        assert len(ids) == 1  # every attempt carried the same webhook-id
        assert len(hook.delivered()) == 1


async def test_check_command(tmp_path: Path) -> None:
    async with webhook_collector() as hook:
        cfg = write_config(
            tmp_path, config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())
        )
        ok = await alerter("check", "-c", str(cfg))
    assert ok.code == 0, ok.stderr
    (tmp_path / "rules.yaml").write_text("receivers: []\nrules:\n  - name: r\n    receivers: [nobody]\n")
    bad = await alerter("check", "-c", str(cfg))
    assert bad.code == 2
    assert f"{tmp_path / 'rules.yaml'}:4:" in bad.stderr
    assert "nobody" in bad.stderr


async def test_run_health_ready_metrics_sighup_sigterm(tmp_path: Path) -> None:
    p = Portfolio(30, action_rate=0.0, seed=8)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
            rules_yaml(hook.url()),
        )
        svc = await Service.start(str(cfg))
        try:
            assert (await svc.get("/healthz"))[0] == 200
            await svc.wait_for_log("cycle_done")
            status, body = await svc.get("/readyz")
            assert status == 200, body
            assert (await svc.get("/startedz"))[0] == 200  # its store is open and migrated
            p.open_action(unarchived(p)[0], action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            for _ in range(100):
                if hook.delivered():
                    break
                await asyncio.sleep(0.1)
            assert len(hook.delivered()) == 1
            status, metrics = await svc.get("/metrics")
            assert status == 200
            assert "alerter_cycles_total" in metrics
            assert 'alerter_events_total{type="opened"} 1.0' in metrics
            assert "alerter_source_requests_total" in metrics
            assert 'alerter_deliveries_total{receiver="crm",status="sent"} 1.0' in metrics
            # an invalid rules file is rejected on SIGHUP; the old rules stay
            (tmp_path / "rules.yaml").write_text("receivers: [{name: x}]\n")
            svc.send(signal.SIGHUP)
            await svc.wait_for_log("rules_reload_rejected")
            assert svc.proc.returncode is None
            (tmp_path / "rules.yaml").write_text(rules_yaml(hook.url()))
            svc.send(signal.SIGHUP)
            await svc.wait_for_log("rules_reloaded")
            p.open_action(unarchived(p)[1], action_type="HAS_AMI", action_code="AMI_0001")
            for _ in range(100):
                if len(hook.delivered()) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(hook.delivered()) == 2
            # an edited rules file is picked up without a signal
            (tmp_path / "rules.yaml").write_text(rules_yaml(hook.url(), group_wait="1s"))
            await svc.wait_for_log("rules_reloaded", timeout=30, count=2)  # two watch ticks
        finally:
            code = await svc.stop(signal.SIGTERM)
        assert code == 0
        assert any(e.get("event") == "shutdown_complete" for e in svc.logs)


async def test_run_not_ready_while_key_refused(tmp_path: Path) -> None:
    async with SimServer(Portfolio(5), api_key=API_KEY) as sim, webhook_collector() as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", api_key="revoked-key-xyz"),
            rules_yaml(hook.url()),
        )
        svc = await Service.start(str(cfg))
        try:
            await svc.wait_for_log("cycle_failed")
            status, body = await svc.get("/readyz")
            assert status == 503
            reason = orjson.loads(body)["reason"]
            assert "API key" in reason
            assert (await svc.get("/healthz"))[0] == 200
        finally:
            assert await svc.stop() == 0
        assert "revoked-key-xyz" not in svc.text()


async def test_second_instance_on_the_same_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    async with SimServer(Portfolio(5), api_key=API_KEY) as sim, webhook_collector() as hook:
        cfg = write_config(
            tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json"), rules_yaml(hook.url())
        )
        first = await Service.start(str(cfg))
        try:
            second = await alerter("run", "-c", str(cfg), timeout=30)
            assert second.code == 1
            assert "in use by another alerter" in second.stderr
            assert "Traceback" not in second.stderr
            # operations commands still work beside the running service
            assert (await alerter("silence", "list", "-c", str(cfg))).code == 0
        finally:
            assert await first.stop() == 0
