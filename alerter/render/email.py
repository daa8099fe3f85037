"""An email's subject, text part and HTML part for one notification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from alerter import templates
from alerter.models import Notification
from alerter.receivers import EmailConfig

SUBJECT_LIMIT = 200


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str


def render_email(n: Notification, cfg: EmailConfig | None, now: datetime) -> EmailContent:
    ctx = templates.context(n, now, cfg.portal_url if cfg else templates.PORTAL_URL)

    def pick(custom: str | None, builtin: str, html: bool) -> str:
        if custom:
            return templates.compile_template(custom, html).render(ctx)
        return templates.builtin(builtin, html).render(ctx)

    subject = " ".join(pick(cfg.subject_template if cfg else None, "email_subject.j2", False).split())
    return EmailContent(
        subject=templates.cut(subject, SUBJECT_LIMIT),
        text=pick(cfg.text_template if cfg else None, "email_text.j2", False),
        html=pick(cfg.html_template if cfg else None, "email_html.j2", True),
    )
