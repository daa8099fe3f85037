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


def render_slack(n: Notification, cfg: SlackConfig | None, now: datetime) -> SlackMessage:
    ctx = templates.context(n, now, cfg.portal_url if cfg else templates.PORTAL_URL)
    if cfg is not None and cfg.template:
        text = templates.compile_template(cfg.template).render(ctx).strip()
        return SlackMessage(text, slack_blocks.text_blocks(ctx["title"], text))
    text = templates.builtin("slack_text.j2").render(ctx).strip()
    blocks = slack_blocks.digest_blocks(ctx) if n.kind == "digest" else slack_blocks.event_blocks(ctx)
    return SlackMessage(text, blocks)
