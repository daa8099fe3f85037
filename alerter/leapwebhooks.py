"""`alerter leap-webhooks register|list|test|delete`: this service's subscriptions to Leap's webhooks.

Leap's Webhook Subscription API v1.1 with the config's `source` (base URL, API key) and
`source.webhooks` (header and secrets). `register --url URL` subscribes URL to
`meter.enrollment.required-actions.updated` with the header set to the first secret; an existing
subscription for that URL is updated in place (PUT overwrites every setting, so its other event
types and headers are carried over), never duplicated. `list` shows every subscription, header
values never (`ours` marks those carrying one of our secrets). `test` asks Leap to send a test
event and prints what the receiver answered; `delete` removes subscriptions. Without `--url`,
`test` and `delete` act on our subscriptions. Exit 0 done, 1 Leap refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp
import orjson
from yarl import URL

from alerter.config import SourceConfig, WebhooksConfig, load_config
from alerter.errors import AlerterError
from alerter.notifiers.base import scrub

PATH = "/v1.1/webhooks"
REQUIRED_ACTIONS = "meter.enrollment.required-actions.updated"
TEST_EVENT = {
    "webhook_event_type": "meter.created",
    "meter_id": "00000000-0000-4000-8000-000000000000",
    "transmission_region": "CAISO",
}
"""What `test` asks Leap to send: an event type the endpoint acknowledges and ignores."""
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class WebhooksClient:
    """The subscription API; every failure is an AlerterError with one line and no secret."""

    def __init__(self, source: SourceConfig, session: aiohttp.ClientSession) -> None:
        self.base = source.base_url.rstrip("/")
        self.key = source.api_key.get_secret_value()
        self.secrets = (
            [self.key, *(s.get_secret_value() for s in source.webhooks.secrets)] if source.webhooks else [self.key]
        )
        """What Leap's answer must not be repeated with (an error may echo the request's headers or body)."""
        self.timeout = aiohttp.ClientTimeout(total=source.timeout.total_seconds())
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, what: str = "") -> Any:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, self.base + path, data=data, headers=headers, timeout=self.timeout
            ) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            where = URL(self.base).with_user(None).with_password(None).human_repr()
            raise AlerterError(f"cannot reach Leap at {where}: {type(err).__name__} {err}".rstrip()) from None
        if status == 401:
            raise AlerterError("Leap refused the API key (401): check source.api_key")
        if status == 403:
            raise AlerterError("Leap refused access (403): this API key may not manage webhooks")
        if status == 404:
            raise AlerterError(f"Leap answered 404 for {what or path}: not found (is source.base_url right?)")
        if not 200 <= status < 300:
            raise AlerterError(f"Leap answered {status} to {method} {path}: {_message(raw, self.secrets)}")
        try:
            return orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise AlerterError(f"Leap answered {method} {path} with a body that is not JSON") from None

    async def list(self) -> list[dict[str, Any]]:
        found = await self.call("GET", PATH)
        hooks = found.get("webhooks") if isinstance(found, dict) else None
        if not isinstance(hooks, list):
            raise AlerterError("Leap's webhook list has no `webhooks` array")
        return [h for h in hooks if isinstance(h, dict)]


def _message(raw: bytes, secrets: list[str]) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode(errors="replace").strip() or "(empty body)"
    else:
        text = (
            str(body.get("message") or body.get("title") or body.get("error") or body)
            if isinstance(body, dict)
            else str(body)
        )
    return scrub(text, secrets)[:200]


def _ours(hook: dict[str, Any], wh: WebhooksConfig) -> bool:
    secrets = {s.get_secret_value() for s in wh.secrets}
    return any(
        isinstance(h, dict) and str(h.get("name", "")).lower() == wh.header.lower() and h.get("value") in secrets
        for h in hook.get("headers") or []
    )


def _request_body(url: str, wh: WebhooksConfig, existing: dict[str, Any] | None) -> dict[str, Any]:
    types = list(dict.fromkeys([*((existing or {}).get("event_types") or []), REQUIRED_ACTIONS]))
    others = [
        {"name": h["name"], "value": h["value"]}
        for h in (existing or {}).get("headers") or []
        if isinstance(h, dict) and str(h.get("name", "")).lower() != wh.header.lower()
    ]
    header = {"name": wh.header, "value": wh.secrets[0].get_secret_value()}
    return {"event_types": types, "headers": [*others, header], "receiver_url": url}


async def _register(leap: WebhooksClient, hooks: list[dict[str, Any]], url: str, wh: WebhooksConfig) -> list[str]:
    same = [h for h in hooks if h.get("receiver_url") == url]
    if not same:
        created = await leap.call("POST", PATH, _request_body(url, wh, None))
        return [f"registered {created.get('webhook_id')} for {url}"]
    done = []
    for h in same:
        wid = h.get("webhook_id")
        await leap.call("PUT", f"{PATH}/{wid}", _request_body(url, wh, h), what=f"webhook {wid}")
        done.append(f"updated {wid} for {url}")
    return done


async def register(source: SourceConfig, url: str) -> list[str]:
    """Subscribes `url` (or updates its subscription); returns what was done, one line each."""
    if source.webhooks is None:
        raise AlerterError("source.webhooks is not configured")
    async with aiohttp.ClientSession() as session:
        leap = WebhooksClient(source, session)
        return await _register(leap, await leap.list(), url, source.webhooks)


async def _run(args: argparse.Namespace, source: SourceConfig, wh: WebhooksConfig) -> int:
    command, url = args.leap_webhooks_command, args.url
    async with aiohttp.ClientSession() as session:
        leap = WebhooksClient(source, session)
        hooks = await leap.list()
        if command == "list":
            if not hooks:
                print("no webhook subscriptions")
            for h in hooks:
                names = ",".join(str(x.get("name")) for x in h.get("headers") or [] if isinstance(x, dict))
                mark = "  (ours)" if _ours(h, wh) else ""
                types = ",".join(map(str, h.get("event_types") or []))
                print(f"{h.get('webhook_id')}  {h.get('receiver_url')}  {types}  headers: {names or '-'}{mark}")
            return EXIT_OK
        if command == "register":
            for line in await _register(leap, hooks, url, wh):
                print(line)
            return EXIT_OK
        chosen = [h for h in hooks if h.get("receiver_url") == url] if url else [h for h in hooks if _ours(h, wh)]
        if not chosen:
            where = f"for {url}" if url else f"carrying our {wh.header} header"
            raise AlerterError(f"no webhook subscription {where} (see `alerter leap-webhooks list`)")
        failed = 0
        for h in chosen:
            wid = h.get("webhook_id")
            if command == "delete":
                await leap.call("DELETE", f"{PATH}/{wid}", what=f"webhook {wid}")
                print(f"deleted {wid} ({h.get('receiver_url')})")
                continue
            result = await leap.call("POST", f"{PATH}/{wid}/test", TEST_EVENT, what=f"webhook {wid}")
            ok = bool(result.get("is_successful"))
            failed += not ok
            detail = (
                f"HTTP {result['status_code']}, {result.get('response_time_ms', '?')} ms"
                if result.get("status_code") is not None
                else str(result.get("error") or "no response")
            )
            print(f"{wid} {h.get('receiver_url')}: {'ok' if ok else 'failed'} ({detail})")
        return EXIT_FAILURE if failed else EXIT_OK


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    wh = config.source.webhooks
    if wh is None:
        print(f"alerter: {args.config}: source.webhooks is not configured", file=sys.stderr)
        return EXIT_USAGE
    if args.leap_webhooks_command == "register" and not args.url:
        print("alerter: leap-webhooks register needs --url (the endpoint Leap should call)", file=sys.stderr)
        return EXIT_USAGE
    if args.url and not args.url.startswith(("http://", "https://")):
        print(f"alerter: --url: expected an http:// or https:// URL, got {args.url!r}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run(args, config.source, wh))


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The `leap-webhooks` subcommands, for cli.py."""
    lw = sub.add_parser("leap-webhooks", help="this service's subscriptions to Leap's webhooks")
    lw_sub = lw.add_subparsers(dest="leap_webhooks_command", required=True, parser_class=parser_class)
    for name, help_ in (
        ("register", "subscribe --url to required-actions updates (updates an existing one)"),
        ("list", "every subscription (header values hidden)"),
        ("test", "ask Leap to send a test event; print the answer"),
        ("delete", "remove the subscription(s)"),
    ):
        p = lw_sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True, help="config file (YAML)")
        p.add_argument("--url", help="the receiver URL (default for test/delete: subscriptions with our header)")
