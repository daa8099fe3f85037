"""A Slack message (text fallback and Block Kit blocks) for one notification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerter import templates
from alerter.models import Notification
from alerter.receivers import SlackConfig
from alerter.render import slack_blocks


@dataclass(frozen=True)
class SlackMessage:
    text: str
    blocks: list[dict[str, Any]]
    template_error: str | None = None
    """The custom template failed on this notification; the built-in message was rendered instead."""


def render_slack(n: Notification, cfg: SlackConfig | None, now: datetime, *, strict: bool = False) -> SlackMessage:
    """`strict` as `render_email`'s."""
    ctx = templates.context(n, now, cfg.portal_url if cfg else templates.PORTAL_URL)
    custom = templates.render_custom(cfg.template, ctx, strict=strict) if cfg is not None and cfg.template else None
    if isinstance(custom, str):
        text = custom.strip()
        return SlackMessage(text, slack_blocks.text_blocks(ctx["title"], text))
    text = templates.builtin("slack_text.j2").render(ctx).strip()
    blocks = slack_blocks.digest_blocks(ctx) if n.kind == "digest" else slack_blocks.event_blocks(ctx)
    return SlackMessage(text, blocks, templates.template_error(custom) if custom is not None else None)
