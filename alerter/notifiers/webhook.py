"""Webhooks signed per the Standard Webhooks spec; 410 disables the receiver."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field, SecretStr

from alerter.config import STRICT, Duration


class WebhookConfig(BaseModel):
    model_config = STRICT

    url: str
    secret: SecretStr | list[SecretStr] | None = None
    """`whsec_<base64>`; a list while a secret rotates (one signature per secret)."""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=15)
