"""Bounded notifications: a group or digest larger than a receiver's `max_events` goes out in
parts, each with its own stable id, `data.part` and (a digest) the whole digest's counts; every
obligation reaches every receiver exactly once across the parts, under the same ids on retries."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from alerter import cycle
from alerter.delivery import RetryPolicy
from alerter.grouping import DIGEST_LISTED, digest, flush, notification_id, plan, windows
from alerter.models import Event
from alerter.routes import Router
from alerter.rulefile import RuleSet, compile_rules
from alerter.service import Service
from alerter.sim import Portfolio, SimServer
from alerter.store.memory import GroupBook
from alerter.yamlload import parse_yaml
from tests.support.channels import (
    FakeSlack,
    SmtpServer,
    WebhookCollector,
    fake_slack,
    smtp_server,
    webhook_collector,
)
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, running, write_config
from tests.test_rules import NOW, make_event

RULES = """\
receivers:
  - {name: hook, webhook: {url: "http://127.0.0.1:9/h", max_events: 3}}
  - {name: mail, email: {to: [a@example.com], from: b@example.com, smtp: {host: 127.0.0.1}, max_events: 4}}
  - {name: chat, slack: {token: xoxb-t, channel: "#c"}}
  - {name: big, webhook: {url: "http://127.0.0.1:9/h"}}
rules:
  - {name: all, group_by: [action_type], group_wait: 0s, receivers: [hook, mail, chat, big]}
"""


def ruleset() -> RuleSet:
    return compile_rules([parse_yaml(RULES, "t.yaml", env={})])


def events(n: int, *, initial: bool = False) -> list[Event]:
    return [
        make_event(meter_id=f"M-{i:03d}", deadline=NOW + timedelta(days=(n - i)), initial=initial) for i in range(n)
    ]


def test_a_large_group_flushes_in_parts_with_stable_ids() -> None:
    rs = ruleset()
    evs = events(8)
    book = GroupBook()
    book.apply(plan(evs, Router(rs), book.heads, {}, [], NOW))
    due = book.due(NOW, force=True)
    by_id = {e.id: e for e in evs}
    first = flush(due, by_id, NOW, ruleset=rs)
    again = flush(due, by_id, NOW, ruleset=rs)
    assert [n.id for n in first.notifications] == [n.id for n in again.notifications]
    per = {r: [n for n in first.notifications if n.receiver == r] for r in ("hook", "mail", "chat", "big")}
    assert [len(n.events) for n in per["hook"]] == [3, 3, 2]
    assert [n.part for n in per["hook"]] == [(1, 3), (2, 3), (3, 3)]
    assert [len(n.events) for n in per["mail"]] == [4, 4]
    assert [len(n.events) for n in per["big"]] == [8] and per["big"][0].part == (1, 1)
    for receiver, notes in per.items():
        assert [e.id for n in notes for e in n.events] == [e.id for e in evs], receiver  # each once, in order
        group = next(g for g in due if g.receiver == receiver)
        assert notes[0].id == notification_id(group.key, group.pending[0])  # part 1 keeps the whole's id
    assert len({n.id for n in first.notifications}) == len(first.notifications)


def test_a_large_digest_comes_in_parts_each_with_the_whole_summary() -> None:
    rs = ruleset()
    evs = events(10, initial=True)
    notes = digest(evs, Router(rs), NOW)
    assert notes == digest(list(reversed(evs)), Router(rs), NOW)  # the same ids and parts, whatever the order
    hook = [n for n in notes if n.receiver == "hook"]
    assert [n.part for n in hook] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(n.summary is not None and n.summary["total"] == 10 for n in hook)
    ordered = [e.id for n in hook for e in n.events]
    assert ordered == [e.id for e in reversed(evs)]  # the most urgent deadline first, across parts
    [chat] = [n for n in notes if n.receiver == "chat"]
    assert len(chat.events) == min(10, DIGEST_LISTED) and chat.summary and chat.summary["total"] == 10
    [big] = [n for n in notes if n.receiver == "big"]
    assert big.part == (1, 1) and len(big.events) == 10


MULTI = """\
receivers:
  - name: crm
    webhook: {{url: "{hook}", secret: {secret}, max_events: 4}}
  - name: team
    email: {{to: [t@example.com], from: a@example.com, smtp: {{host: 127.0.0.1, port: {smtp}}}, max_events: 5}}
  - name: ops
    slack: {{token: xoxb-test-token, channel: "#leap", api_url: "{slack}"}}
