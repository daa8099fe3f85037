"""A changed action says what changed, old → new, on every channel; a mixed group is counted as it is;
`alerter history` finds a meter by the partner reference its notifications show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerter.sim import Portfolio, SimServer
from tests.support.channels import fake_slack, smtp_server, webhook_collector
from tests.support.proc import alerter
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config

pytestmark = pytest.mark.timeout(180)

RULES = """\
receivers:
  - name: ops-slack
    slack: {{token: xoxb-test-token, channel: "#leap-actions", api_url: "{slack}"}}
  - name: enrollment
    email:
      to: [enrollment@example.com]
      from: alerter@example.com
      smtp: {{host: 127.0.0.1, port: {smtp}}}
  - name: crm
    webhook: {{url: "{hook}", secret: {secret}}}
  - name: console
    console: {{}}
defaults:
  group_by: [action_type]
  group_wait: 0s
  group_interval: 0s
  send_resolved: true
rules:
  - name: everything
    receivers: [ops-slack, enrollment, crm, console]
"""


def _midnight(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)


def _console(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the console receiver printed (the service's own logs aside)."""
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("── ", "   "))]


def _text(part: object) -> str:
    return str(part.get_content())  # type: ignore[attr-defined]


async def test_a_changed_deadline_reads_old_to_new_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = Portfolio(30, action_rate=0.0, seed=9)
    first, second, third = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:3]
    old, new = _midnight(30), _midnight(37)
    moved = f"deadline {old:%Y-%m-%d} → {new:%Y-%m-%d}"
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        fake_slack() as slack,
        smtp_server() as smtp,
        webhook_collector([WEBHOOK_SECRET]) as hook,
    ):
        rules = RULES.format(slack=slack.api_url, smtp=smtp.port, hook=hook.url(), secret=WEBHOOK_SECRET)
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules)
        async with running(load(cfg)) as service:
            await service.run_cycle(flush_all=True)
            for meter in (first, second):
                p.open_action(meter, action_type="IS_AUTHORIZED", enrollment_deadline_date_time=old)
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0
            capsys.readouterr()

            p.change_action(first, "AUTH_0001", deadline=new)
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0

            changed = hook.delivered()[-1].body["data"]["events"]
            assert [e["type"] for e in changed] == ["action.changed"]
            assert changed[0]["previous"] == {"deadline": old.isoformat().replace("+00:00", "Z")}
            assert changed[0]["action"]["enrollment_deadline_date_time"] == new.isoformat().replace("+00:00", "Z")
            blocks = slack.posted()[-1].args["blocks"]
            assert blocks[0]["text"]["text"] == "Changed: 1 meter needs IS_AUTHORIZED"
            assert f"_Changed: {moved}_" in blocks[2]["text"]["text"]
            mail = smtp.messages[-1]
            plain, html = (part for part in mail.walk() if part.get_content_type() in ("text/plain", "text/html"))
            assert f"Changed: {moved}" in _text(plain) and moved in _text(html)
            title, line = _console(capsys)
            assert title.startswith("── Changed: 1 meter needs IS_AUTHORIZED")
            assert line.startswith("   Changed ") and f" · {moved} (in 3" in line, line

            # One group holding a new action and a resolution is counted as such.
            p.resolve_action(second, "AUTH_0001")
            p.open_action(third, action_type="IS_AUTHORIZED", enrollment_deadline_date_time=old)
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0
            assert str(smtp.messages[-1]["Subject"]) == "[alerter] 1 meter needs IS_AUTHORIZED, 1 resolved"
            assert _console(capsys)[0].startswith("── 1 meter needs IS_AUTHORIZED, 1 resolved")


async def test_history_takes_the_partner_reference_notifications_show(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    meter = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
    reference = p.meter(meter)["partner_reference"]
    old, new = _midnight(20), _midnight(13)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = str(write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())))
        p.open_action(meter, action_type="HAS_AMI", enrollment_deadline_date_time=old)
        assert (await alerter("once", "-c", cfg)).code == 0
        p.change_action(meter, action_type="HAS_AMI", deadline=new)
        assert (await alerter("once", "-c", cfg)).code == 0
        assert reference in str(hook.delivered()[-1].body["data"]["events"][0]["meter"])

    by_reference = await alerter("history", "-c", cfg, "--meter", reference)
    assert by_reference.code == 0, by_reference.stderr
    lines = by_reference.stdout.splitlines()
    assert lines[0] == f"meter {meter} ({reference})"
    assert " opened " in lines[1] and "HAS_AMI/AMI_0001" in lines[1]
    assert " changed " in lines[3] and f"deadline {old:%Y-%m-%d} → {new:%Y-%m-%d}" in lines[3]
    assert any(line.strip().startswith("notified crm in ") for line in lines)

    by_id = await alerter("history", "-c", cfg, "--meter", meter)
    assert by_id.code == 0 and by_id.stdout.splitlines() == lines[1:]

    unknown = await alerter("history", "-c", cfg, "--meter", "site-9999999")
    assert unknown.code == 0 and unknown.stdout.startswith("no history for meter site-9999999")
