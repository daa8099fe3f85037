"""Console: a readable multi-line summary of each notification on a stream, for the demo."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from alerter import templates
from alerter.models import Notification
from alerter.notifiers.base import SendResult, ThreadLookup
from alerter.receivers import ConsoleConfig


def summary(n: Notification, now: datetime) -> str:
    ctx = templates.context(n, now)
    lines = [f"── {ctx['title']}  [{n.receiver} ← {n.rule}]  {n.id}"]
    if ctx["digest"]:
        d = ctx["digest"]
        for name in ("by_action_type", "by_region", "by_deadline"):
            lines.append(f"   {name.removeprefix('by_').replace('_', ' ')}: {templates.first_counts(d[name])}")
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


class ConsoleNotifier:
    channel = "console"

    def __init__(self, receiver: str, config: ConsoleConfig | None = None, stream: TextIO | None = None) -> None:
        self.receiver = receiver
        self.config = config or ConsoleConfig()
        self._stream = stream

    async def send(self, notification: Notification, threads: ThreadLookup) -> SendResult:
        stream = self._stream or (sys.stderr if self.config.stream == "stderr" else sys.stdout)
        stream.write(summary(notification, datetime.now(UTC)))
        stream.flush()
        return SendResult(external_id=notification.id)

    async def close(self) -> None:
        return None