defaults:
  group_by: [action_type]
  group_wait: 0s
  group_interval: 0s
rules:
  - name: everything
    receivers: [crm, team, ops]
"""


@asynccontextmanager
async def multi(tmp_path: Path, p: Portfolio) -> AsyncIterator[tuple[Service, WebhookCollector, SmtpServer, FakeSlack]]:
    """The service (SQLite, initial sync `digest`) on the simulator, with MULTI's three receivers."""
    async with (
        SimServer(p, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        smtp_server() as smtp,
        fake_slack() as slack,
    ):
        rules = MULTI.format(hook=hook.url(), secret=WEBHOOK_SECRET, smtp=smtp.port, slack=slack.api_url)
        cfg = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", initial_sync="digest"), rules)
        async with running(load(cfg)) as service:
            yield service, hook, smtp, slack


async def test_digest_and_group_in_parts_reach_every_receiver_once_with_the_same_ids_on_retry(
    tmp_path: Path,
) -> None:
    p = Portfolio(60, action_rate=0.0, seed=5)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]
    for m in meters[:11]:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with multi(tmp_path, p) as (service, hook, smtp, slack):
        hook.script.extend([503, 200, 500])  # the first and the third request fail once
        service.deliverer.policies["webhook"] = RetryPolicy(base=0.2, cap=0.5, max_attempts=5, budget=600)
        await service.run_cycle(flush_all=True)
        assert (await service.drain(30)).undelivered == 0
        digests = [r for r in hook.delivered() if r.body["type"] == "alerter.digest"]
        assert sorted(r.body["data"]["part"]["index"] for r in digests) == [1, 2, 3]
        assert {r.body["data"]["part"]["count"] for r in digests} == {3}
        assert all(r.body["data"]["counts"]["total"] == 11 and len(r.body["data"]["events"]) <= 4 for r in digests)
        got = Counter(e["meter"]["meter_id"] for r in digests for e in r.body["data"]["events"])
        assert got == Counter(meters[:11])  # every obligation once across the parts
        failed = [r for r in hook.received if r.status >= 500]
        assert len(failed) == 2 and all(r.verified for r in hook.received)
        delivered_ids = {r.headers["webhook-id"] for r in hook.delivered()}
        assert {r.headers["webhook-id"] for r in failed} <= delivered_ids  # retried under the same id
        assert len(delivered_ids) == len(hook.delivered())  # and sent once
        subjects = sorted(str(m["Subject"]) for m in smtp.messages)
        assert len(subjects) == 3 and all("(part " in s and "of 3)" in s for s in subjects)
        [post] = slack.posted()
        assert "Initial sync: 11 open actions" in post.args["text"]

        # after the initial sync, a group of 9 new actions: 3 webhook parts, 2 mails, 1 Slack message
        hook.received.clear()
        for m in meters[11:20]:
            p.open_action(m, action_type="DOCUMENTS_SIGNED", action_code="DOCS_0001")
        await service.run_cycle(flush_all=True)
        assert (await service.drain(30)).undelivered == 0
        parts = [r.body["data"] for r in hook.delivered()]
        assert sorted((d["part"]["index"], d["part"]["count"], len(d["events"])) for d in parts) == [
            (1, 3, 4),
            (2, 3, 4),
            (3, 3, 1),
        ]
        got = Counter(e["meter"]["meter_id"] for d in parts for e in d["events"])
        assert got == Counter(meters[11:20])
        assert len(smtp.messages) == 5
        assert len(slack.posted()) == 2


async def test_a_flush_in_more_parts_than_a_claim_holds_goes_out_in_the_order_of_their_index(
    tmp_path: Path,
) -> None:
    """40 new actions in one group: 10 webhook parts of 4, one at a time (`in_flight: 1`),
    claimed 4 at a time: parts 1 to 10 in order (SQLite keeps the order they were written in)."""
    p = Portfolio(60, action_rate=0.0, seed=7)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]
    async with multi(tmp_path, p) as (service, hook, _, _):
        await service.run_cycle(flush_all=True)  # the initial sync: nothing open
        assert (await service.drain(30)).undelivered == 0
        hook.received.clear()
        service.deliverer.policies["webhook"] = RetryPolicy(base=0.2, cap=0.5, max_attempts=5, budget=600, in_flight=1)
        assert service.deliverer.claim_limit("crm") == 4
        for m in meters[:40]:
            p.open_action(m, action_type="DOCUMENTS_SIGNED", action_code="DOCS_0001")
        await service.run_cycle(flush_all=True)
        assert (await service.drain(30)).undelivered == 0
    assert [r.body["data"]["part"]["index"] for r in hook.delivered()] == list(range(1, 11))


