"""Operations commands as processes: silences, dead letters, receivers, history, rules test, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerter.models import Silence
from alerter.sim import Portfolio, SimServer
from alerter.store import open_store, schema
from tests.support.channels import webhook_collector
from tests.support.proc import alerter
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, rules_yaml, write_config
from tests.support.stores import sqlite_state_at

pytestmark = pytest.mark.timeout(180)


def meters(p: Portfolio) -> list[str]:
    return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]


async def test_silence_add_list_expire_and_history(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=4)
    a, b = meters(p)[:2]
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = str(write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())))
        assert (await alerter("once", "-c", cfg)).code == 0
        added = await alerter(
            "silence",
            "add",
            "-c",
            cfg,
            f"meter_id={a}",
            "action_type=~^IS_",
            "--duration",
            "2h",
            "--reason",
            "migrating",
        )
        assert added.code == 0, added.stderr
        silence_id = added.stdout.split()[0]
        listed = await alerter("silence", "list", "-c", cfg)
        assert silence_id in listed.stdout and "migrating" in listed.stdout
        store = open_store(f"sqlite:///{tmp_path}/s.db")  # one scheduled through the console, for next year
        await store.open()
        later = datetime.now(UTC) + timedelta(days=365)
        await store.add_silence(Silence("s-later", {"tags": ["x"]}, later, later + timedelta(hours=1), "maintenance"))
        await store.close()
        [line] = [x for x in (await alerter("silence", "list", "-c", cfg)).stdout.splitlines() if "s-later" in x]
        assert line.split()[1] == "pending"

        p.open_action(a, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        p.open_action(b, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert (await alerter("once", "-c", cfg)).code == 0
        notified = {e["meter"]["meter_id"] for r in hook.delivered() for e in r.body["data"]["events"]}
        assert notified == {b}

        history = await alerter("history", "-c", cfg, "--meter", a)
        assert history.code == 0
        assert "opened" in history.stdout and f"silenced {silence_id}" in history.stdout
        assert "notified crm" in (await alerter("history", "-c", cfg, "--meter", b)).stdout

        assert (await alerter("silence", "expire", "-c", cfg, silence_id)).code == 0
        assert "expired" in (await alerter("silence", "list", "-c", cfg, "--all")).stdout
        assert (await alerter("silence", "expire", "-c", cfg, "nope")).code == 2
        bad = await alerter("silence", "add", "-c", cfg, "no_such_field=1", "--reason", "x")
        assert bad.code == 2 and "no_such_field" in bad.stderr


async def test_dead_letter_replay_and_receiver_reenable(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=4)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = str(write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())))
        assert (await alerter("once", "-c", cfg)).code == 0
        p.open_action(meters(p)[0], action_type="HAS_AMI", action_code="AMI_0001")
        hook.script.append(410)  # the endpoint is gone: a dead letter, and the receiver disabled
        gone = await alerter("once", "-c", cfg)
        assert gone.code == 1
        dead = await alerter("dlq", "list", "-c", cfg)
        assert "crm" in dead.stdout and "410" in dead.stdout
        listed = await alerter("receivers", "list", "-c", cfg)
        assert "crm  disabled" in listed.stdout

        assert (await alerter("receivers", "enable", "-c", cfg, "crm")).code == 0
        assert (await alerter("receivers", "enable", "-c", cfg, "ghost")).code == 2
        replayed = await alerter("dlq", "replay", "-c", cfg, "--receiver", "crm")
        assert "replayed 1" in replayed.stdout
        assert (await alerter("once", "-c", cfg)).code == 0
        assert [r.body["data"]["events"][0]["type"] for r in hook.delivered()] == ["action.opened"]
        assert "no dead letters" in (await alerter("dlq", "list", "-c", cfg)).stdout


async def test_rules_test_prints_events_rules_and_messages(tmp_path: Path) -> None:
    action = {
        "program_identifier": "CCA",
        "delivery_period": "CAISO-CCA_2026_DEC",
        "enrollment_deadline_date_time": "2026-12-01T00:00:00Z",
        "action_type": "IS_AUTHORIZED",
        "action_description": "Re-authorize",
        "action_code": "AUTH_0001",
    }
    meter = {"meter_id": "11111111-1111-1111-1111-111111111111", "partner_reference": "site-7", "is_archived": False}
    before = tmp_path / "a.json"
    after = tmp_path / "b.json"
    before.write_text(json.dumps({"meters": [{**meter, "required_actions": {"partner": [], "leap": []}}]}))
    after.write_text(json.dumps([{**meter, "required_actions": {"partner": [action], "leap": []}}]))
    cfg = str(
        write_config(
            tmp_path,
            config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/s.db"),
            rules_yaml("http://127.0.0.1:2/h"),
        )
    )
    result = await alerter("rules", "test", "-c", cfg, "--before", str(before), "--after", str(after))
    assert result.code == 0, result.stderr
    assert "1 event(s)" in result.stdout
    assert "opened: meter site-7 IS_AUTHORIZED/AUTH_0001" in result.stdout
    assert "rule everything -> receiver crm" in result.stdout
    assert '"type": "alerter.notification"' in result.stdout
    assert not (tmp_path / "s.db").exists()  # offline: no state touched
    # resolved under rules that do not send resolutions: it says so, not that crm gets it
    (tmp_path / "rules.yaml").write_text(
        rules_yaml("http://127.0.0.1:2/h").replace("send_resolved: true", "send_resolved: false")
    )
    resolved = await alerter("rules", "test", "-c", cfg, "--before", str(after), "--after", str(before))
    assert "resolved (cleared): meter site-7" in resolved.stdout, resolved.stdout
    assert "no rule with send_resolved matches a receiver told of the opening: not notified" in resolved.stdout
    assert "-> receiver crm" not in resolved.stdout and "0 notification(s)" in resolved.stdout
    # a resolution goes only to receivers the opening went to, as the service sends it: here the
    # opening goes to crm (rule new-actions), the resolution would match crm2 alone (everything)
    (tmp_path / "rules.yaml").write_text(
        "receivers:\n  - {name: crm, console: {}}\n  - {name: crm2, console: {}}\n"
        "rules:\n  - {name: new-actions, match: {event: opened}, receivers: [crm]}\n"
        "  - {name: everything, receivers: [crm2]}\n"
    )
    told = await alerter("rules", "test", "-c", cfg, "--before", str(after), "--after", str(before))
    assert told.code == 0, told.stderr
    assert "receiver told of the opening: not notified" in told.stdout and "-> receiver crm2" not in told.stdout
    assert "0 notification(s)" in told.stdout, told.stdout
    after.write_text('{"meters": [{"partner_reference": "no id"}]}')
    bad = await alerter("rules", "test", "-c", cfg, "--before", str(before), "--after", str(after))
    assert bad.code == 2 and "meter_id" in bad.stderr


async def test_demo_shows_the_digest_and_stops_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alerter", "demo", "--meters", "500",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    try:
        async with asyncio.timeout(60):
            while "Initial sync" not in seen:
                line = await proc.stdout.readline()
                assert line, "the demo ended early"
                seen += line.decode()
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert "Leap simulator at http://127.0.0.1:" in seen


async def test_a_state_command_does_not_upgrade_a_state_file_an_older_service_writes(tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    with sqlite_state_at(state, len(schema.MIGRATIONS) - 1):  # as the version before left it
        pass
    cfg = str(
        write_config(
            tmp_path, config_yaml("http://127.0.0.1:9", f"sqlite:///{state}"), rules_yaml("http://127.0.0.1:9")
        )
    )
    refused = await alerter("silence", "list", "-c", cfg)
    assert refused.code != 0 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert f"schema version {len(schema.MIGRATIONS) - 1}" in line and "start `alerter run`" in line
    with sqlite3.connect(state) as db:
        assert db.execute(schema.CURRENT_VERSION).fetchone() == (len(schema.MIGRATIONS) - 1,)  # untouched
    db.close()
    store = open_store(f"sqlite:///{state}")  # the service of this version upgrades it
    await store.open()
    await store.close()
    listed = await alerter("silence", "list", "-c", cfg)
    assert listed.code == 0, listed.stderr
