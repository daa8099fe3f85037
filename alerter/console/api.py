"""`/api/v1/`: the JSON API. The pages call the same functions (`overview`, `preview_silence`, ...)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from aiohttp import web

from alerter.console import core, forms
from alerter.console.app import json_response
from alerter.console.auth import Identity
from alerter.console.core import QueryError, obligation_json
from alerter.store.base import META_LAST_CYCLE, META_LAST_RECONCILE, META_WATERMARK

if TYPE_CHECKING:
    from alerter.console.app import Console

DELIVERY_STATUSES = ("pending", "sent", "dead")


async def overview(console: Console) -> dict[str, Any]:
    """What `/` shows: open obligations by bucket, type, region and program, and service status."""
    now = console.now()
    summary = await console.store.open_summary(now)
    meta = await console.store.meta(META_LAST_CYCLE, META_LAST_RECONCILE, META_WATERMARK)
    delivery = await console.store.store.delivery_counts()
    disabled = await console.store.store.disabled_receivers()
    svc = console.service
    last, sweep = meta[META_LAST_CYCLE], meta[META_LAST_RECONCILE]
    health = svc.health
    ready, reason = health.readiness(now)
    return {
        "open": sum(summary["action_type"].values()),
        "by_deadline": {b: summary["bucket"].get(b, 0) for b in core.BUCKETS},
        "by_action_type": summary["action_type"],
        "by_region": summary["transmission_region"],
        "by_program": summary["program_identifier"],
        "status": {
            "ready": ready,
            "reason": reason,
            "leader": bool(health.leader),
            "last_cycle_at": last,
            "last_cycle_kind": None if last is None else ("sweep" if sweep == last else "incremental"),
            "last_sweep_at": sweep,
            "watermark": meta[META_WATERMARK],
            "undelivered": sum(n for (_, s), n in delivery.items() if s == "pending"),
            "dead_letters": sum(n for (_, s), n in delivery.items() if s == "dead"),
            "disabled_receivers": disabled,
            "rules": len(svc.ruleset.rules) + (1 if svc.ruleset.fallback else 0),
            "receivers": len(svc.ruleset.receivers),
            "rules_loaded": bool(health.rules_loaded),
            "last_reload": health.last_reload,
            "last_error": health.last_error,
        },
    }


async def preview_silence(console: Console, matchers: dict[str, Any]) -> forms.Preview:
    preview = forms.Preview(matchers, console.now())
    async for page in console.store.open_obligations():
        preview.feed(page)
    return preview


async def receivers(console: Console) -> list[dict[str, Any]]:
    state = await console.store.receiver_state(console.now())
    out = []
    for name, receiver in console.service.ruleset.receivers.items():
        item = forms.describe_receiver(receiver)
        reason, since = state.disabled.get(name, (None, None))
        item |= {
            "disabled": reason is not None,
            "disabled_reason": reason,
            "disabled_at": core.iso(since),
            "last_success_at": core.iso(state.last_success.get(name)),
            "recent_failures": state.failures.get(name, []),
            "deliveries": {s: state.counts.get((name, s), 0) for s in DELIVERY_STATUSES},
            "enabled_by": state.enabled_by.get(name),
        }
        out.append(item)
    return out


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as err:
        raise web.HTTPBadRequest(text=f"body: not JSON: {err}") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body: expected a JSON object")
    return data


def _bad(problems: list[str]) -> web.Response:
    return json_response({"error": "; ".join(problems), "problems": problems}, 400)


def add_routes(app: web.Application, console: Console) -> None:
    g = console.guard

    async def obligations(request: web.Request, ident: Identity) -> web.StreamResponse:
        try:
            q = core.parse_obligation_query(request.query)
        except QueryError as err:
            return _bad([str(err)])
        page = await console.store.obligations(q, console.now())
        return json_response(
            {
                "obligations": [obligation_json(o) for o in page.obligations],
                "total": page.total,
                "next_cursor": page.next_cursor,
            }
        )

    async def meter(request: web.Request, ident: Identity) -> web.StreamResponse:
        ident_ = request.match_info["ident"]
        view = await console.store.meter(ident_)
        if view is None:
            return json_response({"error": f"no meter with id or partner_reference {ident_!r}"}, 404)
        first = view.obligations[0].meter if view.obligations else None
        return json_response(
            {
                "meter": msgspec.to_builtins(first) if first else {"meter_id": view.meter_id},
                "obligations": [obligation_json(o) for o in view.obligations],
                "history": view.history,
            }
        )

    async def silences(request: web.Request, ident: Identity) -> web.StreamResponse:
        return json_response({"silences": await console.store.silences(console.now())})

    async def create_silence(request: web.Request, ident: Identity) -> web.StreamResponse:
        body = await _body(request)
        now = console.now()
        try:
            silence = forms.silence_from(body, ident.actor, now, uuid.uuid4().hex[:12])
        except forms.FormError as err:
            return _bad(err.problems)
        await console.store.add_silence(silence, now)
        console.log.info("silence_created", id=silence.id, actor=ident.actor)
        return json_response({"id": silence.id, "ends_at": core.iso(silence.ends_at)}, 201)

    async def silence_preview(request: web.Request, ident: Identity) -> web.StreamResponse:
        body = await _body(request)
        problems: list[str] = []
        matchers = forms.matchers_from(body.get("matchers"), problems)
        if problems:
            return _bad(problems)
        preview = await preview_silence(console, matchers)
        return json_response(
            {"matched": preview.matched, "obligations": [obligation_json(o) for o in preview.obligations]}
        )

    async def expire_silence(request: web.Request, ident: Identity) -> web.StreamResponse:
        sid = request.match_info["id"]
        if not await console.store.expire_silence(sid, ident.actor, console.now()):
            return json_response({"error": f"no active or pending silence {sid!r}"}, 404)
        console.log.info("silence_expired", id=sid, actor=ident.actor)
        return json_response({"id": sid, "expired": True})

    async def deliveries(request: web.Request, ident: Identity) -> web.StreamResponse:
        status = request.query.get("status") or None
        if status is not None and status not in DELIVERY_STATUSES:
            return _bad([f"status: expected one of {', '.join(DELIVERY_STATUSES)}, got {status!r}"])
        try:
            limit = int(request.query.get("limit", "100"))
            before = _delivery_cursor(request.query.get("cursor"))
        except ValueError:
            return _bad(["limit or cursor: not one this API gave out"])
        items, nxt = await console.store.deliveries(
            status, request.query.get("receiver") or None, max(1, min(limit, 500)), before
        )
        return json_response({"deliveries": items, "next_cursor": _encode_delivery_cursor(nxt)})

    async def replay(request: web.Request, ident: Identity) -> web.StreamResponse:
        body = await _body(request)
        try:
            ids = forms.ids_from(body.get("ids"))
        except forms.FormError as err:
            return _bad(err.problems)
        receiver = body.get("receiver") or None
        if receiver is not None and not isinstance(receiver, str):
            return _bad(["receiver: a receiver's name (a string)"])
        if ids is None and not receiver and body.get("all") is not True:
            return _bad(['name what to replay: "ids", a "receiver", or "all": true for every dead letter'])
        matched = await console.store.dead_matching(ids, receiver)
        if body.get("preview"):
            return json_response({"matched": len(matched), "deliveries": matched})
        done = await console.store.replay([d["notification_id"] for d in matched], ident.actor, console.now())
        console.log.info("dead_letters_replayed", count=len(done), actor=ident.actor)
        return json_response({"replayed": len(done), "ids": done})

    async def receivers_list(request: web.Request, ident: Identity) -> web.StreamResponse:
        return json_response({"receivers": await receivers(console)})

    async def enable(request: web.Request, ident: Identity) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in console.service.ruleset.receivers:
            return json_response({"error": f"no receiver named {name!r} in the rules"}, 404)
        was = await console.store.enable_receiver(name, ident.actor, console.now())
        console.log.info("receiver_enabled", receiver=name, actor=ident.actor, was_disabled=was)
        return json_response({"name": name, "enabled": True, "was_disabled": was})

    async def status(request: web.Request, ident: Identity) -> web.StreamResponse:
        return json_response(await overview(console))

    r = app.router
    r.add_get("/api/v1/overview", g("api", status))
    r.add_get("/api/v1/obligations", g("api", obligations))
    r.add_get("/api/v1/meters/{ident}", g("api", meter))
    r.add_get("/api/v1/silences", g("api", silences))
    r.add_post("/api/v1/silences", g("api", create_silence, write=True))
    r.add_post("/api/v1/silences/preview", g("api", silence_preview))
    r.add_delete("/api/v1/silences/{id}", g("api", expire_silence, write=True))
    r.add_get("/api/v1/deliveries", g("api", deliveries))
    r.add_post("/api/v1/deliveries/replay", g("api", replay, write=True))
    r.add_get("/api/v1/receivers", g("api", receivers_list))
    r.add_post("/api/v1/receivers/{name}/enable", g("api", enable, write=True))


def _delivery_cursor(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    at, sep, nid = core.unb64(text).partition("|")
    if not sep or datetime.fromisoformat(at).tzinfo is None:  # ValueError for a time that is not one
        raise ValueError(text)
    return at, nid


def _encode_delivery_cursor(value: tuple[str, str] | None) -> str | None:
    return None if value is None else core.b64(f"{value[0]}|{value[1]}")
