"""Which rules and receivers an event goes to (pure): compiled rules, their index, and the Router.

How this works: `Router.route` walks the rules in order; the first rule that matches stops
the walk unless it has `continue: true`; an event no rule matches goes to the fallback
rule. A reminder only goes to a rule whose own `remind` policy asks for that reminder
(`every:N`, `before:2d`, `overdue`); other matching rules let it pass on (the fallback
only takes what matches no rule at all). Rules are indexed by their most selective
equality on a low-cardinality field (`event`, `action_type`, ...), so an event only
visits the rules that can match it; the candidate lists are cached per index key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from alerter.matching import GETTERS, Condition, Matcher, field_text
from alerter.models import Event, Obligation
from alerter.reminders import NO_REMINDERS, RemindPolicy, merge_policies

DEFAULT_GROUP_BY = ("action_type",)
DEFAULT_GROUP_WAIT = timedelta(seconds=30)
DEFAULT_GROUP_INTERVAL = timedelta(minutes=5)
DEFAULT_REMIND = RemindPolicy(
    before_deadline=(timedelta(days=7), timedelta(days=2), timedelta(days=1)), overdue=True
)
INDEX_FIELDS = (
    "event",
    "action_type",
    "action_code",
    "program_identifier",
    "transmission_region",
    "customer_classification",
    "meter_type",
    "customer_group",
    "global_enrollment_status",
    "delivery_period",
)
"""Fields with few distinct values: an equality on one of them can index a rule."""
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled rule, its `defaults` already applied."""

    name: str
    receivers: tuple[str, ...]
    matcher: Matcher = field(default_factory=Matcher)
    continue_: bool = False
    fallback: bool = False
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait: timedelta = DEFAULT_GROUP_WAIT
    group_interval: timedelta = DEFAULT_GROUP_INTERVAL
    remind: RemindPolicy = DEFAULT_REMIND
    send_resolved: bool = True
    where: str = ""
    """`FILE:LINE:COL` of its definition."""

    @property
    def catch_all(self) -> bool:
        return not self.matcher.conditions


@dataclass(frozen=True)
class RuleTable:
    """Ordered rules and the optional fallback rule (RuleSet adds receivers and files)."""

    rules: tuple[Rule, ...] = ()
    fallback: Rule | None = None

    def rule(self, name: str) -> Rule | None:
        for r in (*self.rules, *([self.fallback] if self.fallback else [])):
            if r.name == name:
                return r
        return None


class Target(NamedTuple):
    rule: Rule
    receiver: str


@dataclass(frozen=True, eq=False)
class _Entry:
    rule: Rule
    index: tuple[int, frozenset[Any]] | None
    rest: tuple[Condition, ...]
    targets: tuple[Target, ...]
    group_getters: tuple[Callable[[Any], Any], ...]


@dataclass(frozen=True)
class _Probe:
    """What a reminder for this obligation would look like to the matchers."""

    kind: str
    obligation: Obligation


class Router:
    """Routes events through a RuleTable; holds only derived, deterministic caches."""

    def __init__(self, ruleset: RuleTable) -> None:
        self.ruleset = ruleset
        chosen: list[tuple[Rule, Condition | None]] = [(r, _index_condition(r)) for r in ruleset.rules]
        self._fields = tuple(f for f in INDEX_FIELDS if any(c and c.field == f for _, c in chosen))
        self._getters = tuple(GETTERS[f] for f in self._fields)
        self._entries = tuple(self._entry(r, c) for r, c in chosen)
        self._fallback = self._entry(ruleset.fallback, None) if ruleset.fallback else None
        self._by_name = {
            e.rule.name: e for e in (*self._entries, *([self._fallback] if self._fallback else []))
        }
        self._candidates: dict[tuple[Any, ...], tuple[_Entry, ...]] = {}
        self._keys: dict[tuple[str, str, tuple[str, ...]], str] = {}

    def _entry(self, rule: Rule, index: Condition | None) -> _Entry:
        rest = tuple(c for c in rule.matcher.conditions if c is not index)
        where = (self._fields.index(index.field), index.values or frozenset()) if index else None
        return _Entry(
            rule=rule,
            index=where,
            rest=rest,
            targets=tuple(Target(rule, r) for r in rule.receivers),
            group_getters=tuple(GETTERS[f] for f in rule.group_by),
        )

    def _candidates_for(self, event: Any) -> tuple[_Entry, ...]:
        key = tuple(g(event) for g in self._getters)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(e for e in self._entries if e.index is None or key[e.index[0]] in e.index[1])
            if len(self._candidates) >= _CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    def _match(self, event: Any, now: datetime, detail: str | None) -> list[_Entry]:
        out: list[_Entry] = []
        matched = False
        for e in self._candidates_for(event):
            for c in e.rest:
                if not c.test(c.get(event), now):
                    break
            else:
                matched = True
                if detail is not None and not e.rule.remind.accepts(detail):
                    continue  # a reminder this rule does not ask for passes on
                out.append(e)
                if not e.rule.continue_:
                    break
        fb = self._fallback
        if not matched and fb is not None and (detail is None or fb.rule.remind.accepts(detail)):
            out.append(fb)
        return out

    def route(self, event: Event, now: datetime) -> list[Target]:
        """(rule, receiver) pairs in rule order; the fallback's when no rule matches."""
        detail = event.detail if event.kind == "reminder" else None
        matched = self._match(event, now, detail)
        if len(matched) == 1:
            return list(matched[0].targets)
        return [t for e in matched for t in e.targets]

    def rules_for(self, event: Event, now: datetime) -> list[Rule]:
        """The rules `route` would use for this event."""
        detail = event.detail if event.kind == "reminder" else None
        return [e.rule for e in self._match(event, now, detail)]

    def remind_policy(self, obligation: Obligation, now: datetime) -> RemindPolicy:
        """The union of the `remind` policies of every rule a reminder for it could reach."""
        probe = _Probe("reminder", obligation)
        entries = [e for e in self._candidates_for(probe) if all(c.test(c.get(probe), now) for c in e.rest)]
        if not entries and self._fallback is not None:
            entries = [self._fallback]
        if not entries:
            return NO_REMINDERS
        return merge_policies(e.rule.remind for e in entries)

    def group_key(self, rule: Rule, receiver: str, event: Event) -> tuple[str, tuple[str, ...]]:
        """A stable group id (sha256 of rule, receiver and group_by values) and those values."""
        entry = self._by_name.get(rule.name)
        getters = entry.group_getters if entry else tuple(GETTERS[f] for f in rule.group_by)
        values = tuple(field_text(g(event)) for g in getters)
        ck = (rule.name, receiver, values)
        key = self._keys.get(ck)
        if key is None:
            raw = json.dumps(
                [rule.name, receiver, [[f, v] for f, v in zip(rule.group_by, values, strict=True)]]
            )
            key = hashlib.sha256(raw.encode()).hexdigest()[:32]
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            self._keys[ck] = key
        return key, values


def _index_condition(rule: Rule) -> Condition | None:
    """The equality on an index field with the fewest values, if the rule has one."""
    best: Condition | None = None
    for c in rule.matcher.conditions:
        if c.values is None or c.field not in INDEX_FIELDS:
            continue
        if best is None or (len(c.values), INDEX_FIELDS.index(c.field)) < (
            len(best.values or ()),
            INDEX_FIELDS.index(best.field),
        ):
            best = c
    return best
