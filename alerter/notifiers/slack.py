"""Slack: chat.postMessage with Block Kit, paced per channel; resolutions update the original."""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from alerter.config import STRICT


class SlackConfig(BaseModel):
    model_config = STRICT

    token: SecretStr
    channel: str
    api_url: str = "https://slack.com/api/"
    template: str | None = None
    """Optional Jinja2 template for the message text (Block Kit is built from it)."""
