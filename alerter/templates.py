"""Message rendering: sandboxed Jinja2 templates over one context, for Slack, email and webhooks.

Every channel renders from the same context (`context(n, now)`): the notification, its
events as flat dicts (the fields rules match on plus `label`, `verb`, `deadline_text`,
`portal_url`, ...), a `title`, and for an initial-sync digest the counts by action type,
region and deadline bucket. Per-receiver templates see exactly this context.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from alerter.models import Event, Meter, Notification, Obligation, event_id
from alerter.notifiers import slack_blocks
from alerter.summary import Summary

if TYPE_CHECKING:
    from alerter.notifiers.email import EmailConfig
    from alerter.notifiers.slack import SlackConfig

PORTAL_URL = "https://app.leap.energy"
LIST_LIMIT = 200
"""Email lists at most this many events; the rest is counted ("... and N more")."""
SUBJECT_LIMIT = 200

_VERB = {"opened": "New", "changed": "Changed", "reminder": "Reminder", "resolved": "Resolved"}


@dataclass(frozen=True)
class SlackMessage:
    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as in the webhook body."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _span(seconds: float) -> str:
    if seconds < 3600:
        n, unit = max(1, round(seconds / 60)), "minute"
    elif seconds < 2 * 86400:
        n, unit = round(seconds / 3600), "hour"
    else:
        n, unit = int(seconds // 86400), "day"
    return f"{n} {unit}{'' if n == 1 else 's'}"


def relative(deadline: datetime | None, now: datetime) -> str:
    """`in 3 days`, `overdue by 2 days`, `no deadline`."""
    if deadline is None:
        return "no deadline"
    seconds = (deadline - now).total_seconds()
    return f"in {_span(seconds)}" if seconds >= 0 else f"overdue by {_span(-seconds)}"


def _make_env(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(Path(__file__).with_name("templates")),
        undefined=StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["relative"] = relative
    env.filters["iso"] = iso
    return env


_TEXT_ENV = _make_env(autoescape=False)
_HTML_ENV = _make_env(autoescape=True)


@functools.lru_cache(maxsize=256)
def compile_template(source: str, html: bool = False) -> Template:
    """Compile a per-receiver template; raises TemplateSyntaxError (used by config validation too)."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


def validate_template(source: str | None, html: bool = False) -> str | None:
    """For config validators: a syntax error becomes a ValueError naming the template line."""
    if source is not None:
        try:
            compile_template(source, html)
        except TemplateSyntaxError as e:
            raise ValueError(f"template syntax error on line {e.lineno}: {e.message}") from None
    return source


def digest_counts(events: Sequence[Event], at: datetime) -> dict[str, Any]:
    """Counts for an initial-sync digest: by action type, region and deadline bucket."""
    return Summary(at).extend(events).counts()


def _meters(events: Sequence[Event]) -> tuple[int, str]:
    count = len({e.obligation.meter_id for e in events})
    return count, f"{count} meter{'' if count == 1 else 's'}"


def _types(events: Sequence[Event]) -> str:
    types = sorted({e.obligation.action_type for e in events})
    return ", ".join(types) if len(types) <= 3 else f"{len(types)} action types"


def title(n: Notification) -> str:
    """What the notification holds, counted: `3 meters need IS_AUTHORIZED`, `Resolved: IS_AUTHORIZED on
    2 meters`, and for a mixed group `3 meters need IS_AUTHORIZED (2 new, 1 changed), 1 resolved`."""
    if n.kind == "digest":
        return _digest_title(n)
    if n.kind == "alert":  # the service reporting on itself
        status = "resolved" if n.group.get("status") == "resolved" else "alert"
        return f"alerter {status}: {n.group.get('message', n.group.get('alert', ''))}"
    active = [e for e in n.events if e.kind != "resolved"]
    resolved = [e for e in n.events if e.kind == "resolved"]
    if not active:
        return f"Resolved: {_types(resolved)} on {_meters(resolved)[1]}"
    count, m = _meters(active)
    head = f"{m} {'needs' if count == 1 else 'need'} {_types(active)}"
    kinds: Counter[str] = Counter(e.kind for e in active)
    if len(kinds) == 1:
        head = {"reminder": "Reminder: ", "changed": "Changed: "}.get(next(iter(kinds)), "") + head
    else:
        head += " (" + ", ".join(f"{kinds[k]} {_VERB[k].lower()}" for k in _VERB if kinds[k]) + ")"
    return head + (f", {_meters(resolved)[0]} resolved" if resolved else "")


