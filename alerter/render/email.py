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
    template_error: str | None = None
    """A custom template failed on this notification; the built-in one was rendered instead."""


def render_email(n: Notification, cfg: EmailConfig | None, now: datetime, *, strict: bool = False) -> EmailContent:
    """`strict` (`alerter check`): a custom template that fails raises, where a send falls back to
    the built-in one (`templates.render_custom`)."""
    ctx = templates.context(n, now, cfg.portal_url if cfg else templates.PORTAL_URL)

    failed: list[str] = []

    def pick(custom: str | None, builtin: str, html: bool) -> str:
        rendered = templates.render_custom(custom, ctx, html, strict=strict) if custom else None
        if isinstance(rendered, str):
            return rendered
        if rendered is not None:
            failed.append(templates.template_error(rendered))
        return templates.builtin(builtin, html).render(ctx)

    subject = " ".join(pick(cfg.subject_template if cfg else None, "email_subject.j2", False).split())
    text = pick(cfg.text_template if cfg else None, "email_text.j2", False)
    html = pick(cfg.html_template if cfg else None, "email_html.j2", True)
    return EmailContent(templates.cut(subject, SUBJECT_LIMIT), text, html, "; ".join(failed) or None)
