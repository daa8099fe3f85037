"""The console as a person uses it: Debian's chromium, driven by Playwright, against a real service
fed by the Leap simulator, delivering to a webhook collector."""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import BrowserContext, Page, expect

from alerter.sim import Portfolio, SimServer
from tests.support.browser import chromium
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.console import PASSWORD, Console, console
from tests.support.service import API_KEY, WEBHOOK_SECRET

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@dataclass
class World:
    portfolio: Portfolio
    hook: WebhookCollector
    console: Console
    browser: BrowserContext

    async def cycle(self, at: datetime | None = None) -> None:
        svc = self.console.service
        now = at or datetime.now(UTC)
        await svc.run_cycle(now, flush_all=True)
        await svc.deliver_step(now)

    def caiso_meter(self) -> str:
        """A meter with an open action that routes to the webhook (rule `caiso`)."""
        for meter_id in self.portfolio.with_partner_actions():
            if self.portfolio.meter(meter_id)["transmission_region"] == "CAISO":
                return meter_id
        raise AssertionError("no CAISO meter with an action in the portfolio")


@asynccontextmanager
async def world(tmp_path: Path, meters: int = 300, action_rate: float = 0.08) -> AsyncIterator[World]:
    portfolio = Portfolio(meters, action_rate=action_rate, seed=42)
    async with (
        SimServer(portfolio, api_key=API_KEY) as sim,
        webhook_collector([WEBHOOK_SECRET]) as hook,
        console(tmp_path, sim_url=sim.url, webhook_url=hook.url(), remind="{every: 1h, overdue: false}") as c,
        chromium(tmp_path / "profile") as browser,
    ):
        yield World(portfolio, hook, c, browser)


async def login(w: World, page: Page, password: str = PASSWORD) -> None:
    await page.goto(w.console.url + "/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def test_log_in_filter_obligations_open_a_meter(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.cycle()
        page = await w.browser.new_page()
        await login(w, page)
        await expect(page.get_by_role("heading", name="Open obligations")).to_be_visible()
        await expect(page.locator(".who")).to_have_text("alice")

        await page.get_by_role("link", name="Obligations", exact=True).click()
        total = int(await page.locator("h1 .count").inner_text())
        assert total > 0
        await page.get_by_label("Region").select_option("CAISO")  # a live filter: submits on change
        await expect(page).to_have_url(re.compile(r"transmission_region=CAISO"))
        caiso = int(await page.locator("h1 .count").inner_text())
        assert 0 < caiso < total
        regions = await page.locator("table.list tbody tr td:nth-child(3)").all_inner_texts()
        assert regions and set(regions) == {"CAISO"}

        meter_id = w.caiso_meter()
        reference = w.portfolio.meter(meter_id)["partner_reference"]
        await page.get_by_role("searchbox", name="Meter", exact=True).fill(reference)
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("table.list tbody tr")).to_have_count(
            len(w.portfolio.meter(meter_id)["required_actions"]["partner"])
        )
        await page.locator("table.list tbody tr a").first.click()
        await expect(page.get_by_role("heading", name=f"Meter {reference}")).to_be_visible()
        timeline = page.locator("table.timeline")
        await expect(timeline).to_contain_text("opened")
        await expect(timeline).to_contain_text("caiso → crm")
        await expect(timeline).to_contain_text("sent")
        portal = page.get_by_role("link", name="open in Leap's Partner Portal")
        assert (await portal.get_attribute("href") or "").endswith(f"/meters/{meter_id}")


