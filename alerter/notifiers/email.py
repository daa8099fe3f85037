"""Email over SMTP (aiosmtplib): text and HTML parts, Message-ID from the notification id.

Threading: the first mail about an obligation is its thread root; later mails about it
carry `In-Reply-To`/`References` to that Message-ID, so mail clients group them.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
import structlog

from alerter.errors import DeliveryError
from alerter.models import Notification
from alerter.notifiers.base import SendResult, Steps, ThreadLookup, scrub
from alerter.receivers import EmailConfig, SmtpConfig
from alerter.render.email import render_email

log = structlog.get_logger("alerter.notifiers.email")


def _start_tls(smtp: SmtpConfig) -> bool | None:
    """aiosmtplib's `start_tls`: True required, False never, None when the server offers it
    (`SmtpConfig.starttls` unset, with a username)."""
    if smtp.tls:
        return False
    if smtp.starttls is None:
        return None if smtp.username else False
    return smtp.starttls


def message_id(notification_id: str) -> str:
    """The same notification always has the same Message-ID, so a resend is recognisable."""
    return f"<{notification_id}@alerter>"


class EmailNotifier:
    channel = "email"

    def __init__(self, receiver: str, config: EmailConfig) -> None:
        self.receiver = receiver
        self.config = config
        self.recipients = [parseaddr(text)[1] or text for text in config.to]
        """The addresses of `to` (`Ops <ops@example.com>` is ops@example.com)."""

    async def close(self) -> None:
        return None

    async def build(self, n: Notification, threads: ThreadLookup, now: datetime) -> EmailMessage:
        cfg = self.config
        content = render_email(n, cfg, now)
        if content.template_error:
            log.warning("template_failed", receiver=self.receiver, notification_id=n.id, error=content.template_error)
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
        """One mail to every address of `to`; each address the server takes is a step, and so is
        each it refuses for good (5xx), so a retry after some were refused for now (a full
        mailbox, greylisting) goes to those alone. Once none is left to retry, a refusal for good
        makes the notification a dead letter that says so."""
        steps = steps if steps is not None else Steps()
        ext = message_id(notification.id)
        result = SendResult(ext, {e.obligation.key_id: ext for e in notification.events})
        recipients = [a for a in self.recipients if steps.get(f"to:{a}") is None and steps.get(f"gone:{a}") is None]
        if not recipients:  # every address took it, or refused it for good, on an earlier attempt
            return self._ended(result, steps)
        msg = await self.build(notification, threads, now)
        smtp = self.config.smtp
        secrets = [smtp.password.get_secret_value()] if smtp.password else []
        context = ssl.create_default_context(cafile=smtp.cert_bundle) if smtp.cert_bundle else None
        try:
            errors, _ = await aiosmtplib.send(
                msg,
                recipients=recipients,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password.get_secret_value() if smtp.password else None,
                use_tls=smtp.tls,
                start_tls=_start_tls(smtp),
                tls_context=context,
                timeout=smtp.timeout.total_seconds(),
            )
            refused = {address: response.code for address, response in errors.items()}
        except aiosmtplib.SMTPAuthenticationError as e:
            raise DeliveryError(
                scrub(f"smtp {smtp.host}: authentication refused ({e.code})", secrets), retryable=False
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as e:
            refused = {r.recipient: r.code for r in e.recipients}
        except aiosmtplib.SMTPResponseException as e:
            text = scrub(f"smtp {smtp.host}: {e.code} {e.message}"[:300], secrets)
            raise DeliveryError(text, retryable=not 500 <= e.code < 600) from None
        except ssl.SSLCertVerificationError as e:
            raise DeliveryError(
                f"smtp {smtp.host}:{smtp.port}: its TLS certificate is not trusted ({e.verify_message}): "
                "name its CA in smtp.cert_bundle",
                retryable=True,
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise DeliveryError(
                scrub(f"smtp {smtp.host}:{smtp.port}: {type(e).__name__}", secrets), retryable=True
            ) from None
        for address in recipients:
            code = refused.get(address)
            if code is None:
                await steps.done(f"to:{address}", ext)
            elif code >= 500:
                await steps.done(f"gone:{address}", str(code))
        later = {a: c for a, c in refused.items() if c < 500}
        if later:  # the others have it, or refused it for good; a retry goes to these alone
            codes = sorted(set(later.values()))
            took = len(recipients) - len(refused)
            text = f"smtp {smtp.host}: recipients refused ({codes}), {len(later)} of {len(recipients)} for now"
            raise DeliveryError(
                scrub(text + (f"; {took} took it" if took else ""), secrets),
                retryable=True,
                threads=self._had(result, steps),
            )
        return self._ended(result, steps)

    def _had(self, result: SendResult, steps: Steps) -> dict[str, str]:
        """The mail's thread roots when any address has it: its replies thread under it there."""
        return result.threads if any(steps.get(f"to:{a}") is not None for a in self.recipients) else {}

    def _ended(self, result: SendResult, steps: Steps) -> SendResult:
        """Every address has taken the mail or refused it for good: the result, or a dead letter
        naming how many refused it (and with which codes)."""
        codes = [code for a in self.recipients if (code := steps.get(f"gone:{a}")) is not None]
        if not codes:
            return result
        every = len(self.recipients)
        took = every - len(codes)
        refused = ", ".join(sorted(set(codes)))
        text = f"smtp {self.config.smtp.host}: recipients refused ({refused}), {len(codes)} of {every} for good"
        raise DeliveryError(
            text + (f"; {took} took it" if took else ""), retryable=False, threads=self._had(result, steps)
        )