def _digest_title(n: Notification) -> str:
    """`Initial sync: 1200 open actions on 900 meters`, with `(part 2 of 3)` for a part."""
    if n.summary is None:
        text = f"Initial sync: {len(n.events)} open actions on {_meters(n.events)[1]}"
    else:
        meters = n.summary["meters"]
        text = f"Initial sync: {n.summary['total']} open actions on {meters} meter{'' if meters == 1 else 's'}"
    return text + _part_suffix(n)


def _part_suffix(n: Notification) -> str:
    index, count = n.part
    return f" (part {index} of {count})" if count > 1 else ""


def _time(value: datetime | str | None) -> datetime | str | None:
    """A stored time (a datetime, or its ISO text once it went through the store) as a datetime."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value


def _previous(e: Event) -> dict[str, Any]:
    """The old values of a `changed` event, times in RFC 3339 UTC like every other time sent."""
    out: dict[str, Any] = {}
    for k, v in (e.previous or {}).items():
        t = _time(v) if k == "deadline" else v
        out[k] = iso(t) if isinstance(t, datetime) else t
    return out


def _when(value: datetime | str | None) -> str:
    """A deadline as people read it: `2027-03-08` at midnight UTC, else `2027-03-08 17:00 UTC`."""
    value = _time(value)
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    at = value.astimezone(UTC) if value.tzinfo else value
    return f"{at:%Y-%m-%d}" if (at.hour, at.minute, at.second) == (0, 0, 0) else f"{at:%Y-%m-%d %H:%M} UTC"


def changes(e: Event) -> list[str]:
    """What a `changed` event changed, old → new: `deadline 2027-03-01 → 2027-03-08`."""
    previous = e.previous or {}
    out = []
    if "deadline" in previous:
        out.append(f"deadline {_when(previous['deadline'])} → {_when(e.obligation.deadline)}")
    if "action_description" in previous:
        out.append(f"description “{previous['action_description']}” → “{e.obligation.action_description}”")
    return out


def _event_context(e: Event, now: datetime, portal_url: str) -> dict[str, Any]:
    o = e.obligation
    fields = e.fields()
    when = f"{o.deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({relative(o.deadline, now)})" if o.deadline else "none"
    previous = _previous(e)
    changed = changes(e)
    return {
        **fields,
        "id": e.id,
        "kind": e.kind,
        "verb": _VERB[e.kind],
        "label": o.meter.partner_reference or o.meter_id,
        "key_id": o.key_id,
        "occurred_at": e.occurred_at,
        "detail": e.detail,
        "initial": e.initial,
        "previous": previous,
        "changes": changed,
        "change_text": "; ".join(changed),
        "status": o.status,
        "resolution": o.resolution,
        "deadline_text": when,
        "portal_url": f"{portal_url.rstrip('/')}/meters/{quote(o.meter_id, safe='')}",
    }


def context(n: Notification, now: datetime, portal_url: str = PORTAL_URL) -> dict[str, Any]:
    """The one context every template (built-in or per receiver) renders from."""
    events = [_event_context(e, now, portal_url) for e in n.events]
    meters = list(dict.fromkeys(e["label"] for e in events))
    return {
        "notification": {
            "id": n.id,
            "kind": n.kind,
            "rule": n.rule,
            "receiver": n.receiver,
            "group": dict(n.group),
            "created_at": n.created_at,
        },
        "events": events,
        "listed": events[:LIST_LIMIT],
        "more": _unlisted(n, min(len(events), LIST_LIMIT)),
        "count": len(events),
        "meters": meters,
        "meter_count": len(meters),
        "action_types": sorted({e["action_type"] for e in events}),
        "title": title(n) if n.kind == "digest" else title(n) + _part_suffix(n),
        "now": now,
        "portal_url": portal_url,
        "digest": (n.summary or digest_counts(n.events, now)) if n.kind == "digest" else None,
        "part": {"index": n.part[0], "count": n.part[1]},
    }


def _unlisted(n: Notification, listed: int) -> int:
    """Events this message does not list: beyond the list limit, and for a digest the rest of
    the whole (in other parts, or only counted)."""
    total = n.summary["total"] if n.kind == "digest" and n.summary is not None else len(n.events)
    return max(0, total - listed)


def render_slack(n: Notification, cfg: SlackConfig | None, now: datetime) -> SlackMessage:
    ctx = context(n, now, cfg.portal_url if cfg else PORTAL_URL)
    if cfg is not None and cfg.template:
        text = compile_template(cfg.template).render(ctx).strip()
        return SlackMessage(text, slack_blocks.text_blocks(ctx["title"], text))
    text = _TEXT_ENV.get_template("slack_text.j2").render(ctx).strip()
    blocks = slack_blocks.digest_blocks(ctx) if n.kind == "digest" else slack_blocks.event_blocks(ctx)
    return SlackMessage(text, blocks)


def render_email(n: Notification, cfg: EmailConfig | None, now: datetime) -> EmailContent:
    ctx = context(n, now, cfg.portal_url if cfg else PORTAL_URL)

    def pick(custom: str | None, builtin: str, html: bool) -> str:
        if custom:
            return compile_template(custom, html).render(ctx)
        return (_HTML_ENV if html else _TEXT_ENV).get_template(builtin).render(ctx)

    subject = " ".join(pick(cfg.subject_template if cfg else None, "email_subject.j2", False).split())
    return EmailContent(
        subject=slack_blocks.cut(subject, SUBJECT_LIMIT),
        text=pick(cfg.text_template if cfg else None, "email_text.j2", False),
        html=pick(cfg.html_template if cfg else None, "email_html.j2", True),
    )


def _webhook_event(e: Event) -> dict[str, Any]:
    o = e.obligation
    event: dict[str, Any] = {
        "type": f"action.{e.kind}",
        "id": e.id,
        "occurred_at": iso(e.occurred_at),
        "obligation_id": o.key_id,
        "meter": o.meter.model_dump(mode="json"),
        "action": {
            "action_type": o.action_type,
            "action_code": o.action_code,
            "action_description": o.action_description,
            "program_identifier": o.program_identifier,
            "delivery_period": o.delivery_period,
            "enrollment_deadline_date_time": iso(o.deadline),
        },
        "status": o.status,
        "opened_at": iso(o.opened_at),
        "initial": e.initial,
    }
    if e.detail:
        event["detail"] = e.detail
    if o.resolution:
        event["resolution"] = o.resolution
    if e.previous:
        event["previous"] = _previous(e)
    return event


def webhook_body(n: Notification, now: datetime | None = None) -> dict[str, Any]:
    """The webhook's JSON body (README, "What gets delivered"). Deadline buckets of a digest are counted at
    `now`, by default the notification's creation time, so that every retry sends the same bytes."""
    data: dict[str, Any] = {"id": n.id, "rule": n.rule, "receiver": n.receiver, "group": dict(n.group)}
    data["part"] = {"index": n.part[0], "count": n.part[1]}
    if n.kind == "digest":
        data["counts"] = n.summary if n.summary is not None else digest_counts(n.events, now or n.created_at)
    data["events"] = [_webhook_event(e) for e in n.events]
    kind = {"digest": "alerter.digest", "alert": "alerter.alert"}.get(n.kind, "alerter.notification")
    return {"type": kind, "timestamp": iso(n.created_at), "data": data}


