"""The console's readable multi-line summary of a notification (the demo's receiver)."""

from __future__ import annotations

from datetime import datetime

from alerter import templates
from alerter.models import Notification


def summary(n: Notification, now: datetime) -> str:
    ctx = templates.context(n, now)
    lines = [f"── {ctx['title']}  [{n.receiver} ← {n.rule}]  {n.id}"]
    if ctx["digest"]:
        d = ctx["digest"]
        for name in ("by_action_type", "by_region", "by_deadline"):
            lines.append(f"   {name.removeprefix('by_').replace('_', ' ')}: {first_counts(d[name])}")
    shown = 10 if ctx["digest"] else 50
    for e in ctx["listed"][:shown]:
        deadline = f"deadline {e['deadline_text']}"
        if e["changes"]:  # what changed, old → new, in place of the deadline alone
            deadline = "; ".join(e["changes"]) + f" ({templates.relative(e['deadline'], now)})"
        lines.append(
            f"   {e['verb']:<8} {e['label']}: {e['action_type']} {e['action_code']}"
            f" · {e['program_identifier']} {e['delivery_period']} · {deadline}"
        )
    if ctx["count"] > shown:
        lines.append(f"   … and {ctx['count'] - shown} more")
    return "\n".join(lines) + "\n"


def first_counts(counts: dict[str, int], limit: int = 6) -> str:
    """`IS_AUTHORIZED 3, MISSING_FIELDS 1, … (+2)` for one-line summaries."""
    items = list(counts.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", … (+{len(items) - limit})" if len(items) > limit else "")
