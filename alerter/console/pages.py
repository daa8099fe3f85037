"""The console's HTML pages. Forms post to their own page's path with the CSRF token."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from alerter.console import api, core, forms, tester
from alerter.console.app import SESSION_COOKIE_MAX_AGE, safe_next, secure, set_cookie
from alerter.console.auth import SESSION_COOKIE, Identity
from alerter.console.core import QueryError
from alerter.store.console import ObligationPage

if TYPE_CHECKING:
    from alerter.console.app import Console

OPTIONS_TTL = 30.0


def _form_value(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def add_routes(app: web.Application, console: Console) -> None:
    g = console.guard
    options: dict[str, Any] = {"at": 0.0, "data": {}}

    async def filter_options() -> dict[str, list[str]]:
        """Values to offer in the filters (refreshed every 30 s; the listing itself is always fresh)."""
        if time.monotonic() - options["at"] > OPTIONS_TTL:
            options.update(at=time.monotonic(), data=await console.store.filter_values())
        result: dict[str, list[str]] = options["data"]
        return result

    async def overview(request: web.Request, ident: Identity) -> web.StreamResponse:
        data = await api.overview(console)
        return console.render(request, ident, "overview.html", o=data, labels=core.BUCKET_LABELS, title="Overview")

    async def obligations(request: web.Request, ident: Identity) -> web.StreamResponse:
        try:
            q = core.parse_obligation_query(request.query)
        except QueryError as err:  # nothing listed: not the whole list, as if no filter had been asked
            q, problem = core.ObligationQuery(), str(err)
            page = ObligationPage([], 0, None)
        else:
            problem = ""
            page = await console.store.obligations(q, console.now())
        next_url = None
        if page.next_cursor:
            next_url = "/obligations?" + urlencode(q.params(cursor=core.Cursor.decode(page.next_cursor)))
        return console.render(
            request,
            ident,
            "obligations.html",
            status=400 if problem else 200,
            title="Obligations",
            q=q,
            page=page,
            problem=problem,
            options=await filter_options(),
            receivers=sorted(console.service.ruleset.receivers),
            buckets=core.BUCKET_LABELS,
            next_url=next_url,
            first_url="/obligations?" + urlencode(q.params(cursor=None)) if q.cursor else None,
            csv_url="/obligations.csv?" + urlencode(q.params(cursor=None)),
            now=console.now(),
            bucket_of=core.bucket_of,
        )

    async def obligations_csv(request: web.Request, ident: Identity) -> web.StreamResponse:
        try:
            q = core.parse_obligation_query(request.query)
        except QueryError as err:
            raise web.HTTPBadRequest(text=str(err)) from None
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="obligations-{q.state}.csv"',
            }
        )
        secure(resp)
        await resp.prepare(request)
        header = True
        async for batch in console.store.all_obligations(q, console.now()):
            await resp.write(core.csv_text(batch, header=header).encode())
            header = False
        if header:
            await resp.write(core.csv_text([]).encode())
        await resp.write_eof()
        return resp

    async def meter(request: web.Request, ident: Identity) -> web.StreamResponse:
        ident_ = request.match_info["ident"]
        view = await console.store.meter(ident_)
        if view is None:
            return console.render(
                request,
                ident,
                "error.html",
                status=404,
                title="Not found",
                message=f"No meter with id or partner_reference {ident_!r}.",
            )
        portal = core.portal_url(_portal_base(console), view.meter_id)
        return console.render(
            request,
            ident,
            "meter.html",
            title=f"Meter {view.meter_id}",
            view=view,
            portal=portal,
            meter=view.obligations[0].meter if view.obligations else None,
        )

    async def silences(request: web.Request, ident: Identity, **ctx: Any) -> web.StreamResponse:
        return console.render(
            request,
            ident,
            "silences.html",
            title="Silences",
            silences=await console.store.silences(console.now()),
            form=ctx.pop("form", {"duration": "24h"}),
            problems=ctx.pop("problems", []),
            notice=request.query.get("notice", ""),
            status=ctx.pop("status", 200),
            **ctx,
        )

    async def silences_get(request: web.Request, ident: Identity) -> web.StreamResponse:
        return await silences(request, ident)

    async def silences_post(request: web.Request, ident: Identity) -> web.StreamResponse:
        form = await request.post()
        action = _form_value(form, "action")
        now = console.now()
        if action == "expire":
            sid = _form_value(form, "id")
            done = await console.store.expire_silence(sid, ident.actor, now)
            notice = f"Expired silence {sid}." if done else f"Silence {sid} was not active."
            raise web.HTTPSeeOther("/silences?" + urlencode({"notice": notice}))
        values = {k: _form_value(form, k) for k in ("matchers", "duration", "ends_at", "reason")}
        try:
            silence = forms.silence_from(values, ident.actor, now, uuid.uuid4().hex[:12])
        except forms.FormError as err:
            return await silences(request, ident, form=values, problems=err.problems, status=400)
        if action != "create":
            preview = await api.preview_silence(console, silence.matchers)
            return console.render(
                request,
                ident,
                "silence_preview.html",
                title="Silence preview",
                form=values,
                preview=preview,
                silence=silence,
            )
        await console.store.add_silence(silence, now)
        console.log.info("silence_created", id=silence.id, actor=ident.actor)
        raise web.HTTPSeeOther("/silences?" + urlencode({"notice": f"Created silence {silence.id}."}))

    async def deliveries(request: web.Request, ident: Identity) -> web.StreamResponse:
        status = request.query.get("status") or None
        receiver = request.query.get("receiver") or None
        try:
            before = api._delivery_cursor(request.query.get("cursor"))
        except ValueError:
            before = None
        problem = ""
        items: list[dict[str, Any]] = []
        nxt: tuple[str, str] | None = None
        if status not in (None, *api.DELIVERY_STATUSES):  # nothing listed: not every status, as if none were asked
            problem = f"status: expected one of {', '.join(api.DELIVERY_STATUSES)}, got {status!r}"
            status = None
        else:
            items, nxt = await console.store.deliveries(status, receiver, 100, before)
        more = {"status": status or "", "receiver": receiver or "", "cursor": api._encode_delivery_cursor(nxt)}
        return console.render(
            request,
            ident,
            "deliveries.html",
            status=400 if problem else 200,
            title="Deliveries",
            problem=problem,
            items=items,
            status_filter=status or "",
            receiver_filter=receiver or "",
            receivers=sorted(console.service.ruleset.receivers),
            statuses=api.DELIVERY_STATUSES,
            next_url="/deliveries?" + urlencode(more) if nxt else None,
            notice=request.query.get("notice", ""),
        )

    async def deliveries_post(request: web.Request, ident: Identity) -> web.StreamResponse:
        form = await request.post()
        action = _form_value(form, "action")
        ids = [v for v in form.getall("id", []) if isinstance(v, str)]
        receiver = _form_value(form, "receiver") or None
        if action == "preview-all":
            matched = await console.store.dead_matching(None, receiver)
        else:  # the ids selected (a replay replays the ids its preview listed)
            matched = await console.store.dead_matching(ids, None) if ids else []
        if action != "replay":
            return console.render(
                request,
                ident,
                "replay_preview.html",
                title="Replay preview",
                matched=matched,
                receiver=receiver or "",
            )
        done = await console.store.replay([d["notification_id"] for d in matched], ident.actor, console.now())
        console.log.info("dead_letters_replayed", count=len(done), actor=ident.actor)
        notice = f"Replayed {len(done)} dead letter(s): they are due now."
        raise web.HTTPSeeOther("/deliveries?" + urlencode({"notice": notice}))

    async def receivers(request: web.Request, ident: Identity) -> web.StreamResponse:
        return console.render(
            request,
            ident,
            "receivers.html",
            title="Receivers",
            receivers=await api.receivers(console),
            notice=request.query.get("notice", ""),
        )

    async def receivers_post(request: web.Request, ident: Identity) -> web.StreamResponse:
        form = await request.post()
        name = _form_value(form, "name")
        if name not in console.service.ruleset.receivers:
            raise web.HTTPNotFound(text=f"no receiver named {name!r}")
        was = await console.store.enable_receiver(name, ident.actor, console.now())
        console.log.info("receiver_enabled", receiver=name, actor=ident.actor, was_disabled=was)
        notice = f"Re-enabled {name}." if was else f"{name} was not disabled."
        raise web.HTTPSeeOther("/receivers?" + urlencode({"notice": notice}))

    async def rules(request: web.Request, ident: Identity, **ctx: Any) -> web.StreamResponse:
        rs = console.service.ruleset
        return console.render(
            request,
            ident,
            "rules.html",
            title="Rules",
            rules=[*rs.rules, *([rs.fallback] if rs.fallback else [])],
            kinds=tester.KINDS,
            form=ctx.pop("form", {"kind": "opened"}),
            **ctx,
        )

    async def rules_get(request: web.Request, ident: Identity) -> web.StreamResponse:
        return await rules(request, ident)

    async def rules_post(request: web.Request, ident: Identity) -> web.StreamResponse:
        form = await request.post()
        values = {k: _form_value(form, k) for k in ("meter", "kind", "record")}
        now = console.now()
        try:
            if values["record"]:
                events = tester.events_from_record(values["record"], now)
            elif values["meter"]:
                view = await console.store.meter(values["meter"])
                if view is None:
                    raise tester.TesterError(f"no meter with id or partner_reference {values['meter']!r}")
                chosen = [o for o in view.obligations if o.status == "open"] or view.obligations
                events = tester.events_from_obligations(chosen, values["kind"] or "opened", now)
            else:
                raise tester.TesterError("pick a meter or paste a meter record")
        except tester.TesterError as err:
            return await rules(request, ident, form=values, problem=str(err))
        routed, messages = tester.route(events, console.service.config, now)
        return await rules(request, ident, form=values, routed=routed, messages=messages)

    async def login(request: web.Request) -> web.StreamResponse:
        if console.access.mode != "auth":
            raise web.HTTPSeeOther("/")
        return await console.login_page(request)

    async def login_post(request: web.Request) -> web.StreamResponse:
        if console.access.mode != "auth":
            raise web.HTTPSeeOther("/")
        form = await request.post()
        from alerter.console.auth import CSRF_COOKIE, csrf_ok

        if not csrf_ok(request.cookies.get(CSRF_COOKIE), _form_value(form, "csrf")):
            return console.error(request, "page", 403, "missing or wrong CSRF token: reload the login page and retry")
        username, password = _form_value(form, "username"), str(form.get("password", ""))
        if not await console.access.check_password(username, password):
            known = console.access.knows(username)
            console.log.warning("console_login_refused", user=username if known else None, user_known=known)
            return await console.login_page(request, status=401, problem="Wrong username or password.")
        session = await console.access.open_session(username, console.now())
        resp = web.HTTPSeeOther(safe_next(_form_value(form, "next") or "/"))
        set_cookie(request, resp, SESSION_COOKIE, session, http_only=True, max_age=SESSION_COOKIE_MAX_AGE)
        console.log.info("console_login", user=username)
        secure(resp)
        raise resp

    async def logout(request: web.Request, ident: Identity) -> web.StreamResponse:
        await console.access.close_session(dict(request.cookies))
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(SESSION_COOKIE, path="/")
        raise resp

    r = app.router
    r.add_get("/", g("page", overview))
    r.add_get("/obligations", g("page", obligations))
    r.add_get("/obligations.csv", g("page", obligations_csv))
    r.add_get("/meters/{ident}", g("page", meter))
    r.add_get("/silences", g("page", silences_get))
    r.add_post("/silences", g("page", silences_post, write=True))
    r.add_get("/deliveries", g("page", deliveries))
    r.add_post("/deliveries", g("page", deliveries_post, write=True))
    r.add_get("/receivers", g("page", receivers))
    r.add_post("/receivers", g("page", receivers_post, write=True))
    r.add_get("/rules", g("page", rules_get))
    r.add_post("/rules", g("page", rules_post))
    r.add_get("/login", login)
    r.add_post("/login", login_post)
    r.add_post("/logout", g("page", logout))


def _portal_base(console: Console) -> str:
    from alerter.templates import PORTAL_URL

    for receiver in console.service.ruleset.receivers.values():
        base = getattr(receiver.settings, "portal_url", None)
        if isinstance(base, str):
            return base
    return PORTAL_URL
