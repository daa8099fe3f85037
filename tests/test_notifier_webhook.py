"""Webhook notifier against a loopback collector that verifies Standard Webhooks signatures."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from alerter.errors import DeliveryError
from alerter.notifiers import build_notifier
from alerter.notifiers.base import ReceiverGone
from alerter.notifiers.webhook import WebhookNotifier, sign
from alerter.receivers import WebhookConfig
from tests.support.channels import WebhookCollector, webhook_collector
from tests.support.notifications import T0, event, notification

OLD = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef").decode()
NEW = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef").decode()


def make(hook: WebhookCollector, **over: Any) -> WebhookNotifier:
    cfg = WebhookConfig.model_validate({"url": hook.url(), "secret": NEW, "headers": {"X-Team": "ops"}} | over)
    notifier = build_notifier("crm", webhook=cfg)
    assert isinstance(notifier, WebhookNotifier)
    return notifier


async def no_threads(key_id: str) -> str | None:
    return None


async def test_body_and_headers_follow_the_interface() -> None:
    async with webhook_collector([NEW]) as hook:
        notifier = make(hook)
        n = notification("n-1", [event(1)])
        result = await notifier.send(n, no_threads, T0)
        await notifier.close()
    [got] = hook.received
    assert got.verified and result.external_id == "n-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == "n-1" and got.headers["x-team"] == "ops"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    assert got.body["type"] == "alerter.notification" and got.body["timestamp"] == "2026-11-28T10:00:00Z"
    data = got.body["data"]
    assert (data["id"], data["rule"], data["receiver"]) == ("n-1", "rule-1", "r")
    assert data["group"] == {"action_type": "IS_AUTHORIZED"}
    [ev] = data["events"]
    assert ev["type"] == "action.opened" and ev["meter"]["meter_id"] == "meter-0001"
    assert ev["action"]["enrollment_deadline_date_time"] == "2026-12-01T10:00:00Z"


@pytest.mark.parametrize("collector_secret", [OLD, NEW])
async def test_rotation_signs_with_both_secrets(collector_secret: str) -> None:
    async with webhook_collector([collector_secret]) as hook:
        notifier = make(hook, secret=[OLD, NEW])
        await notifier.send(notification("n-1", [event(1)]), no_threads, T0)
        await notifier.close()
    [got] = hook.received
    assert got.verified and len(got.headers["webhook-signature"].split(" ")) == 2


async def test_wrong_secret_does_not_verify() -> None:
    async with webhook_collector([OLD]) as hook:
        notifier = make(hook)
        await notifier.send(notification("n-1", [event(1)]), no_threads, T0)
        await notifier.close()
    assert not hook.received[0].verified


def test_signature_matches_the_spec_by_hand() -> None:
    import hashlib
    import hmac

    key = base64.b64decode(NEW.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"id1.1700000000.{}", hashlib.sha256).digest()).decode()
    assert sign([NEW], "id1", 1700000000, "{}") == f"v1,{expected}"


async def test_retry_carries_the_same_webhook_id_and_body() -> None:
    async with webhook_collector([NEW]) as hook:
        hook.script.extend([500, 200])
        notifier = make(hook)
        n = notification("n-7", [event(1), event(2)])
        with pytest.raises(DeliveryError) as err:
            await notifier.send(n, no_threads, T0)
        assert err.value.retryable
        await notifier.send(n, no_threads, T0)
        await notifier.close()
    first, second = hook.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "n-7"
    assert first.body == second.body and second.verified


@pytest.mark.parametrize(
    ("answer", "retryable", "retry_after"),
    [(500, True, None), (503, True, None), (429, True, 7.0), ("timeout", True, None), (400, False, None),
     (404, False, None), (301, False, None)],
)  # fmt: skip
async def test_status_classes(answer: int | str, retryable: bool, retry_after: float | None) -> None:
    async with webhook_collector([NEW]) as hook:
        hook.script.append(answer)
        hook.retry_after = "7"
        hook.stall = 1.0
        notifier = make(hook, timeout="200ms")
        with pytest.raises(DeliveryError) as err:
            await notifier.send(notification("n", [event(1)]), no_threads, T0)
        await notifier.close()
    assert err.value.retryable is retryable and err.value.retry_after == retry_after
    assert not isinstance(err.value, ReceiverGone)
    if answer == 301:
        assert "redirect" in str(err.value) and len(hook.received) == 1


async def test_gone_disables_the_receiver() -> None:
    async with webhook_collector([NEW]) as hook:
        hook.script.append(410)
        notifier = make(hook)
        with pytest.raises(ReceiverGone) as err:
            await notifier.send(notification("n", [event(1)]), no_threads, T0)
        await notifier.close()
    assert not err.value.retryable and err.value.disable_receiver


async def test_connection_refused_is_retryable() -> None:
    async with webhook_collector([NEW]) as hook:
        notifier = make(hook)
    with pytest.raises(DeliveryError) as err:
        await notifier.send(notification("n", [event(1)]), no_threads, T0)
    await notifier.close()
    assert err.value.retryable


async def test_digest_body() -> None:
    async with webhook_collector([NEW]) as hook:
        notifier = make(hook)
        await notifier.send(
            notification("d", [event(i, initial=True) for i in range(3)], kind="digest"), no_threads, T0
        )
        await notifier.close()
    body = hook.received[0].body
    assert body["type"] == "alerter.digest"
    assert body["data"]["counts"]["total"] == 3 and len(body["data"]["events"]) == 3
    assert body["data"]["counts"]["by_region"] == {"NYISO": 2, "CAISO": 1}


def test_config_rejects_a_bad_secret_and_url() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookConfig.model_validate({"url": "https://x", "secret": "whsec_!!!"})
    with pytest.raises(ValueError, match="http"):
        WebhookConfig.model_validate({"url": "ftp://x"})
