"""The routing tester of `/rules`: which rules and receivers events hit and the messages they make,
as `alerter rules test` shows them. Sends nothing and writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from alerter.checking import render, snapshot_events
from alerter.config import Config
from alerter.diff import resolve
from alerter.grouping import flush, plan
from alerter.models import Event, EventKind, Obligation, Record, event_id
from alerter.routes import Router
from alerter.store.memory import GroupBook

KINDS: tuple[EventKind, ...] = ("opened", "changed", "reminder", "resolved")


class TesterError(ValueError):
    pass


@dataclass(frozen=True)
class Routed:
    event: Event
    targets: list[tuple[str, str]]
    """(rule, receiver) in routing order."""


@dataclass(frozen=True)
class Message:
    receiver: str
    rule: str
    events: int
    text: str


def events_from_record(text: str, now: datetime) -> list[Event]:
    """`opened` events of a pasted meter record (one, a list, or a search response)."""
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise TesterError(f"not JSON: {err}") from None
    items = data.get("meters", [data]) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise TesterError('expected a meter record, a list of them, or a search response ({"meters": [...]})')
    records = []
    for i, item in enumerate(items):
        try:
            records.append(Record.model_validate(item))
        except ValidationError as err:
            first = err.errors()[0]
            raise TesterError(f"meters[{i}].{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    events = snapshot_events([], records, now)
    if not events:
        raise TesterError("no partner actions in that record (required_actions.partner is empty)")
    return events


def events_from_obligations(obligations: Sequence[Obligation], kind: str, now: datetime) -> list[Event]:
    """An event of `kind` for each obligation, as if it happened now."""
    if kind not in KINDS:
        raise TesterError(f"event: expected one of {', '.join(KINDS)}")
    out = []
    for o in obligations:
        if kind == "resolved":
            out.append(resolve(o, "cleared", now))
        else:
            detail = "test" if kind == "reminder" else ""
            out.append(
                Event(
                    id=event_id(o.key, kind, o.version, "console-test"),
                    kind=kind,
                    occurred_at=now,
                    obligation=o,
                    detail=detail,
                )
            )
    return out


def route(events: Sequence[Event], config: Config, now: datetime) -> tuple[list[Routed], list[Message]]:
    router = Router(config.ruleset)
    routed = [Routed(ev, [(t.rule.name, t.receiver) for t in router.route(ev, now)]) for ev in events]
    told = {r.event.obligation.key_id: {rc for _, rc in r.targets} for r in routed}
    write = plan(events, router, {}, told, (), now)
    book = GroupBook()
    book.apply(write)
    by_id = {e.id: e for e in events}
    notes = [*write.notifications, *flush(book.groups(), by_id, now, ruleset=config.ruleset, force=True).notifications]
    return routed, [Message(n.receiver, n.rule, len(n.events), render(n, config, now)) for n in notes]
