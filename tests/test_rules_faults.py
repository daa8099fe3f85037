"""Rules that cannot freeze the service or vanish under it, as real processes and a real store.

A regex that would backtrack for minutes matches in linear time (RE2) and one that needs
backtracking is refused with its position; a silence an older version stored with such a
regex is skipped, logged once and counted. A reload is all or nothing: an empty or half-written
rules file is rejected or left alone and the old rules keep delivering; a service without
rules leaves events pending instead of consuming them.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from alerter.config import Config
from alerter.models import Silence
from alerter.reloading import reread
from alerter.sim import Portfolio, SimServer
from alerter.store import open_store
from alerter.store.base import META_LAST_CYCLE
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.proc import Service, alerter
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, load, rules_yaml, running, write_config

pytestmark = pytest.mark.timeout(180)

PATHOLOGICAL = "a" * 31 + "!"
"""With Python's backtracking `re`, `(a+)+$` needs about 2**31 steps on this (tens of seconds)."""


def rules_with(hook_url: str, *rules: str) -> str:
    """The support rules file with `rules` inserted before its catch-all rule `everything`."""
    text = rules_yaml(hook_url)
    head, tail = text.split("rules:\n", 1)
    return head + "rules:\n" + "".join(rules) + tail


def meters(p: Portfolio) -> list[str]:
    return [p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"]]


def delivered_meters(hook: WebhookCollector) -> list[str]:
    return [e["meter"]["meter_id"] for r in hook.delivered() for e in r.body["data"]["events"]]


async def wait_delivered(hook: WebhookCollector, count: int, timeout: float = 60) -> list[str]:
    for _ in range(int(timeout * 10)):
        if len(delivered_meters(hook)) >= count:
            break
        await asyncio.sleep(0.1)
    return delivered_meters(hook)


async def healthz(svc: Service) -> int:
    """GET /healthz with a bound: an event loop held by a regex would not answer in time."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"http://127.0.0.1:{svc.port}/healthz") as r:
        return r.status


# -- the commands --


async def test_check_refuses_a_regex_that_needs_backtracking_at_its_position(tmp_path: Path) -> None:
    async with webhook_collector() as hook:
        rule = '  - {name: odd, match: {partner_reference: {regex: "^(?!TEST-)"}}, receivers: [crm]}\n'
        cfg = write_config(tmp_path, config_yaml("http://127.0.0.1:1", "sqlite:///s.db"), rules_with(hook.url(), rule))
        result = await alerter("check", "-c", str(cfg))
    assert result.code == 2
    assert "Traceback" not in result.stderr
    rules_file = tmp_path / "rules.yaml"
    line = next(i for i, text in enumerate(rules_file.read_text().splitlines(), 1) if "(?!TEST-)" in text)
    col = rules_file.read_text().splitlines()[line - 1].index('"^(?!') + 1
    assert f"{rules_file}:{line}:{col}: regex '^(?!TEST-)': negative lookahead '(?!...)' is not supported" in (
        result.stderr
    ), result.stderr


async def test_check_accepts_nested_quantifiers_and_refuses_a_backreference(tmp_path: Path) -> None:
    async with webhook_collector() as hook:
        ok_rule = '  - {name: runs, match: {action_description: {regex: "(a+)+$"}}, receivers: [crm]}\n'
        cfg = write_config(
            tmp_path, config_yaml("http://127.0.0.1:1", "sqlite:///s.db"), rules_with(hook.url(), ok_rule)
        )
        ok = await alerter("check", "-c", str(cfg))
        assert ok.code == 0, ok.stderr
        bad_rule = '  - {name: runs, match: {action_description: {regex: "(a+)+\\\\1"}}, receivers: [crm]}\n'
        (tmp_path / "rules.yaml").write_text(rules_with(hook.url(), bad_rule))
        bad = await alerter("check", "-c", str(cfg))
    assert bad.code == 2
    assert f"{tmp_path / 'rules.yaml'}:" in bad.stderr
    assert "backreference '\\1' is not supported" in bad.stderr


async def test_check_refuses_rules_that_route_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, config_yaml("http://127.0.0.1:1", "sqlite:///s.db"), "")
    empty = await alerter("check", "-c", str(cfg))
    assert empty.code == 2
    assert empty.stderr.startswith(f"{tmp_path / 'rules.yaml'}:1:1: the rules file is empty"), empty.stderr
    (tmp_path / "rules.yaml").write_text("receivers: [{name: c, console: {}}]\nrules: []\n")
    none = await alerter("check", "-c", str(cfg))
    assert none.code == 2
    assert f"{tmp_path / 'rules.yaml'}:2:1: no rules defined: every event would be dropped" in none.stderr


async def test_silence_add_refuses_lookaround_in_one_line_and_takes_nested_quantifiers(tmp_path: Path) -> None:
    async with webhook_collector() as hook:
        cfg = str(
            write_config(
                tmp_path, config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url())
            )
        )
        store = open_store(f"sqlite:///{tmp_path}/s.db")  # the state a service made
        await store.open()
        await store.close()
        bad = await alerter("silence", "add", "-c", cfg, "action_description=~(?<=x)y", "--reason", "r")
        assert bad.code == 2
        assert bad.stderr.strip().count("\n") == 0, bad.stderr
        assert "lookbehind '(?<=...)' is not supported" in bad.stderr
        assert "Traceback" not in bad.stderr
        assert "no silences" in (await alerter("silence", "list", "-c", cfg)).stdout
        ok = await alerter("silence", "add", "-c", cfg, "action_description=~(a+)+$", "--reason", "r")
        assert ok.code == 0, ok.stderr


# -- a running service --


async def test_a_pathological_description_keeps_the_service_responsive(tmp_path: Path) -> None:
    """A rule and a silence with `(a+)+$` meet a description that is catastrophic for backtracking,
    and an older version's silence with a lookahead is in the store: the service keeps answering,
    routes as the rules say and skips the old silence (logged once, counted)."""
    p = Portfolio(30, action_rate=0.0, seed=8)
    state = f"sqlite:///{tmp_path}/s.db"
    store = open_store(state)
    await store.open()
    now = datetime.now(UTC)
    legacy = Silence("legacy1", {"action_description": {"regex": "^(?=a)"}}, now, now + timedelta(days=1), "old")
    await store.add_silence(legacy)
    await store.close()
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        rule = '  - {name: runs, match: {action_description: {regex: "(a+)+$"}}, receivers: [crm]}\n'
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, state, log_format="json", interval="1s"),
            rules_with(hook.url(), rule),
        )
        added = await alerter("silence", "add", "-c", str(cfg), "action_description=~^(a+)+b$", "--reason", "r")
        assert added.code == 0, added.stderr
        svc = await Service.start(str(cfg))
        try:
            await svc.wait_for_log("cycle_done")
            first, second = meters(p)[:2]
            p.open_action(first, action_type="IS_AUTHORIZED", action_code="AUTH_0001", action_description=PATHOLOGICAL)
            for _ in range(5):
                assert await healthz(svc) == 200
                await asyncio.sleep(0.5)
            assert await wait_delivered(hook, 1) == [first]  # no rule but `everything` matched; not silenced
            assert hook.delivered()[0].body["data"]["rule"] == "everything"
            p.open_action(second, action_type="HAS_AMI", action_code="AMI_0001", action_description="a" * 40)
            assert await healthz(svc) == 200
            assert await wait_delivered(hook, 2) == [first, second]
            assert hook.delivered()[1].body["data"]["rule"] == "runs"
            skipped = [e for e in svc.logs if e.get("event") == "silence_skipped"]
            assert len(skipped) == 1 and skipped[0]["silence_id"] == "legacy1"
            assert "lookahead" in skipped[0]["problem"]
            metrics = (await svc.get("/metrics"))[1]
            assert "alerter_silences_skipped_total 1.0" in metrics
        finally:
            assert await svc.stop() == 0


@asynccontextmanager
async def reloading(tmp_path: Path) -> AsyncIterator[tuple[Portfolio, WebhookCollector, Service]]:
    """`alerter run` on a 1 s poll with the default rules file, after its first cycle."""
    p = Portfolio(30, action_rate=0.0, seed=8)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        cfg = write_config(
            tmp_path,
            config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
            rules_yaml(hook.url()),
        )
        svc = await Service.start(str(cfg))
        try:
            await svc.wait_for_log("cycle_done")
            yield p, hook, svc
        finally:
            assert await svc.stop() == 0


async def test_sighup_with_an_empty_rules_file_is_rejected_and_the_old_rules_deliver(tmp_path: Path) -> None:
    async with reloading(tmp_path) as (p, hook, svc):
        (tmp_path / "rules.yaml").write_text("")
        svc.send(signal.SIGHUP)
        rejected = await svc.wait_for_log("rules_reload_rejected")
        assert rejected["problems"] == [
            f"{tmp_path / 'rules.yaml'}:1:1: the rules file is empty (expected receivers, defaults, rules)"
        ]
        status, body = await svc.get("/readyz")
        assert status == 200, body  # the old rules are in force
        reload: dict[str, Any] = orjson.loads(body)["rules_reload"]
        assert reload["result"] == "rejected" and "the rules file is empty" in reload["problems"][0]
        assert 'alerter_rules_reload_total{result="rejected"} 1.0' in (await svc.get("/metrics"))[1]

        m = meters(p)[0]
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        assert await wait_delivered(hook, 1) == [m]
        await asyncio.sleep(6)  # a watch tick or more: the empty file is not picked up either
        assert not any(e.get("event") == "rules_reloaded" for e in svc.logs)

        (tmp_path / "rules.yaml").write_text(rules_yaml(hook.url()))
        svc.send(signal.SIGHUP)
        await svc.wait_for_log("rules_reloaded")
        assert orjson.loads((await svc.get("/readyz"))[1])["rules_reload"]["result"] == "ok"


async def test_a_reload_names_the_settings_only_a_restart_applies(tmp_path: Path) -> None:
    """The config's poll interval, page size and Leap key edited with the rules: the rules apply,
    and the reload says which settings still wait for a restart, by name (a key is not repeated),
    until a later reload leaves them as the process started with them."""
    async with reloading(tmp_path) as (_, _hook, svc):
        config = tmp_path / "config.yaml"
        started = config.read_text()
        edited = started.replace("interval: 1s", "interval: 2s").replace("page_size: 500", "page_size: 200")
        config.write_text(edited.replace(f"api_key: {API_KEY}", "api_key: other-key-0123456789"))
        svc.send(signal.SIGHUP)
        warned = await svc.wait_for_log("reload_needs_restart")
        assert warned["settings"] == ["source.api_key", "source.page_size", "poll.interval"]
        body = (await svc.get("/readyz"))[1]
        assert orjson.loads(body)["rules_reload"]["needs_restart"] == warned["settings"]
        assert "other-key" not in body and not any("other-key" in str(e) for e in svc.logs)

        config.write_text(started)
        svc.send(signal.SIGHUP)
        await svc.wait_for_log("rules_reloaded", count=2)
        assert orjson.loads((await svc.get("/readyz"))[1])["rules_reload"]["needs_restart"] == []


async def test_the_watcher_does_not_apply_a_file_caught_half_written(tmp_path: Path) -> None:
    """A valid prefix of the new file (its first rule only, without the catch-all) lives for less
    than a watch tick: the watcher waits for the file to read the same twice, so only the whole
    file is applied."""
    async with reloading(tmp_path) as (_, hook, svc):
        whole = rules_with(hook.url(), "  - {name: ami, match: {action_type: HAS_AMI}, receivers: [crm]}\n")
        prefix = whole[: whole.index("  - name: everything")]
        (tmp_path / "rules.yaml").write_text(prefix)
        await asyncio.sleep(2)
        (tmp_path / "rules.yaml").write_text(whole)
        reloaded = await svc.wait_for_log("rules_reloaded", timeout=30)
        assert reloaded["rules"] == 2
        await asyncio.sleep(6)
        assert [e["rules"] for e in svc.logs if e.get("event") == "rules_reloaded"] == [2]
        assert not any(e.get("event") == "rules_reload_rejected" for e in svc.logs)


# -- in process: the service and the store --


async def test_a_service_without_rules_leaves_events_pending_for_rules_to_come(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        config = load(path)
        bare = Config.model_validate(config.model_dump(exclude={"rules"}))  # built in code: no rules
        m = meters(p)[0]
        p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        async with running(bare) as service:
            assert not service.health.rules_loaded
            assert service.health.readiness(datetime.now(UTC)) == (False, "rules not loaded")
            await service.run_cycle(flush_all=True)
            pending = await service.store.pending_events(100)
            assert [e.obligation.meter_id for e in pending] == [m]
        async with running(config) as service:
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0
            assert await service.store.pending_events(100) == []
        assert delivered_meters(hook) == [m]


async def test_an_event_no_rule_takes_is_counted_not_silently_dropped(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        narrow = rules_yaml(hook.url()).replace(
            "  - name: everything\n", "  - name: ami\n    match: {action_type: HAS_AMI}\n"
        )
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), narrow)
        async with running(load(path)) as service:
            await service.run_cycle(flush_all=True)
            a, b = meters(p)[:2]
            p.open_action(a, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            p.open_action(b, action_type="HAS_AMI", action_code="AMI_0001")
            await service.run_cycle(flush_all=True)
            assert (await service.drain(10)).undelivered == 0
            assert delivered_meters(hook) == [b]
            assert 'alerter_events_unrouted_total{type="opened"} 1.0' in service.metrics.render().decode()


async def test_a_reload_with_an_unusable_webhook_url_is_rejected_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        async with running(load(path)) as service:
            before = (service.ruleset, service.notifiers)
            (tmp_path / "rules.yaml").write_text(rules_yaml("http://127.0.0.1:99999/hook?token=SECRET123"))
            assert service.reload() == "rejected"
            assert service.health.last_reload is not None
            [problem] = service.health.last_reload["problems"]
            assert "webhook url cannot be read: Port out of range" in problem and "SECRET123" not in problem
            # a receiver the loader passes but the notifiers cannot build: nothing is swapped either
            monkeypatch.setattr("alerter.service.build_notifiers", _unbuildable)
            (tmp_path / "rules.yaml").write_text(rules_yaml(hook.url()).replace("name: crm", "name: crm2"))
            assert service.reload() == "rejected"
            assert (service.ruleset, service.notifiers) == before
            assert service.deliverer.notifiers is before[1]


def _unbuildable(*_: object) -> dict[str, object]:
    raise ValueError("cannot build it")


async def test_a_reload_that_drops_a_receiver_dead_letters_its_queue_visibly(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        async with running(load(path)) as service:
            await service.run_cycle(flush_all=True)
            m = meters(p)[0]
            p.open_action(m, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
            await service.run_cycle(flush_all=True)  # a notification for crm is queued, not sent yet
            renamed = rules_yaml(hook.url()).replace("name: crm", "name: crm2").replace("[crm]", "[crm2]")
            (tmp_path / "rules.yaml").write_text(renamed)
            assert service.reload() == "ok"
            assert service.health.last_reload is not None and service.health.last_reload["result"] == "ok"
            await service.drain(5)
            dead = await service.store.dead_letters(None, None)
            assert [(d.receiver, d.last_error) for d in dead] == [("crm", "receiver not configured")]
            assert hook.delivered() == []


def test_a_reload_never_applies_a_file_that_changed_while_it_was_read(tmp_path: Path) -> None:
    """A writer rewrites the rules file (each time a new, valid version) as fast as it can while
    the service re-reads it: a read that overlapped a write is `unstable` and applies nothing.
    (A read that only ever saw the file empty, between a truncation and its write, is rejected.)"""
    text = rules_yaml("http://127.0.0.1:1/hook")
    path = write_config(tmp_path, config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/s.db"), text)
    config = load(path)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            (tmp_path / "rules.yaml").write_text(f"{text}# version {i}\n")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [reread(config) for _ in range(300)]
    finally:
        stop.set()
        thread.join()
    assert any(r.result == "unstable" and r.config is None for r in results)
    for r in results:
        if r.result == "ok":
            assert r.config is not None and [x.name for x in r.config.ruleset.rules] == ["everything"]
        elif r.result == "rejected":
            assert r.problems == [
                f"{tmp_path / 'rules.yaml'}:1:1: the rules file is empty (expected receivers, defaults, rules)"
            ]


async def test_a_follower_looks_at_the_leaders_last_cycle_between_its_polls(tmp_path: Path) -> None:
    # read once a poll interval only, the leader's last cycle could look 2 intervals old and more
    p = Portfolio(20, action_rate=0.0, seed=5)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        path = write_config(tmp_path, config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db"), rules_yaml(hook.url()))
        async with running(load(path)) as service:
            now = datetime.now(UTC)
            await service.store.set_meta({META_LAST_CYCLE: (now - timedelta(minutes=11)).isoformat()})
            service.leader = False
            await service.follow_step()
            assert service.health.readiness(now)[0] is False  # 11 minutes: past 2 × 5m
            await service.store.set_meta({META_LAST_CYCLE: (now - timedelta(minutes=1)).isoformat()})
            await service.follow_step()
            assert service.health.readiness(now) == (True, "ok")
            service.leader = True  # the leader's own cycles set it: it does not look
            await service.store.set_meta({META_LAST_CYCLE: (now - timedelta(hours=1)).isoformat()})
            await service.follow_step()
            assert service.health.readiness(now) == (True, "ok")