async def test_silence_after_its_preview_mutes_the_next_reminder(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.cycle()
        meter_id = w.caiso_meter()
        page = await w.browser.new_page()
        await login(w, page)
        await page.goto(w.console.url + "/silences")
        await page.get_by_label("Matchers").fill(f"meter_id={meter_id}")
        await page.get_by_label("For").fill("24h")
        await page.get_by_label("Reason").fill("site visit <b>on Monday</b>")
        await page.get_by_role("button", name="Preview").click()
        await expect(page.get_by_role("heading", name="Silence preview")).to_be_visible()
        actions = len(w.portfolio.meter(meter_id)["required_actions"]["partner"])
        await expect(page.locator("#matched")).to_have_text(str(actions))
        await page.get_by_role("button", name="Create silence").click()
        await expect(page.locator(".notice")).to_contain_text("Created silence")
        row = page.locator("table.list tbody tr").first
        await expect(row).to_contain_text("active")
        await expect(row).to_contain_text("alice")
        await expect(row).to_contain_text("site visit <b>on Monday</b>")  # shown as text, not markup

        before = len(w.hook.delivered())
        later = datetime.now(UTC) + timedelta(hours=2)
        svc = w.console.service
        await svc.remind_step(later)
        await svc.route_step(later)
        await svc.deliver_step(later)
        told = {e["meter"]["meter_id"] for r in w.hook.delivered()[before:] for e in r.body["data"]["events"]}
        assert told and meter_id not in told  # other CAISO meters were reminded; this one was not

        await page.goto(w.console.url + f"/meters/{meter_id}")
        reminder = page.locator("table.timeline tr", has_text="reminder")
        await expect(reminder.first).to_contain_text("silenced by")
        await expect(reminder.first).to_contain_text("alice")


async def test_replay_a_dead_letter_after_its_preview(tmp_path: Path) -> None:
    async with world(tmp_path, meters=60, action_rate=0.1) as w:
        w.hook.script = deque([400])  # the first notification to the CRM is refused for good
        await w.cycle()
        page = await w.browser.new_page()
        await login(w, page)
        await page.goto(w.console.url + "/deliveries?status=dead")
        dead = page.locator("table.list tbody tr.dead")
        await expect(dead).to_have_count(1)
        await expect(dead).to_contain_text("HTTP 400")
        await dead.get_by_role("checkbox").check()
        await page.get_by_role("button", name="Replay selected dead letters…").click()
        await expect(page.locator("#matched")).to_have_text("1")
        await page.get_by_role("button", name="Replay 1").click()
        await expect(page.locator(".notice")).to_contain_text("Replayed 1 dead letter")

        before = len(w.hook.delivered())
        await w.console.service.deliver_step(datetime.now(UTC) + timedelta(seconds=1))
        assert len(w.hook.delivered()) == before + 1
        await page.goto(w.console.url + "/deliveries?status=dead")
        await expect(page.locator("table.list tbody")).to_contain_text("Nothing in the ledger matches")
        await page.goto(w.console.url + "/deliveries?receiver=crm")
        await expect(page.locator("table.list tbody tr.dead")).to_have_count(0)
        meter_id = w.hook.delivered()[-1].body["data"]["events"][0]["meter"]["meter_id"]
        await page.goto(w.console.url + f"/meters/{meter_id}")
        await expect(page.locator("table.timeline")).to_contain_text("delivery.replay")


async def test_wrong_password_and_a_form_without_csrf_are_refused(tmp_path: Path) -> None:
    async with world(tmp_path, meters=20) as w:
        page = await w.browser.new_page()
        await login(w, page, password="not the password")
        await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()

        await login(w, page)
        await page.goto(w.console.url + "/silences")
        await page.locator("section.card input[name=csrf]").evaluate("input => input.remove()")
        await page.get_by_label("Matchers").fill("meter_id=M-1")
        await page.get_by_label("Reason").fill("no token")
        response = None
        async with page.expect_response(lambda r: r.url.endswith("/silences")) as info:
            await page.get_by_role("button", name="Preview").click()
        response = await info.value
        assert response.status == 403
        await expect(page.locator(".problem")).to_contain_text("CSRF")


async def test_screenshots_of_every_page(tmp_path: Path) -> None:
    """Each page against demo-like data; `make screenshots` keeps them in docs/screenshots."""
    out = SCREENSHOTS if os.environ.get("ALERTER_SCREENSHOTS") else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    async with world(tmp_path, meters=3000, action_rate=0.02) as w:
        w.hook.script = deque([400])
        await w.cycle()
        meter_id = w.caiso_meter()
        svc = w.console.service
        page = await w.browser.new_page()
        await login(w, page)
        await page.goto(w.console.url + "/silences")
        await page.get_by_label("Matchers").fill(f"meter_id={meter_id}")
        await page.get_by_label("Reason").fill("customer site visit this week")
        await page.get_by_role("button", name="Preview").click()
        await page.screenshot(path=str(out / "silence-preview.png"), full_page=True)
        await page.get_by_role("button", name="Create silence").click()
        later = datetime.now(UTC) + timedelta(hours=2)
        await svc.remind_step(later)
        await svc.route_step(later)
        shots = {
            "overview": "/",
            "obligations": "/obligations?transmission_region=CAISO",
            "meter": f"/meters/{meter_id}",
            "silences": "/silences",
            "deliveries": "/deliveries",
            "receivers": "/receivers",
        }
        for name, path in shots.items():
            await page.goto(w.console.url + path)
            await page.screenshot(path=str(out / f"{name}.png"), full_page=name not in ("obligations", "deliveries"))
        await page.goto(w.console.url + "/rules")
        await page.get_by_label("Meter id or partner reference").fill(meter_id)
        await page.get_by_role("button", name="Test routing").click()
        await expect(page.locator("ul.routed")).to_contain_text("rule caiso → crm")
        await page.screenshot(path=str(out / "rules.png"), full_page=True)
        for name in (*shots, "rules", "silence-preview"):
            assert (out / f"{name}.png").stat().st_size > 10_000