def check_templates(receivers: Iterable[tuple[str, Any]], now: datetime | None = None) -> list[str]:
    """Render every receiver's templates against the sample notifications; one line per problem.

    Each item is (receiver name, config): a SlackConfig/EmailConfig/..., or a receiver object
    with optional `.slack`, `.email`, `.webhook`, `.console` attributes.
    """
    from alerter.notifiers.email import EmailConfig
    from alerter.notifiers.slack import SlackConfig

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
    from alerter.notifiers.slack import SlackConfig

    channel = "slack" if isinstance(cfg, SlackConfig) else "email"
    problems = []
    for n in samples:
        try:
            if isinstance(cfg, SlackConfig):
                msg = render_slack(n, cfg, now)
                for p in slack_blocks.limit_problems(msg.text, msg.blocks):
                    problems.append(f"receiver {name}: slack message for sample {n.id!r}: {p}")
            else:
                render_email(n, cfg, now)
        except TemplateSyntaxError as e:
            problems.append(f"receiver {name}: {channel} template syntax error on line {e.lineno}: {e.message}")
        except TemplateError as e:
            problems.append(f"receiver {name}: {channel} template: {e.message}")
        except Exception as e:  # a template may raise anything a sandboxed expression can
            problems.append(f"receiver {name}: {channel} template: {type(e).__name__}: {e}")
    return problems


def _sample_event(i: int, kind: str, now: datetime, **kw: Any) -> Event:
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
    return Event(id=event_id(o.key, kind, 1), kind=kind, occurred_at=now, obligation=o, **kw)  # type: ignore[arg-type]


def sample_notifications(now: datetime) -> list[Notification]:
    """Sample notifications with every event kind, a large group (folding) and a digest."""

    def note(name: str, events: list[Event], kind: str = "notification") -> Notification:
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


def first_counts(counts: dict[str, int], limit: int = 6) -> str:
    """`IS_AUTHORIZED 3, MISSING_FIELDS 1, … (+2)` for one-line summaries."""
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", … (+{len(items) - limit})" if len(items) > limit else "")