def test_flushing_window_by_window_makes_the_same_parts_as_one_flush() -> None:
    rs = ruleset()
    evs = events(23)
    book = GroupBook()
    book.apply(plan(evs, Router(rs), book.heads, {}, [], NOW))
    [group] = [g for g in book.due(NOW, force=True) if g.receiver == "hook"]
    by_id = {e.id: e for e in evs}
    whole = flush([group], by_id, NOW, ruleset=rs).notifications
    windowed = [
        n
        for window, parts_of in windows(group, 3, 7)  # windows of two parts (6 events)
        for n in flush([window], by_id, NOW, ruleset=rs, parts_of=parts_of).notifications
    ]
    assert [(n.id, n.part, n.events) for n in windowed] == [(n.id, n.part, n.events) for n in whole]
    assert [n.part for n in whole][-1] == (8, 8)


async def test_a_digest_read_in_batches_carries_the_whole_summary_and_is_rebuilt_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cycle, "DIGEST_BATCH", 4)  # the backlog is read 4 events at a time
    p = Portfolio(40, action_rate=0.0, seed=6)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:13]
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with multi(tmp_path, p) as (service, hook, _smtp, _slack):
        await service.poller.run_cycle(service.clock())
        now = service.clock()
        await cycle.digest(service.steps, service.router, service.ruleset, now)
        with sqlite3.connect(tmp_path / "s.db") as raw:  # killed before the backlog was marked consumed
            first = sorted(raw.execute("SELECT id, receiver FROM notifications"))
            raw.execute("UPDATE events SET routed = FALSE WHERE initial")
        await cycle.digest(service.steps, service.router, service.ruleset, now)
        with sqlite3.connect(tmp_path / "s.db") as raw:
            assert sorted(raw.execute("SELECT id, receiver FROM notifications")) == first  # the same parts
            assert raw.execute("SELECT COUNT(*) FROM events WHERE NOT routed").fetchone() == (0,)
        assert Counter(r for _, r in first) == {"crm": 4, "team": 3, "ops": 1}
        assert (await service.drain(30)).undelivered == 0
        bodies = [r.body["data"] for r in hook.delivered()]
        assert all(d["counts"]["total"] == 13 and d["part"]["count"] == 4 for d in bodies)
        deadlines = [
            e["action"]["enrollment_deadline_date_time"] or "~"
            for d in sorted(bodies, key=lambda d: d["part"]["index"])
            for e in d["events"]
        ]
        assert deadlines == sorted(deadlines)  # the most urgent first, across the parts
        assert Counter(e["meter"]["meter_id"] for d in bodies for e in d["events"]) == Counter(meters)


async def test_obligations_a_slack_digest_only_counts_still_get_their_resolutions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alerter import grouping

    monkeypatch.setattr(grouping, "DIGEST_LISTED", 2)  # the Slack digest lists 2, counts the rest
    p = Portfolio(40, action_rate=0.0, seed=7)
    meters = [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]][:5]
    for m in meters:
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
    async with multi(tmp_path, p) as (service, _hook, _smtp, slack):
        await service.run_cycle(flush_all=True)
        assert (await service.drain(30)).undelivered == 0
        [digest_post] = slack.posted()
        assert "Initial sync: 5 open actions" in digest_post.args["text"]
        for m in meters:
            p.resolve_action(m, "AUTH_0001")
        await service.run_cycle(flush_all=True)
        assert (await service.drain(30)).undelivered == 0
        obligations = (await service.store.load_obligations(meters)).values()
        assert {o.status for o in obligations} == {"resolved"}
        told = await service.store.notified_receivers([o.key_id for o in obligations])
        assert len(told) == 5 and all("ops" in receivers for receivers in told.values())
        resolved = [c for c in slack.calls[slack.calls.index(digest_post) + 1 :] if c.method.startswith("chat.")]
        text = " ".join(str(c.args.get("text", "")) for c in resolved)
        assert all(p.record(p.index_of(m) or 0)["partner_reference"] in text for m in meters), text
