"""What every channel renders from (pure): the sandboxed Jinja2 environment, template
compile/validate, the one per-notification context, titles and deadline wording.

Every channel renders from the same context (`context(n, now)`): the notification, its
events as flat dicts (the fields rules match on plus `label`, `verb`, `deadline_text`,
`portal_url`, ...), a `title`, and for an initial-sync digest the counts by action type,
region and deadline bucket (`alerter.summary`). Per-receiver templates see exactly this context. Each
channel's payload is built beside it in `alerter.render` (Slack blocks, email parts, the
webhook body, the console summary).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from alerter.models import Event, Notification
from alerter.render import slack_blocks
from alerter.summary import Summary

PORTAL_URL = "https://app.leap.energy"
LIST_LIMIT = 200
"""Email lists at most this many events; the rest is counted ("... and N more")."""

_VERB = {"opened": "New", "changed": "Changed", "reminder": "Reminder", "resolved": "Resolved"}


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as in the webhook body."""
    return None if value is None else _utc_text(value)


@functools.lru_cache(maxsize=4096)
def _utc_text(value: datetime) -> str:
    """Remembered by value (equal instants, whatever their zone, have the same text): a
    notification's events share a few instants (a poll's time, repeated deadlines)."""
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


NAMED_CHARACTERS = 38_000
"""How long a list of names (`named`) grows: Slack cuts a message's text at 40,000 characters."""


def named(names: Sequence[str], limit: int = NAMED_CHARACTERS) -> str:
    """`a, b, c`: every name, unless they run past `limit` characters (`a, b and 3 more`)."""
    shown: list[str] = []
    size = -2  # the first name has no ", " before it
    for name in names:
        size += len(name) + 2
        if size > limit:
            return f"{', '.join(shown)} and {len(names) - len(shown)} more"
        shown.append(name)
    return ", ".join(shown)


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
    env.filters["named"] = named
    env.filters["slack"] = slack_blocks.escape  # Slack's &, < and >: no mention or link from data
    return env


_TEXT_ENV = _make_env(autoescape=False)
_HTML_ENV = _make_env(autoescape=True)


def builtin(name: str, html: bool = False) -> Template:
    """One of the built-in templates shipped in `alerter/templates/` (e.g. `email_html.j2`)."""
    return (_HTML_ENV if html else _TEXT_ENV).get_template(name)


@functools.lru_cache(maxsize=256)
def compile_template(source: str, html: bool = False) -> Template:
    """Compile a per-receiver template; raises TemplateSyntaxError (used by config validation too)."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


def render_custom(source: str, ctx: dict[str, Any], html: bool = False, *, strict: bool = False) -> str | Exception:
    """A per-receiver template rendered for one notification, or the error it raised on this
    notification's data (`alerter check` renders it on sample data only): the caller sends the
    built-in rendering instead, and says so, rather than retrying one that fails every time.
    `strict` (the check itself) raises instead."""
    try:
        return compile_template(source, html).render(ctx)
    except Exception as err:  # whatever the template's code raised on these values
        if strict:
            raise
        return err


def template_error(err: Exception) -> str:
    """How a failed template is named in the log (`template_failed`)."""
    return f"{type(err).__name__}: {err}"[:300]


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
        text = f"Initial sync: {_open_actions(len(n.events))} on {_meters(n.events)[1]}"
    else:
        meters = n.summary["meters"]
        text = f"Initial sync: {_open_actions(n.summary['total'])} on {meters} meter{'' if meters == 1 else 's'}"
    return text + _part_suffix(n)


def _open_actions(count: int) -> str:
    return f"{count} open action{'' if count == 1 else 's'}"


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


def previous_values(e: Event) -> dict[str, Any]:
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


def _event_context(e: Event, now: datetime, portal_url: str, digest: bool) -> dict[str, Any]:
    o = e.obligation
    fields = e.fields()
    when = f"{o.deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({relative(o.deadline, now)})" if o.deadline else "none"
    previous = previous_values(e)
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
        "initial": e.initial and digest,
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
    events = [_event_context(e, now, portal_url, n.kind == "digest") for e in n.events]
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


def cut(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
