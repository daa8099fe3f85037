"""Slack: chat.postMessage with Block Kit, paced per channel; resolutions update the original.

How this works: a message about new obligations becomes their thread root (`channel:ts`).
A notification of only reminders or only resolutions answers in each obligation's thread,
and a resolution first ticks the obligation in the original message (conversations.history
then chat.update; skipped with a log line if the bot cannot read the channel). Slack has no
idempotency key, so each message of a notification is a step recorded on its ledger row
as soon as Slack accepts it: a retry after a partial failure posts only what is missing. Every post
and update waits its turn on a per-channel pacer (about one message a second, see pacing.py)
shared by all notifiers of the same service, token and channel; a 429 blocks that channel only.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from alerter.errors import DeliveryError
from alerter.http import retry_after
from alerter.models import Event, Notification
from alerter.notifiers.base import Deferred, SendResult, Steps, ThreadLookup, scrub
from alerter.pacing import Pacers
from alerter.receivers import SlackConfig
from alerter.render import slack_blocks
from alerter.render.slack import render_slack

log = structlog.get_logger("alerter.notifiers.slack")

PERMANENT = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
    }
)
RETRYABLE = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"})


def pacer_key(token: str, api_url: str, channel: str) -> tuple[str, str, str]:
    """Notifiers of the same workspace token and channel share one pacer."""
    return hashlib.sha256(token.encode()).hexdigest()[:16], api_url, channel


class SlackNotifier:
    channel = "slack"

    def __init__(self, receiver: str, config: SlackConfig, pacers: Pacers | None = None) -> None:
        """`pacers`: shared by the notifiers of one service (its own, on the event loop's clock, when not given)."""
        self.receiver = receiver
        self.config = config
        self.pacers = pacers if pacers is not None else Pacers(time.monotonic, asyncio.sleep)
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    def _web(self) -> AsyncWebClient:
        if self._client is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            self._client = AsyncWebClient(
                token=self.config.token.get_secret_value(),
                base_url=self.config.api_url,
                session=self._session,
                retry_handlers=[],
            )
        return self._client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session, self._client = None, None

    def _error(self, message: str) -> str:
        return scrub(message, [self.config.token.get_secret_value()])

    async def _call(self, method: str, paced: bool, now: datetime, **args: Any) -> dict[str, Any]:
        cfg = self.config
        key = pacer_key(cfg.token.get_secret_value(), cfg.api_url, cfg.channel)
        pacer = self.pacers.get(key, cfg.min_interval.total_seconds())
        max_wait = cfg.max_wait.total_seconds()
        for attempt in range(4):
            if paced:
                if (wait := pacer.expected_wait()) > max_wait:
                    raise Deferred(f"slack {method}: channel busy, next turn in {wait:.0f}s", wait)
                await pacer.turn()
            try:
                response = await self._web().api_call(method, json=args)
                return dict(response.data) if isinstance(response.data, dict) else {}
            except SlackApiError as e:
                status = e.response.status_code
                data = e.response.data if isinstance(e.response.data, dict) else {}
                code = str(data.get("error", "")) or f"HTTP {status}"
                if status == 429 or code == "ratelimited":
                    retry_after = _retry_after(e.response.headers, now)
                    pacer.block(retry_after)
                    if retry_after <= max_wait and attempt < 3:
                        log.info("slack_rate_limited", receiver=self.receiver, retry_after=retry_after)
                        if not paced:  # a paced call waits its turn above; this one waits here
                            await asyncio.sleep(retry_after)
                        continue
                    raise Deferred(f"slack {method}: rate limited, retry after {retry_after:g}s", retry_after) from None
                if code in PERMANENT:
                    log.error("slack_receiver_refused", receiver=self.receiver, method=method, error=code)
                    raise DeliveryError(
                        self._error(f"slack {method}: {code} (check the token, channel and bot membership)"),
                        retryable=False,
                    ) from None
                retryable = status >= 500 or code in RETRYABLE
                raise DeliveryError(self._error(f"slack {method}: {code}"), retryable=retryable) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise DeliveryError(
                    self._error(f"slack {method}: connection failed ({type(e).__name__})"), retryable=True
                ) from None
        raise Deferred(f"slack {method}: still rate limited", pacer.expected_wait())

    async def _post(
        self, n: Notification, events: tuple[Event, ...], now: datetime, thread_ts: str | None = None
    ) -> str:
        msg = render_slack(msgspec.structs.replace(n, events=events), self.config, now)
        if msg.template_error:
            log.warning("template_failed", receiver=self.receiver, notification_id=n.id, error=msg.template_error)
        args: dict[str, Any] = {
            "channel": self.config.channel,
            "text": slack_blocks.cut(msg.text, slack_blocks.MESSAGE_TEXT),
            "blocks": msg.blocks,
        }
        if thread_ts:
            args["thread_ts"] = thread_ts
        data = await self._call("chat.postMessage", paced=True, now=now, **args)
        return f"{data.get('channel', self.config.channel)}:{data.get('ts', '')}"

    async def _post_step(
        self, steps: Steps, step: str, n: Notification, events: tuple[Event, ...], now: datetime, root: str = ""
    ) -> str:
        """Post one message of the notification unless an earlier attempt already did."""
        done = steps.get(step)
        if done is not None:
            return done
        ext = await self._post(n, events, now, thread_ts=root.partition(":")[2] or None)
        await steps.done(step, ext)
        return ext

    async def _tick_original(self, root: str, events: list[Event], now: datetime) -> None:
        channel, _, ts = root.partition(":")
        resolved = {e.obligation.key_id: e.obligation.meter.partner_reference or e.obligation.meter_id for e in events}
        try:
            history = await self._call(
                "conversations.history", paced=False, now=now, channel=channel, latest=ts, inclusive=True, limit=1
            )
        except DeliveryError as e:
            if e.retryable:
                raise
            log.warning("slack_update_skipped", receiver=self.receiver, reason=str(e))
            return
        original = next((m for m in history.get("messages", []) if m.get("ts") == ts), None)
        if original is None:
            log.warning("slack_update_skipped", receiver=self.receiver, reason="original message not found")
            return
        when = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        blocks = slack_blocks.mark_resolved(original.get("blocks", []), resolved, when)
        try:
            await self._call(
                "chat.update", paced=True, now=now, channel=channel, ts=ts, text=original.get("text", ""), blocks=blocks
            )
        except DeliveryError as e:
            # the tick is a courtesy: a message Slack will not let be edited (too old, not the
            # bot's, too long) must not hold back the reply in its thread, nor the rest
            if e.retryable:
                raise
            log.warning("slack_update_skipped", receiver=self.receiver, reason=str(e))

    async def send(
        self, notification: Notification, threads: ThreadLookup, now: datetime, steps: Steps | None = None
    ) -> SendResult:
        """Every message is a step (`post`, `update:<root>`, `reply:<root>`) recorded in `steps`
        as soon as Slack accepts it; a retry skips the steps already done. A resolution or a
        reminder of an obligation with a thread answers in it (a resolution ticks the original
        message first), whatever else the notification holds; the rest is one new message, the
        thread of its obligations (but those it tells resolved)."""
        steps = steps if steps is not None else Steps()
        if notification.kind != "notification" or not notification.events:  # a digest, an alert of its own
            ext = await self._post_step(steps, "post", notification, notification.events, now)
            return SendResult(ext, {e.obligation.key_id: ext for e in notification.events})
        by_root: dict[str, list[Event]] = {}
        loose: list[Event] = []
        for e in notification.events:
            root = await threads(e.obligation.key_id) if e.kind in _IN_THREAD else None
            by_root.setdefault(root, []).append(e) if root else loose.append(e)
        first: str | None = None
        for root, events in by_root.items():
            resolved = [e for e in events if e.kind == "resolved"]
            if resolved and steps.get(f"update:{root}") is None:
                await self._tick_original(root, resolved, now)
                await steps.done(f"update:{root}", root)
            ext = await self._post_step(steps, f"reply:{root}", notification, tuple(events), now, root)
            first = first or ext
        if not loose:
            return SendResult(first)
        ext = await self._post_step(steps, "post", notification, tuple(loose), now)
        # an opening starts its obligation's thread, replacing one a resolved earlier version had
        new_roots = {e.obligation.key_id: ext for e in loose if e.kind != "resolved"}
        opened = {e.obligation.key_id: ext for e in loose if e.kind == "opened"}
        return SendResult(first or ext, new_roots, opened)


_IN_THREAD = frozenset({"resolved", "reminder"})
"""Kinds that answer in the thread of their obligation's first message, where it has one."""


RATE_LIMIT_LONGEST = 3600.0
"""The longest a 429's Retry-After holds a Slack channel back (Slack's own are seconds to a
minute): one far larger, however sent, would dead-letter every message to the channel."""


def _retry_after(headers: Mapping[str, Any], now: datetime) -> float:
    value = headers.get("Retry-After", headers.get("retry-after"))
    seconds = retry_after(str(value) if value is not None else None, now)
    return 1.0 if seconds is None else min(seconds, RATE_LIMIT_LONGEST)
