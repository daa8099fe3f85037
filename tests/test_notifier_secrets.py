"""Every channel, every failure class: no token, password, secret or URL query string in any
error message, log line or ledger `last_error` (Alertmanager's AssertNotifyLeaksNoSecret)."""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import structlog

from alerter.delivery import Deliverer
from alerter.errors import DeliveryError
from alerter.models import RoutingWrite
from alerter.notifiers import build_notifier
from alerter.notifiers.base import Notifier
from alerter.receivers import EmailConfig, SlackConfig, WebhookConfig
from alerter.store import open_store
from tests.support.channels import fake_slack, smtp_server, webhook_collector
from tests.support.notifications import T0, event, notification

TOKEN = "xoxb-SLACK-TOKEN-SECRET-1"
PASSWORD = "SMTP-PASSWORD-SECRET-2"
WHSEC = "whsec_" + base64.b64encode(b"WEBHOOK-SECRET-3-bytes").decode()
QUERY = "QUERY-SECRET-4"
PATH = "PATH-TOKEN-5"
SECRETS = (TOKEN, PASSWORD, WHSEC, WHSEC.removeprefix("whsec_"), QUERY, PATH)


@dataclass
class Case:
    """A channel set up to fail one way: `setup` arms the fault and returns the notifier."""

    name: str
    setup: Callable[[AsyncExitStack], Awaitable[Notifier]]


async def slack_case(fault: str, exits: AsyncExitStack, token: str = TOKEN) -> Notifier:
    slack = await exits.enter_async_context(fake_slack(token="xoxb-the-real-one"))
    if fault == "refused":
        slack.port = 1
    elif fault != "invalid_auth":
        slack.fail(fault, retry_after=3600)
    cfg = SlackConfig.model_validate({"token": token, "channel": "#c", "api_url": slack.api_url, "max_wait": "1s"})
    return build_notifier("slack", slack=cfg)


async def email_case(fault: str, exits: AsyncExitStack) -> Notifier:
    smtp = await exits.enter_async_context(smtp_server(auth=("alerter", "the-real-one")))
    if fault.startswith(("4", "5")):
        smtp.script.append(fault)
    port = 1 if fault == "refused" else smtp.port
    cfg = EmailConfig.model_validate(
        {"to": ["a@x"], "from": "b@x",
         "smtp": {"host": smtp.host, "port": port, "username": "alerter", "password": PASSWORD, "timeout": "2s"}}
    )  # fmt: skip
    return build_notifier("mail", email=cfg)


async def webhook_case(fault: str, exits: AsyncExitStack) -> Notifier:
    hook = await exits.enter_async_context(webhook_collector([WHSEC]))
    hook.script.append(fault if fault == "timeout" else int(fault) if fault != "refused" else 200)
    hook.stall = 0.5
    url = hook.url(f"/hooks/{PATH}", f"token={QUERY}")
    if fault == "refused":
        url = url.replace(f":{hook.port}", ":1")
    cfg = WebhookConfig.model_validate({"url": url, "secret": WHSEC, "timeout": "200ms"})
    return build_notifier("hook", webhook=cfg)


def cases() -> list[Any]:
    faults = {
        "slack": (slack_case, ("invalid_auth", "channel_not_found", "500", "ratelimited", "refused")),
        "email": (email_case, ("535 5.7.8 bad credentials", "451 4.3.0 later", "550 5.7.1 no", "refused")),
        "webhook": (webhook_case, ("500", "400", "410", "301", "429", "timeout", "refused")),
    }
    return [
        pytest.param(Case(f"{channel}-{f}", functools.partial(make, f)), id=f"{channel}-{f.split()[0]}")
        for channel, (make, names) in faults.items()
        for f in names
    ]


@asynccontextmanager
async def opened_store() -> AsyncIterator[Any]:
    store = open_store("sqlite://:memory:")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.parametrize("case", cases())
async def test_no_secret_in_errors_logs_or_ledger(case: Case) -> None:
    async with AsyncExitStack() as exits, opened_store() as store:
        notifier = await case.setup(exits)
        # 1. the exception a direct send raises
        with pytest.raises(DeliveryError) as err:
            await notifier.send(notification("direct", [event(1)]), lambda k: _none(), T0)
        assert not leaks(str(err.value)) and not leaks(repr(err.value))
        # 2. the delivery worker's log lines and ledger row
        notifier = await case.setup(exits)
        n = notification("queued", [event(1)], receiver=notifier.receiver)
        await store.commit_routing(RoutingWrite(consumed=[], notifications=[n]))
        with structlog.testing.capture_logs() as logs:
            await Deliverer(store, {notifier.receiver: notifier}, "w").run_once(T0)
        await notifier.close()
        rows = await store.dead_letters() + await store.claim_deliveries(T0 + timedelta(days=2), "x", 10, 1)
        errors = [d.last_error or "" for d in rows]
    assert logs, "the failure was logged"
    assert any(e.get("event") in ("delivery_failed", "delivery_deferred") for e in logs)
    assert not leaks(repr(logs)), logs
    assert errors and all(errors), "the ledger row says why"
    assert not any(leaks(e) for e in errors), errors


async def _none() -> str | None:
    return None
