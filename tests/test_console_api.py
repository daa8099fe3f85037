"""`/api/v1/` and access through the wire: a real service's HTTP server on 127.0.0.1."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs
from yarl import URL

from alerter.console import core
from alerter.models import Meter
from alerter.store.base import Store
from tests.support.console import AUTH, HOOK_SECRET_PATH_TOKEN, HOOK_SECRET_URL_TOKEN, TOKEN, console
from tests.support.service import WEBHOOK_SECRET
from tests.support.stores import BACKENDS, T0, event, notification, obligation, outbox

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def seed(store: Store, n: int = 12) -> None:
    rows = [
        replace(
            obligation(f"m{i:02}", "AUTH_1", deadline=T0 + timedelta(days=i)),
            meter=Meter(meter_id=f"m{i:02}", partner_reference=f"REF-{i:02}", transmission_region="CAISO"),
        )
        for i in range(n)
    ]
    events = [event(o) for o in rows]
    await store.commit_page(rows, events)
    await outbox(store, notification("n-dead", [events[3]], receiver="crm"))
    await store.mark_failed("n-dead", "crm", "HTTP 500 from the CRM", None, T0)


async def get(s: aiohttp.ClientSession, path: str, status: int = 200, **kw: Any) -> Any:
    async with s.get(path, **kw) as r:
        assert r.status == status, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.text()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_api_lists_filters_pages_and_changes_with_a_token(tmp_path: Path, backend: str) -> None:
    async with console(tmp_path, backend) as c, c.session(**BEARER) as s:
        await seed(c.service.store)
        page = await get(s, "/api/v1/obligations?limit=5")
        assert page["total"] == 12 and len(page["obligations"]) == 5
        first = page["obligations"][0]
        assert first["meter_id"] == "m00" and first["partner_reference"] == "REF-00" and first["state"] == "open"
        assert set(first) >= {
            "transmission_region",
            "action_type",
            "action_code",
            "action_description",
            "program_identifier",
            "delivery_period",
            "deadline",
            "opened_at",
            "resolved_at",
        }
        seen = [o["meter_id"] for o in page["obligations"]]
        while page["next_cursor"]:
            page = await get(s, f"/api/v1/obligations?limit=5&cursor={page['next_cursor']}")
            seen += [o["meter_id"] for o in page["obligations"]]
        assert seen == [f"m{i:02}" for i in range(12)]
        assert (await get(s, "/api/v1/obligations?q=REF-07"))["total"] == 1
        bad = await get(s, "/api/v1/obligations?state=closed", 400)
        assert "state" in bad["error"]
        assert "cursor" in (await get(s, "/api/v1/obligations?cursor=nonsense", 400))["error"]
        naive = core.b64('{"d":"2026-01-01T00:00:00","k":"a"}')  # a deadline without an offset
        assert "cursor" in (await get(s, f"/api/v1/obligations?cursor={naive}", 400))["error"]
        before = core.b64('{"d":"2026-01-01T00:00:00Z","k":["a","b","c","d","e"]}')  # as schema step 18 came
        assert "cursor" in (await get(s, f"/api/v1/obligations?cursor={before}", 400))["error"]
        for garbage in (core.b64("garbage|x"), core.b64("2026-01-01T00:00:00|n1")):
            assert "cursor" in (await get(s, f"/api/v1/deliveries?cursor={garbage}", 400))["error"]
            await get(s, f"/deliveries?cursor={garbage}")  # the page starts over

        meter = await get(s, "/api/v1/meters/REF-03")
        assert meter["meter"]["meter_id"] == "m03" and len(meter["obligations"]) == 1
        assert [(h["event"], h["receiver"], h["status"]) for h in meter["history"]] == [("opened", "crm", "dead")]
        assert "no meter" in (await get(s, "/api/v1/meters/nobody", 404))["error"]

        body = {"matchers": {"meter_id": "m03"}, "duration": "2h", "reason": "site visit"}
        async with s.post("/api/v1/silences/preview", json=body) as r:
            preview = await r.json()
            assert preview["matched"] == 1 and preview["obligations"][0]["meter_id"] == "m03"
        async with s.post("/api/v1/silences", json={**body, "reason": ""}) as r:
            assert r.status == 400 and "reason" in (await r.json())["error"]
        async with s.post("/api/v1/silences", json={**body, "matchers": {"colour": "red"}}) as r:
            assert r.status == 400 and "unknown field 'colour'" in (await r.json())["error"]
        async with s.post("/api/v1/silences", json={"matchers": ["meter_id=m03"], "reason": "x"}) as r:
            assert r.status == 400 and "duration" in (await r.json())["error"]
        for too_long in ({"duration": "9999999d"}, {"duration": "1000d", "starts_at": "9999-12-01T00:00:00Z"}):
            async with s.post("/api/v1/silences", json={**body, **too_long}) as r:
                assert r.status == 400 and ("duration" in (error := (await r.json())["error"]) or "starts_at" in error)
        # instants with no UTC form: written, they could not be read back, and routing would stop
        for when in ({"ends_at": "9999-12-31T23:59:59-12:00"}, {"starts_at": "0001-01-01T00:00:00+14:00"}):
            async with s.post("/api/v1/silences", json={**body, **when, "duration": "2h"}) as r:
                assert r.status == 400 and "out of range" in (await r.json())["error"]
        assert "longer than" in (await get(s, "/api/v1/obligations?deadline_within=9999999d", 400))["error"]
        async with s.post("/api/v1/silences", json=body) as r:
            assert r.status == 201
            sid = (await r.json())["id"]
        [listed] = (await get(s, "/api/v1/silences"))["silences"]
        assert listed["id"] == sid and listed["created_by"] == "api-token-1" and listed["state"] == "active"
        async with s.delete(f"/api/v1/silences/{sid}") as r:
            assert r.status == 200
        async with s.delete(f"/api/v1/silences/{sid}") as r:
            assert r.status == 404
        assert (await get(s, "/api/v1/silences"))["silences"][0]["expired_by"] == "api-token-1"

        dead = (await get(s, "/api/v1/deliveries?status=dead"))["deliveries"]
        assert [d["notification_id"] for d in dead] == ["n-dead"] and dead[0]["last_error"] == "HTTP 500 from the CRM"
        assert "status" in (await get(s, "/api/v1/deliveries?status=lost", 400))["error"]
        page = await get(s, "/deliveries?status=lost", 400)  # the page says so, and lists none
        assert "status: expected one of pending, sent, dead, got &#39;lost&#39;" in page and "n-dead" not in page
        assert "n-dead" in await get(s, "/deliveries")
        rules = await get(s, "/rules")  # each rule's grouping and reminders as its file writes them
        assert "wait 0s, interval 0s" in rules and "<small>overdue</small>" in rules and "timedelta" not in rules
        for wrong in (["crm"], {"name": "crm"}, 7):
            async with s.post("/api/v1/deliveries/replay", json={"receiver": wrong}) as r:
                assert r.status == 400 and "receiver" in (await r.json())["error"]
        async with s.post("/api/v1/deliveries/replay", json={}) as r:
            assert r.status == 400
        async with s.post("/api/v1/deliveries/replay", json={"receiver": "crm", "preview": True}) as r:
            assert (await r.json())["matched"] == 1
        async with s.post("/api/v1/deliveries/replay", json={"ids": ["n-dead"]}) as r:
            assert await r.json() == {"replayed": 1, "ids": ["n-dead"]}
        assert (await get(s, "/api/v1/deliveries?status=dead"))["deliveries"] == []
        history = (await get(s, "/api/v1/meters/m03"))["history"]
        assert ("delivery.replay", "api-token-1") in [(h["event"], h.get("actor")) for h in history]

        await c.service.store.set_receiver_disabled("crm", "HTTP 410 Gone", T0)
        receivers = {r["name"]: r for r in (await get(s, "/api/v1/receivers"))["receivers"]}
        assert receivers["crm"]["disabled"] and receivers["crm"]["channel"] == "webhook"
        async with s.post("/api/v1/receivers/crm/enable") as r:
            assert (await r.json())["was_disabled"] is True
        async with s.post("/api/v1/receivers/nobody/enable") as r:
            assert r.status == 404
        crm = next(r for r in (await get(s, "/api/v1/receivers"))["receivers"] if r["name"] == "crm")
        assert not crm["disabled"] and crm["enabled_by"]["actor"] == "api-token-1"


async def test_receivers_never_show_secrets(tmp_path: Path) -> None:
    async with console(tmp_path) as c, c.session(**BEARER) as s:
        api = await get(s, "/api/v1/receivers")
        async with c.session(**{"X-Forwarded-User": "sso-user"}) as browser:
            page = await get(browser, "/receivers")
        for text in (str(api), page):
            assert "127.0.0.1" in text
            secrets = (HOOK_SECRET_URL_TOKEN, HOOK_SECRET_PATH_TOKEN, WEBHOOK_SECRET, WEBHOOK_SECRET[6:])
            for secret in (*secrets, "header-secret-value", TOKEN):
                assert secret not in text


async def test_a_reload_that_revokes_a_token_refuses_it_at_the_next_request(tmp_path: Path) -> None:
    fresh = "test-token-fedcba9876543210"
    async with console(tmp_path) as c, c.session(**BEARER) as old, c.session(Authorization=f"Bearer {fresh}") as new:
        assert "obligations" in await get(old, "/api/v1/obligations")
        await get(new, "/api/v1/obligations", 401)
        path = tmp_path / "config.yaml"
        path.write_text(path.read_text().replace(TOKEN, fresh))
        assert c.service.reload() == "ok"
        await get(old, "/api/v1/obligations", 401)
        assert "obligations" in await get(new, "/api/v1/obligations")


async def test_credentials_decide_401_and_csrf_decides_403(tmp_path: Path) -> None:
    async with console(tmp_path) as c:
        async with c.session() as anon:
            async with anon.get("/api/v1/obligations") as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "credential" in (await r.json())["error"]
            async with anon.get("/obligations") as r:
                assert r.status == 401 and 'action="/login"' in await r.text()
            for path in ("/healthz", "/metrics"):
                async with anon.get(path) as r:
                    assert r.status == 200
            async with anon.get("/static/console/console.css") as r:
                assert r.status == 200
        async with c.session(Authorization="Bearer wrong-token-0123456789") as s, s.get("/api/v1/obligations") as r:
            assert r.status == 401
        async with c.session(**{"X-Forwarded-User": "sso-user"}) as sso:
            page = await get(sso, "/silences")
            assert "sso-user" in page
            async with sso.post(
                "/silences", data={"matchers": "meter_id=m1", "duration": "1h", "reason": "x", "action": "create"}
            ) as r:
                assert r.status == 403 and "CSRF" in await r.text()
            async with sso.post(
                "/api/v1/silences", json={"matchers": {"meter_id": "m1"}, "duration": "1h", "reason": "x"}
            ) as r:
                assert r.status == 403  # a cookie-less browser call must carry X-CSRF-Token
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            async with sso.post(
                "/silences",
                data={"csrf": csrf, "matchers": "meter_id=m1", "duration": "1h", "reason": "x", "action": "create"},
            ) as r:
                assert r.status == 200 and "Created silence" in await r.text()
            listed = (await get(sso, "/api/v1/silences"))["silences"]
            assert listed[0]["created_by"] == "sso-user"


async def test_login_sets_a_safe_session_cookie(tmp_path: Path) -> None:
    async with console(tmp_path) as c, c.session() as s:
        page = await get(s, "/login")
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        form = {"csrf": csrf, "username": "alice", "password": "wrong", "next": "/silences"}
        with capture_logs() as logs:
            async with s.post("/login", data=form) as r:
                assert r.status == 401 and "Wrong username or password" in await r.text()
            # a password typed into the username box is not written in the log
            async with s.post("/login", data={**form, "username": "pa55word-typed-here"}) as r:
                assert r.status == 401
        refused = [(e["user"], e["user_known"]) for e in logs if e["event"] == "console_login_refused"]
        assert refused == [("alice", True), (None, False)]
        async with s.post("/login", data={**form, "csrf": ""}) as r:
            assert r.status == 403
        from tests.support.console import PASSWORD

        for hostile in (
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "https://evil.example",
        ):
            async with s.get("/login", params={"next": hostile}) as r:
                assert 'name="next" value="/"' in await r.text()
            async with s.post(
                "/login", data={**form, "password": PASSWORD, "next": hostile}, allow_redirects=False
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
        https = {"X-Forwarded-Proto": "https"}  # behind a TLS-terminating proxy the cookie is Secure
        for headers, secure in (({}, False), (https, True)):
            async with s.post(
                "/login", data={**form, "password": PASSWORD}, headers=headers, allow_redirects=False
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/silences"
                cookie = next(v for v in r.headers.getall("Set-Cookie") if v.startswith("alerter_session="))
                assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and ("Secure" in cookie) == secure
            if not secure:
                plain = s.cookie_jar.filter_cookies(URL(c.url))["alerter_session"].value
        s.cookie_jar.update_cookies({"alerter_session": plain})
        async with s.get("/") as r:
            assert r.status == 200
            text = await r.text()
            assert "alice" in text and "Open obligations" in text
            for header, value in (("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff")):
                assert r.headers[header] == value
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        csrf = text.split('name="csrf" value="')[1].split('"')[0]
        async with s.post("/logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get("/") as r:
            assert r.status == 401


async def test_no_auth_is_read_only_on_loopback(tmp_path: Path) -> None:
    async with console(tmp_path, auth="") as c, c.session() as s:
        await seed(c.service.store, 4)
        assert (await get(s, "/api/v1/obligations"))["total"] == 4
        # another site's name pointed at 127.0.0.1 (DNS rebinding) reads nothing
        for host in ("rebind.attacker.example", "rebind.attacker.example:8080", "10.1.2.3"):
            async with s.get("/api/v1/obligations", headers={"Host": host}) as r:
                assert r.status == 401
        assert (await get(s, "/api/v1/obligations", headers={"Host": "localhost"}))["total"] == 4
        assert "read-only" in await get(s, "/")
        async with s.post(
            "/api/v1/silences", json={"matchers": {"meter_id": "m1"}, "duration": "1h", "reason": "x"}
        ) as r:
            assert r.status == 403 and "read-only" in (await r.json())["error"]
        # a preview only reads: an API client (no page, so no CSRF token) may ask for one
        preview = {"matchers": {"meter_id": "m01"}, "duration": "1h", "reason": "x"}
        async with s.post("/api/v1/silences/preview", json=preview) as r:
            assert r.status == 200 and (await r.json())["matched"] == 1, await r.text()
        async with s.get("/login", allow_redirects=False) as r:
            assert r.status == 303


async def test_no_auth_beyond_loopback_answers_401_and_warns_once(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with console(tmp_path, auth="", listen="0.0.0.0:0") as c, c.session() as s:
            for path in ("/", "/obligations", "/api/v1/obligations", "/api/v1/receivers"):
                async with s.get(path) as r:
                    assert r.status == 401, path
            for path in ("/healthz", "/metrics"):
                async with s.get(path) as r:
                    assert r.status == 200
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["console_closed"]


def test_auth_config_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from alerter.config import AuthConfig

    assert AuthConfig.model_validate({"users": [{"username": "a", "password": "p"}]}).users[0].username == "a"
    for bad in (
        {"users": [{"username": "a"}]},
        {"users": [{"username": "a", "password": "p", "password_hash": "$argon2id$x"}]},
        {"users": [{"username": "a", "password_hash": "plain"}]},
        {"api_tokens": ["short"]},
    ):
        with pytest.raises(ValidationError):
            AuthConfig.model_validate(bad)
    assert AUTH  # the harness's block is what these tests run with


async def test_the_overview_says_how_the_last_rules_reload_went(tmp_path: Path) -> None:
    async with console(tmp_path) as c, c.session(**BEARER) as s:
        assert (await get(s, "/api/v1/overview"))["status"]["last_reload"] is None
        rules = tmp_path / "rules.yaml"
        good = rules.read_text()
        rules.write_text("receivers: []\nrules: []\n")  # routes nothing: refused, the old rules stay
        assert c.service.reload() == "rejected"
        status = (await get(s, "/api/v1/overview"))["status"]
        assert status["last_reload"]["result"] == "rejected" and status["last_reload"]["problems"]
        assert status["rules"] >= 1  # still the old rules
        assert "rejected" in await get(s, "/")
        rules.write_text(good)
        assert c.service.reload() == "ok"
        assert (await get(s, "/api/v1/overview"))["status"]["last_reload"]["result"] == "ok"


async def test_preview_counts_what_a_silence_of_resolutions_would_mute_and_pages_refuse_bad_filters(
    tmp_path: Path,
) -> None:
    async with console(tmp_path) as c, c.session(**BEARER) as s:
        await seed(c.service.store)
        # a silence of resolutions mutes the resolutions of the open obligations it matches
        for event_kind, matched in (("resolved", 1), ("changed", 1), ("reminder", 1), ("opened", 0)):
            probe = {"matchers": {"meter_id": "m03", "event": event_kind}}
            async with s.post("/api/v1/silences/preview", json=probe) as r:
                assert (await r.json())["matched"] == matched, event_kind
        body: dict[str, Any] = {"matchers": {"meter_id": "m03"}, "duration": "1h", "reason": {"a": 1}}
        async with s.post("/api/v1/silences", json=body) as r:
            assert r.status == 400 and "reason: expected text" in (await r.json())["error"]
        # one bad filter on the page: said, and nothing listed (not the whole, unfiltered list)
        page = await get(s, "/obligations?action_type=AUTH_1&limit=abc", 400)
        assert "limit: expected a number" in page and "REF-00" not in page
        assert "REF-00" in await get(s, "/obligations?limit=5")
