"""One action through the whole pipeline to Slack, email and a webhook at once; its resolution
updates the Slack message, answers in its thread and threads the email; self-alerts reach ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerter.errors import SourceError
from alerter.sim import Portfolio, SimServer
from tests.support.channels import fake_slack, smtp_server, webhook_collector
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, running, write_config

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
defaults:
  group_by: [action_type]
  group_wait: 0s
  group_interval: 0s
  send_resolved: true
rules:
  - name: authorizations
    match: {{action_type: IS_AUTHORIZED}}
    receivers: [ops-slack, enrollment, crm]
  - name: rest
    receivers: [crm]
"""


async def test_one_action_reaches_slack_email_and_webhook_then_resolves(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=9)
    meter = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
    reference = p.meter(meter)["partner_reference"]
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
            p.open_action(meter, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0

            [post] = slack.posted()
            assert reference in post.args["text"]
            assert post.args["blocks"]
            [mail] = smtp.messages
            assert "IS_AUTHORIZED" in str(mail["Subject"])
            assert mail["Message-ID"]
            assert {part.get_content_type() for part in mail.walk()} >= {"text/plain", "text/html"}
            [delivery] = hook.delivered()
            assert delivery.verified
            assert delivery.body["data"]["events"][0]["type"] == "action.opened"
            assert delivery.body["data"]["rule"] == "authorizations"

            p.resolve_action(meter, "AUTH_0001")
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0

            assert [u.args["ts"] for u in slack.updates()] == [slack.messages and next(iter(slack.messages))[1]]
            replies = [c for c in slack.posted() if c.args.get("thread_ts")]
            assert len(replies) == 1
            assert replies[0].args["thread_ts"] == slack.updates()[0].args["ts"]
            assert len(smtp.messages) == 2
            assert smtp.messages[1]["In-Reply-To"] == mail["Message-ID"]
            assert [r.body["data"]["events"][0]["type"] for r in hook.delivered()] == [
                "action.opened",
                "action.resolved",
            ]


async def test_self_alert_reaches_operations_receiver_when_key_refused(tmp_path: Path) -> None:
    async with SimServer(Portfolio(5), api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        rules = f"""\
receivers:
  - name: ops
    webhook: {{url: "{hook.url()}", secret: {WEBHOOK_SECRET}}}
rules:
  - name: all
    receivers: [ops]
"""
        config = (
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", api_key="revoked-123") + "operations_receiver: ops\n"
        )
        cfg = write_config(tmp_path, config, rules)
        async with running(load(cfg)) as service:
            for _ in range(2):  # the condition is reported once, not per failed cycle
                with pytest.raises(SourceError):
                    await service.run_cycle()
                await service.alerts.flush()
            await service.drain(5)
    alerts = [r.body for r in hook.delivered()]
    assert len(alerts) == 1
    assert alerts[0]["type"] == "alerter.alert"
    assert alerts[0]["data"]["group"]["alert"] == "auth_refused"
    assert "revoked-123" not in str(alerts[0])
