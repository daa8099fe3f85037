"""Email over SMTP (aiosmtplib): text and HTML parts, Message-ID from the notification id.

Threading: the first mail about an obligation is its thread root; later mails about it
carry `In-Reply-To`/`References` to that Message-ID, so mail clients group them.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from alerter import templates
from alerter.config import STRICT, Duration
from alerter.errors import DeliveryError
from alerter.models import Notification
from alerter.notifiers.base import SendResult, Steps, ThreadLookup, scrub


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
    cert_bundle: str | None = None
    """A CA bundle to verify the server with (a private CA); the system store otherwise."""


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smtp: SmtpConfig
    subject_template: str | None = None
    text_template: str | None = None
    html_template: str | None = None
    portal_url: str = templates.PORTAL_URL
    max_events: int = Field(200, ge=1)
    """A larger group or digest is sent as several mails."""

    @field_validator("subject_template", "text_template")
    @classmethod
    def _text_template_compiles(cls, value: str | None) -> str | None:
        return templates.validate_template(value)

    @field_validator("html_template")
    @classmethod
    def _html_template_compiles(cls, value: str | None) -> str | None:
        return templates.validate_template(value, html=True)


def message_id(notification_id: str) -> str:
    """The same notification always has the same Message-ID, so a resend is recognisable."""
    return f"<{notification_id}@alerter>"


class EmailNotifier:
    channel = "email"

    def __init__(self, receiver: str, config: EmailConfig) -> None:
        self.receiver = receiver
        self.config = config

    async def close(self) -> None:
        return None

    async def build(self, n: Notification, threads: ThreadLookup, now: datetime) -> EmailMessage:
        cfg = self.config
        content = templates.render_email(n, cfg, now)
        msg = EmailMessage()
        msg["Subject"] = content.subject
        msg["From"] = cfg.from_
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = format_datetime(n.created_at.astimezone(UTC))
        msg["Message-ID"] = message_id(n.id)
        roots: list[str] = []
        for e in n.events:
            root = await threads(e.obligation.key_id)
            if root and root not in roots and root != message_id(n.id):
                roots.append(root)
        if roots:
            msg["In-Reply-To"] = roots[0]
            msg["References"] = " ".join(roots[:20])
        msg["X-Alerter-Rule"] = n.rule
        msg.set_content(content.text)
        msg.add_alternative(content.html, subtype="html")
        return msg

    async def send(
        self, notification: Notification, threads: ThreadLookup, now: datetime, steps: Steps | None = None
    ) -> SendResult:
        msg = await self.build(notification, threads, now)
        smtp = self.config.smtp
        secrets = [smtp.password.get_secret_value()] if smtp.password else []
        context = ssl.create_default_context(cafile=smtp.cert_bundle) if smtp.cert_bundle else None
        try:
            await aiosmtplib.send(
                msg,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password.get_secret_value() if smtp.password else None,
                use_tls=smtp.tls,
                start_tls=smtp.starttls and not smtp.tls,
                tls_context=context,
                timeout=smtp.timeout.total_seconds(),
            )
        except aiosmtplib.SMTPAuthenticationError as e:
            raise DeliveryError(
                scrub(f"smtp {smtp.host}: authentication refused ({e.code})", secrets), retryable=False
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as e:
            codes = sorted({r.code for r in e.recipients})
            retryable = all(400 <= c < 500 for c in codes)
            raise DeliveryError(
                scrub(f"smtp {smtp.host}: recipients refused ({codes})", secrets), retryable=retryable
            ) from None
        except aiosmtplib.SMTPResponseException as e:
            text = scrub(f"smtp {smtp.host}: {e.code} {e.message}"[:300], secrets)
            raise DeliveryError(text, retryable=not 500 <= e.code < 600) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise DeliveryError(
                scrub(f"smtp {smtp.host}:{smtp.port}: {type(e).__name__}", secrets), retryable=True
            ) from None
        ext = message_id(notification.id)
        return SendResult(ext, {e.obligation.key_id: ext for e in notification.events})
