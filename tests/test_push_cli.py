"""`alerter leap-webhooks` against the simulator's subscription API, and
`alerter run` killed with SIGKILL between acknowledging a push and processing it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest
from aiohttp import web

from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.proc import Service, alerter
from tests.support.push import LEAP_SECRET, OLD_SECRET, PATH, REQUIRED, wait_until, with_webhooks
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, rules_yaml, write_config

pytestmark = pytest.mark.timeout(180)


async def test_register_is_idempotent_list_hides_secrets_test_and_delete(tmp_path: Path) -> None:
    async with SimServer(Portfolio(10), api_key=API_KEY) as sim, webhook_collector() as receiver:
        cfg = str(write_config(tmp_path, with_webhooks(config_yaml(sim.url, "sqlite:///x.db")), rules_yaml("http://x")))
        url = receiver.url(PATH)
        first = await alerter("leap-webhooks", "register", "-c", cfg, "--url", url)
        assert first.code == 0, first.stderr
        assert first.stdout.startswith("registered ")
        again = await alerter("leap-webhooks", "register", "-c", cfg, "--url", url)
        assert again.code == 0 and again.stdout.startswith("updated "), again
        assert len(sim.push.subscriptions) == 1
        (sub,) = sim.push.subscriptions.values()
        assert sub.event_types == [REQUIRED] and sub.headers == [{"name": "x-api-key", "value": LEAP_SECRET}]

        listed = await alerter("leap-webhooks", "list", "-c", cfg)
        assert listed.code == 0 and f"{sub.webhook_id}  {url}  {REQUIRED}  headers: x-api-key  (ours)" in listed.stdout
        for out in (first, again, listed):
            assert LEAP_SECRET not in out.stdout + out.stderr and OLD_SECRET not in out.stdout + out.stderr

        tested = await alerter("leap-webhooks", "test", "-c", cfg)
        assert tested.code == 0 and f"{sub.webhook_id} {url}: ok (HTTP 200," in tested.stdout
        assert receiver.received[-1].headers["x-api-key"] == LEAP_SECRET
        receiver.script.append(500)
        failing = await alerter("leap-webhooks", "test", "-c", cfg, "--url", url)
        assert failing.code == 1 and ": failed (HTTP 500," in failing.stdout

        deleted = await alerter("leap-webhooks", "delete", "-c", cfg, "--url", url)
        assert deleted.code == 0 and deleted.stdout.startswith(f"deleted {sub.webhook_id}")
        assert sim.push.subscriptions == {}
        gone = await alerter("leap-webhooks", "delete", "-c", cfg, "--url", url)
        assert gone.code == 1 and gone.stderr.count("\n") == 1 and "no webhook subscription for" in gone.stderr


async def test_leap_webhooks_errors_are_one_line(tmp_path: Path) -> None:
    async with SimServer(Portfolio(10), api_key=API_KEY) as sim:
        good = with_webhooks(config_yaml(sim.url, "sqlite:///x.db"))
        cfg = str(write_config(tmp_path, good, rules_yaml("http://x")))
        usage = await alerter("leap-webhooks", "register", "-c", cfg)
        assert (
            usage.code == 2
            and usage.stderr == "alerter: leap-webhooks register needs --url (the endpoint Leap should call)\n"
        )
        sim.faults.add("403")
        refused = await alerter("leap-webhooks", "list", "-c", cfg)
        assert (refused.code, refused.stderr) == (
            1,
            "alerter: Leap refused access (403): this API key may not manage webhooks\n",
        )
        wrong_key = tmp_path / "wrong"
        wrong_key.mkdir()
        bad = str(write_config(wrong_key, good.replace(f"api_key: {API_KEY}", "api_key: nope"), rules_yaml("http://x")))
        unauthorized = await alerter("leap-webhooks", "list", "-c", bad)
        assert (unauthorized.code, unauthorized.stderr) == (
            1,
            "alerter: Leap refused the API key (401): check source.api_key\n",
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        moved = good.replace(f"base_url: {sim.url}", f"base_url: {sim.url}/nope")
        missing = await alerter(
            "leap-webhooks", "list", "-c", str(write_config(elsewhere, moved, rules_yaml("http://x")))
        )
        assert missing.code == 1 and "404" in missing.stderr and missing.stderr.count("\n") == 1
        off = tmp_path / "off"
        off.mkdir()
        plain = str(write_config(off, config_yaml(sim.url, "sqlite:///x.db"), rules_yaml("http://x")))
        unconfigured = await alerter("leap-webhooks", "list", "-c", plain)
        assert unconfigured.code == 2 and "source.webhooks is not configured" in unconfigured.stderr


async def test_leap_webhooks_errors_echoing_the_request_do_not_repeat_its_secrets(tmp_path: Path) -> None:
    """Leap (or a gateway) refusing the subscription with the request's key and body in its
    message: the line says why, without the API key or the push secret."""

    async def echo(request: web.Request) -> web.Response:
        if request.method == "GET" and "list" not in request.query:  # `register` lists first
            return web.json_response({"webhooks": []})
        said = f"refused {request.headers['Authorization']} {await request.text()}"
        return web.json_response({"message": said}, status=422)

    app = web.Application()
    app.router.add_route("*", "/v1.1/webhooks", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        cfg = str(write_config(tmp_path, with_webhooks(config_yaml(url, "sqlite:///x.db")), rules_yaml("http://x")))
        refused = await alerter("leap-webhooks", "register", "-c", cfg, "--url", "https://alerter.example.com/leap")
        assert refused.code == 1 and "Leap answered 422" in refused.stderr and "refused Bearer ***" in refused.stderr
        assert '"value":"***"' in refused.stderr  # the header Leap would send: the push secret
        assert API_KEY not in refused.stderr and LEAP_SECRET not in refused.stderr, refused.stderr
    finally:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigkill_after_the_2xx_and_before_processing_loses_nothing(tmp_path: Path) -> None:
    p = Portfolio(300, action_rate=0.05, seed=17)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        listen = f"127.0.0.1:{_free_port()}"
        text = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json", initial_sync="silent")
        cfg = str(write_config(tmp_path, with_webhooks(text, listen=listen), rules_yaml(hook.url())))
        svc = await Service.start(cfg)
        try:
            await svc.wait_for_log("cycle_done")
            registered = await alerter("leap-webhooks", "register", "-c", cfg, "--url", f"http://{listen}{PATH}")
            assert registered.code == 0, registered.stderr
            # a meter the polls cannot see change: no action, and its updated_at left far behind the watermark
            index = next(i for i in range(p.size) if not p.record(i)["required_actions"]["partner"])
            meter = p.meter_id(index)
            stamp, stamp_us = p.record(index)["audit"]["updated_at"], p.columns.updated[index]
            sim.faults.add("503", times=1000)  # the worker's re-reads fail: the event waits in the inbox
            p.open_action(meter, action_type="IS_AUTHORIZED", action_code="AUTH_0042")
            p.columns.updated[index] = stamp_us
            p.overrides[index]["audit"]["updated_at"] = stamp
            await wait_until(lambda: any(a.status == 200 for a in sim.push.attempts))
            await svc.wait_for_log("push_reread_failed")
        finally:
            assert await svc.stop(signal.SIGKILL) == -signal.SIGKILL
        assert hook.delivered() == []
        sim.faults.clear()
        svc = await Service.start(cfg)
        try:
            await wait_until(lambda: len(hook.delivered()) > 0, timeout=30)
            await asyncio.sleep(0.5)
        finally:
            assert await svc.stop() == 0
        events = [(e["type"], e["action"]["action_code"]) for r in hook.delivered() for e in r.body["data"]["events"]]
        assert events == [("action.opened", "AUTH_0042")]
        assert len(sim.push.attempts) == 1  # acknowledged once: the event came from the inbox
