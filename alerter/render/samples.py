"""Sample notifications of every kind, and `check_templates`: every receiver's templates
rendered against them (what `alerter check` reports), one line per problem."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError

from alerter.models import Event, EventKind, Meter, Notification, NotificationKind, Obligation, event_id
from alerter.receivers import EmailConfig, SlackConfig
from alerter.render import slack_blocks
from alerter.render.email import render_email
from alerter.render.slack import render_slack


def check_templates(receivers: Iterable[tuple[str, Any]], now: datetime | None = None) -> list[str]:
    """Render every receiver's templates against the sample notifications; one line per problem.

    Each item is (receiver name, config): a SlackConfig/EmailConfig/..., or a receiver object
    with optional `.slack`, `.email`, `.webhook`, `.console` attributes.
    """
    at = now or datetime.now(UTC)
    samples = sample_notifications(at)
    problems: list[str] = []
    for name, rc in receivers:
        configs = (
            [rc]
            if isinstance(rc, SlackConfig | EmailConfig)
            else [getattr(rc, "slack", None), getattr(rc, "email", None)]
        )
        for cfg in configs:
            if isinstance(cfg, SlackConfig | EmailConfig):
                problems += _check_one(name, cfg, samples, at)
    return list(dict.fromkeys(problems))


def _check_one(name: str, cfg: SlackConfig | EmailConfig, samples: list[Notification], now: datetime) -> list[str]:
    channel = "slack" if isinstance(cfg, SlackConfig) else "email"
    problems = []
    for n in samples:
        try:
            if isinstance(cfg, SlackConfig):
                msg = render_slack(n, cfg, now, strict=True)
                for p in slack_blocks.limit_problems(msg.text, msg.blocks):
                    problems.append(f"receiver {name}: slack message for sample {n.id!r}: {p}")
            else:
                render_email(n, cfg, now, strict=True)
        except TemplateSyntaxError as e:
            problems.append(f"receiver {name}: {channel} template syntax error on line {e.lineno}: {e.message}")
        except TemplateError as e:
            problems.append(f"receiver {name}: {channel} template: {e.message}")
        except Exception as e:  # a template may raise anything a sandboxed expression can
            problems.append(f"receiver {name}: {channel} template: {type(e).__name__}: {e}")
    return problems


def _sample_event(i: int, kind: EventKind, now: datetime, **kw: Any) -> Event:
    day = timedelta(days=1)
    types = ("IS_AUTHORIZED", "MISSING_FIELDS", "SIGN_DOCUMENTS")
    meter = Meter(
        meter_id=f"sample-meter-{i:04d}",
        partner_reference="Acme <North> & Co #1" if i == 0 else f"ACME-{i:04d}",
        transmission_region=("CAISO", "NYISO", "ERCOT")[i % 3],
        tags=("vip",) if i % 5 == 0 else (),
    )
    o = Obligation(
        meter_id=meter.meter_id,
        program_identifier="CAISO_DRAM",
        delivery_period="2026-12",
        action_type=kw.pop("action_type", types[i % 3]),
        action_code=f"CODE_{i % 7}",
        action_description="Customer authorization expired; ask the customer to re-authorize.",
        deadline=(None, now + 3 * day, now - 2 * day, now + 20 * day, now + 90 * day)[i % 5],
        meter=meter,
        status="resolved" if kind == "resolved" else "open",
        resolution="cleared" if kind == "resolved" else None,
        opened_at=now - 5 * day,
        first_seen=now - 5 * day,
        last_seen=now,
        resolved_at=now if kind == "resolved" else None,
    )
    return Event(id=event_id(o.key, kind, 1), kind=kind, occurred_at=now, obligation=o, **kw)


def sample_notifications(now: datetime) -> list[Notification]:
    """Sample notifications with every event kind, a large group (folding) and a digest."""

    def note(name: str, events: list[Event], kind: NotificationKind = "notification") -> Notification:
        group = {"action_type": events[0].obligation.action_type}
        return Notification(
            id=f"sample-{name}",
            kind=kind,
            rule="sample-rule",
            receiver="sample",
            group=group,
            events=tuple(events),
            created_at=now,
        )

    changed = {"action_description": "Old description", "deadline": now + timedelta(days=10)}
    return [
        note("opened", [_sample_event(i, "opened", now, action_type="IS_AUTHORIZED") for i in range(3)]),
        note("changed", [_sample_event(3, "changed", now, previous=changed)]),
        note("reminder", [_sample_event(4, "reminder", now, detail="before:2d")]),
        note("resolved", [_sample_event(i, "resolved", now, detail="cleared") for i in range(2)]),
        note("large", [_sample_event(i, "opened", now) for i in range(120)]),
        note("digest", [_sample_event(i, "opened", now, initial=True) for i in range(40)], kind="digest"),
    ]
