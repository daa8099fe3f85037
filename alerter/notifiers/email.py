"""Email over SMTP (aiosmtplib): text and HTML parts, Message-ID from the notification id."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from alerter.config import STRICT, Duration


class SmtpConfig(BaseModel):
    model_config = STRICT

    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False
    """Implicit TLS (usually port 465)."""
    username: str | None = None
    password: SecretStr | None = None
    timeout: Duration = timedelta(seconds=30)


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smtp: SmtpConfig
    subject_template: str | None = None
    text_template: str | None = None
    html_template: str | None = None
