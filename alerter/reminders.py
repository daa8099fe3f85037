"""Reminder decisions: which `reminder` events an open obligation is due at `now` (pure).

How this works: a RemindPolicy says when to remind — every `every` since the obligation
opened (detail `every:N`, N whole periods), when less than a `before_deadline` threshold
is left (detail `before:7d`), and once overdue (detail `overdue`). `reminders_due` returns
only the latest `every:N`, only the tightest threshold crossed (none once overdue) and
`overdue`. Event ids come from what each reminder is about (`reminder_id`): the obligation's
key and opening, and for a deadline's reminders the deadline; so evaluating again yields the
same ids, which the store ignores: each fires once per opening of the obligation, durably, a
moved deadline fires its thresholds anew, and a changed description fires nothing again.
A threshold already crossed when the obligation opened does not fire: the opening (or the
initial-sync digest) already said how close the deadline is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerter.durations import Duration, format_duration
from alerter.models import Event, Obligation, event_id


class RemindPolicy(BaseModel):
    """`remind:` of a rule (or of `defaults`); a rule's `remind` replaces the default one whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: Duration | None = None
    before_deadline: tuple[Duration, ...] = Field(default=())
    overdue: bool = True
    """Once the deadline has passed: on unless a policy sets it `false`."""

    @field_validator("every")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError("must be a positive duration")
        return v

    @field_validator("before_deadline")
    @classmethod
    def _thresholds(cls, v: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
        if any(t <= timedelta(0) for t in v):
            raise ValueError("thresholds must be positive durations")
        return tuple(sorted(set(v), reverse=True))

    @functools.cached_property
    def _before_details(self) -> frozenset[str]:
        return frozenset(f"before:{format_duration(t)}" for t in self.before_deadline)

    @property
    def empty(self) -> bool:
        return self.every is None and not self.before_deadline and not self.overdue

    def accepts(self, detail: str, elapsed: timedelta | None = None) -> bool:
        """Whether a rule with this policy receives a reminder with this detail; an `every:N` one
        made `elapsed` after the obligation opened only at a whole number of its own `every`.
        The reminders of an obligation are made at the shortest `every` of the rules they could
        reach (`merge_policies`): a rule asking for fewer takes those that fall on its own pace
        (each, when its `every` is a multiple of the shortest) and passes the others on."""
        if detail.startswith("every:"):
            return self.every is not None and (elapsed is None or not elapsed % self.every)
        if detail.startswith("before:"):
            return detail in self._before_details
        if detail == "overdue":
            return self.overdue
        return True


NO_REMINDERS = RemindPolicy(overdue=False)


def merge_policies(policies: Iterable[RemindPolicy]) -> RemindPolicy:
    """The union: the shortest `every`, every threshold, overdue if any asks for it."""
    everys: list[timedelta] = []
    before: set[timedelta] = set()
    overdue = False
    for p in policies:
        if p.every is not None:
            everys.append(p.every)
        before.update(p.before_deadline)
        overdue = overdue or p.overdue
    return RemindPolicy(every=min(everys) if everys else None, before_deadline=tuple(before), overdue=overdue)


def reminders_due(
    obligation: Obligation, remind_policies: RemindPolicy | Iterable[RemindPolicy], now: datetime
) -> list[Event]:
    """The reminder events due for an open obligation at `now` (see the module note).

    `occurred_at` is the moment the threshold was crossed, so the events are the same
    whenever they are computed.
    """
    if obligation.status != "open":
        return []
    policy = remind_policies if isinstance(remind_policies, RemindPolicy) else merge_policies(remind_policies)
    due: list[tuple[str, datetime]] = []
    if policy.every is not None and now > obligation.opened_at:
        n = (now - obligation.opened_at) // policy.every
        if n >= 1:
            due.append((f"every:{n}", obligation.opened_at + n * policy.every))
    deadline = obligation.deadline
    if deadline is not None:
        if now >= deadline:
            if policy.overdue and deadline > obligation.opened_at:
                due.append(("overdue", deadline))
        else:
            left_at_opening = deadline - obligation.opened_at
            crossed = [t for t in policy.before_deadline if deadline - now <= t < left_at_opening]
            if crossed:
                tightest = min(crossed)
                at = max(deadline - tightest, obligation.opened_at)
                due.append((f"before:{format_duration(tightest)}", at))
    return [
        Event(
            id=reminder_id(obligation, detail, at),
            kind="reminder",
            occurred_at=at,
            obligation=obligation,
            detail=detail,
        )
        for detail, at in due
    ]


def reminder_id(obligation: Obligation, detail: str, at: datetime) -> str:
    """A reminder's event id: its obligation's key and opening (an obligation opened again is
    reminded anew); for `before:*` and `overdue` its deadline (a moved deadline fires its
    thresholds anew), for `every:N` its instant `at` and not N (under another `every` after a
    rules change, or once a rule with a shorter one stops matching, the same N is another
    instant, and the same instant another N); not its version, which a changed description
    moves too."""
    about = obligation.opened_at.isoformat()
    if detail.startswith("every:"):
        return event_id(obligation.key, "reminder", 0, f"every|{about}|{at.isoformat()}")
    about += f"|{obligation.deadline.isoformat() if obligation.deadline else '-'}"
    return event_id(obligation.key, "reminder", 0, f"{detail}|{about}")


def legacy_reminder_ids(reminder: Event) -> list[str]:
    """The ids earlier versions gave the same reminder: with the obligation's version, and (an
    `every:N` one) with N rather than its instant. One sent under one of them at the same
    instant is not sent again (`cycle.remind`)."""
    ob = reminder.obligation
    ids = [event_id(ob.key, "reminder", ob.version, reminder.detail)]
    if reminder.detail.startswith("every:"):
        ids.append(event_id(ob.key, "reminder", 0, f"{reminder.detail}|{ob.opened_at.isoformat()}"))
    return ids


def next_reminder_at(obligation: Obligation, policy: RemindPolicy, now: datetime) -> datetime | None:
    """The first instant after `now` at which `reminders_due` under `policy` could return a
    reminder it does not return at `now` (None: never, unless the obligation changes). The
    reminders step looks at the obligation again then, and not before."""
    if obligation.status != "open":
        return None
    return _next_look(policy, obligation.opened_at, obligation.deadline, now)


@functools.lru_cache(maxsize=4096)
def _next_look(policy: RemindPolicy, opened: datetime, deadline: datetime | None, now: datetime) -> datetime | None:
    """`next_reminder_at` of an open obligation, a function of these alone: remembered, as the
    obligations a poll opens share their opening time (`now`) and their deadlines repeat."""
    times: list[datetime] = []
    if policy.every is not None:
        n = max(0, (now - opened) // policy.every) if now > opened else 0
        times.append(opened + (n + 1) * policy.every)
    if deadline is not None and deadline > now:
        left_at_opening = deadline - opened
        times += [deadline - t for t in policy.before_deadline if t < left_at_opening and deadline - t > now]
        if policy.overdue and deadline > opened:
            times.append(deadline)
    return min(times) if times else None
