"""Which rules and receivers an event goes to (pure): compiled rules, their index and the Router.

How this works: `Router.route` walks the rules in order; the first rule that matches stops
the walk unless it has `continue: true`; an event no rule matches goes to the fallback
rule. A reminder only goes to a rule whose own `remind` policy asks for that reminder
(`every:N`, `before:2d`, `overdue`); other matching rules let it pass on (the fallback
only takes what matches no rule at all). The index: the (up to four) low-cardinality text
fields the rules test most (`event`, `action_type`, `transmission_region`, ...) form a key.
For each value of each key field, a bit mask of the rules whose conditions on that field
hold is computed once; the candidate rules of a key are the AND of its masks, cached, so
an event only evaluates the remaining conditions of the rules that can still match.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

from alerter.matchers import FIELDS, GETTERS, Condition, Matcher, field_text
from alerter.models import Event, Obligation
from alerter.reminders import NO_REMINDERS, RemindPolicy, merge_policies

DEFAULT_GROUP_BY = ("action_type",)
DEFAULT_GROUP_WAIT = timedelta(seconds=30)
DEFAULT_GROUP_INTERVAL = timedelta(minutes=5)
DEFAULT_REMIND = RemindPolicy(before_deadline=(timedelta(days=7), timedelta(days=2), timedelta(days=1)), overdue=True)
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
"""Text fields with few distinct values: conditions on them are decided once per combination."""
KEY_FIELDS = 4
_CACHE_LIMIT = 50_000


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


def _elapsed(event: Any) -> timedelta | None:
    """How long after its obligation opened a reminder was made (None for other events)."""
    return event.occurred_at - event.obligation.opened_at if event.kind == "reminder" else None


def route_in_order(table: RuleTable, event: Any, now: datetime) -> list[Target]:
    """The specification of routing, without the index: every rule in order, the first match
    stopping unless `continue`, the fallback when nothing matched; a reminder reaches a rule only
    if its `remind` policy asks for it. `Router.route` is the fast path of exactly this (a
    property test holds them equal)."""
    out: list[Target] = []
    matched = False
    elapsed = _elapsed(event)
    for rule in table.rules:
        if not rule.matcher.matches(event, now):
            continue
        matched = True
        if event.kind == "reminder" and not rule.remind.accepts(event.detail, elapsed):
            continue
        out.extend(Target(rule, r) for r in rule.receivers)
        if not rule.continue_:
            break
    fb = table.fallback
    if not matched and fb is not None and (event.kind != "reminder" or fb.remind.accepts(event.detail, elapsed)):
        out.extend(Target(fb, r) for r in fb.receivers)
    return out


class Placement(NamedTuple):
    """Where one event goes: a target and its group (key and group_by values)."""

    rule: Rule
    receiver: str
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, eq=False, slots=True)
class _Entry:
    rule: Rule
    keyed: tuple[tuple[int, Condition], ...]
    """Conditions on key fields (position in the key, condition): decided once per key."""
    check: Callable[[Any, datetime], bool] | None
    """The other conditions as one function (None: nothing left once the key matched)."""
    targets: tuple[Target, ...]
    group_values: Callable[[Any], tuple[str, ...]]
    group_raw: Callable[[Any], Any]
    """A hashable stand-in for `group_values` that is cheaper to get (the memo key of `placed`)."""
    keys: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)
    """(receiver, group_by values) -> group key: a memo of `_new_key`."""
    placed: dict[Any, tuple[Placement, ...]] = field(default_factory=dict)
    """`group_raw` -> one Placement per receiver: a memo for `Router.placements`."""
    stop: bool = True
    """A match ends the walk (`not rule.continue_`)."""


@dataclass(frozen=True)
class _Probe:
    """What a reminder for this obligation would look like to the matchers."""

    kind: str
    obligation: Obligation


class Router:
    """Routes events through a RuleTable; holds only derived, deterministic caches."""

    def __init__(self, ruleset: RuleTable) -> None:
        self.ruleset = ruleset
        self._fields = _key_fields(ruleset.rules)
        self._key = _key_function(self._fields)
        self._entries = tuple(self._entry(r) for r in ruleset.rules)
        self._fallback = self._entry(ruleset.fallback) if ruleset.fallback else None
        every = (*self._entries, *([self._fallback] if self._fallback else []))
        self._by_name = {e.rule.name: e for e in every}
        self._candidates: dict[tuple[Any, ...], tuple[_Entry, ...]] = {}
        self._by_mask: dict[int, tuple[_Entry, ...]] = {}
        """Candidate tuples by mask: keys with the same mask share one tuple."""
        self._masks: list[dict[Any, int]] = [{} for _ in self._fields]
        self._merged: dict[tuple[str, ...], RemindPolicy] = {}
        self._looks: dict[int, tuple[RemindPolicy, RemindPolicy]] = {}

    @property
    def routes_nothing(self) -> bool:
        """No rule and no fallback: every event would be consumed and sent nowhere."""
        return not self._entries and self._fallback is None

    def _entry(self, rule: Rule) -> _Entry:
        conds = rule.matcher.conditions
        keyed = tuple((self._fields.index(c.field), c) for c in conds if c.field in self._fields)
        return _Entry(
            rule=rule,
            keyed=keyed,
            check=_conjunction(tuple(c for c in conds if c.field not in self._fields)),
            targets=tuple(Target(rule, r) for r in rule.receivers),
            group_values=_values_function(rule.group_by),
            group_raw=_raw_values_function(rule.group_by),
            stop=not rule.continue_,
        )

    def _candidates_for(self, event: Any, now: datetime) -> tuple[_Entry, ...]:
        key = self._key(event)
        found = self._candidates.get(key)
        if found is None:
            mask = -1
            for i, value in enumerate(key):
                mask &= self._mask(i, value, now)
            found = self._by_mask.get(mask)
            if found is None:
                found = self._by_mask[mask] = tuple(e for j, e in enumerate(self._entries) if mask >> j & 1)
            if len(self._candidates) >= _CACHE_LIMIT:
                self._candidates.clear()
                self._by_mask.clear()
            self._candidates[key] = found
        return found

    def _mask(self, i: int, value: Any, now: datetime) -> int:
        """Bit j set: rule j's conditions on key field i hold for this value (decided once)."""
        masks = self._masks[i]
        mask = masks.get(value)
        if mask is None:
            mask = 0
            for j, e in enumerate(self._entries):
                # key fields are text fields: their conditions depend on the value alone, not on now
                if all(c.test(value, now) for pos, c in e.keyed if pos == i):
                    mask |= 1 << j
            if len(masks) >= _CACHE_LIMIT:
                masks.clear()
            masks[value] = mask
        return mask

    def route(self, event: Event, now: datetime) -> list[Target]:
        """(rule, receiver) pairs in rule order; the fallback's when no rule matches."""
        matched: list[_Entry] = []
        self.placements(event, now, into=matched)
        if len(matched) == 1:
            return list(matched[0].targets)
        return [t for e in matched for t in e.targets]

    def rules_for(self, event: Event, now: datetime) -> list[Rule]:
        """The rules `route` would use for this event."""
        matched: list[_Entry] = []
        self.placements(event, now, into=matched)
        return [e.rule for e in matched]

    def remind_policy(self, obligation: Obligation, now: datetime) -> RemindPolicy:
        """The union of the `remind` policies of every rule a reminder for it could reach."""
        probe = _Probe("reminder", obligation)
        entries = [e for e in self._candidates_for(probe, now) if (e.check is None or e.check(probe, now))]
        if not entries and self._fallback is not None:
            entries = [self._fallback]
        if not entries:
            return NO_REMINDERS
        names = tuple(e.rule.name for e in entries)
        merged = self._merged.get(names)
        if merged is None:  # a handful of combinations: merged once each
            merged = self._merged[names] = merge_policies(e.rule.remind for e in entries)
        return merged

    def look_policy(self, policy: RemindPolicy) -> RemindPolicy:
        """`policy` with `timed_policy`: what the next look at an obligation must not wait past."""
        merged = self._looks.get(id(policy))
        if merged is None or merged[0] is not policy:
            merged = self._looks[id(policy)] = (policy, merge_policies([policy, self.timed_policy]))
        return merged[1]

    @functools.cached_property
    def timed_policy(self) -> RemindPolicy:
        """The union of the `remind` policies of rules with a condition on a time field: such a
        rule may start to match later, so the next look at an obligation must not wait past its
        thresholds (see `next_reminder_at`)."""
        timed = [
            e.rule.remind
            for e in self._by_name.values()
            if any(FIELDS[c.field][0] == "time" for c in e.rule.matcher.conditions)
        ]
        return merge_policies(timed) if timed else NO_REMINDERS

    def placements(self, event: Event, now: datetime, *, into: list[_Entry] | None = None) -> Sequence[Placement]:
        """`route`, with the group each target puts the event in (the per-event path of `plan`).

        The index's walk of `route_in_order`, written once: with `into`, the entries the event
        goes to are appended there instead (what `route` and `rules_for` read), and nothing is
        placed. One walk for both keeps `plan`'s path free of a call per event."""
        detail = event.detail if event.kind == "reminder" else None
        elapsed = _elapsed(event) if detail is not None else None
        out: tuple[Placement, ...] = ()
        matched = False
        candidates = self._candidates.get(self._key(event))
        if candidates is None:
            candidates = self._candidates_for(event, now)
        for e in candidates:
            check = e.check
            if check is not None and not check(event, now):
                continue
            matched = True
            if detail is not None and not e.rule.remind.accepts(detail, elapsed):
                continue  # a reminder this rule does not ask for passes on
            if into is not None:
                into.append(e)
            else:
                raw = e.group_raw(event)
                placed = e.placed.get(raw) or _placed(e, raw, event)
                out = out + placed if out else placed
            if e.stop:
                break
        fb = self._fallback
        if not matched and fb is not None and (detail is None or fb.rule.remind.accepts(detail, elapsed)):
            if into is not None:
                into.append(fb)
            else:
                raw = fb.group_raw(event)
                out = fb.placed.get(raw) or _placed(fb, raw, event)
        return out

    def group_key(self, rule: Rule, receiver: str, event: Event) -> tuple[str, tuple[str, ...]]:
        """A stable group id (sha256 of rule, receiver and group_by values) and those values."""
        entry = self._by_name.get(rule.name)
        if entry is None or entry.rule is not rule:
            entry = self._entry(rule)
        values = entry.group_values(event)
        return entry.keys.get((receiver, values)) or _new_key(entry, receiver, values), values


def _placed(entry: _Entry, raw: Any, event: Any) -> tuple[Placement, ...]:
    rule = entry.rule
    values = entry.group_values(event)
    pairs = [f"{f}\x1e{v}" for f, v in zip(rule.group_by, values, strict=True)]
    placed = tuple(Placement(rule, r, _hashed(rule.name, r, pairs), values) for r in rule.receivers)
    if len(entry.placed) >= _CACHE_LIMIT:
        entry.placed.clear()
    entry.placed[raw] = placed
    return placed


def _key_function(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The candidate cache key of an event: its key fields' values (one C call for several)."""
    if not fields:
        return lambda ev: ()
    if len(fields) == 1:
        get = GETTERS[fields[0]]
        return lambda ev: (get(ev),)
    get_all: Callable[[Any], tuple[Any, ...]] = attrgetter(*(FIELDS[f][1] for f in fields))
    return get_all


def _new_key(entry: _Entry, receiver: str, values: tuple[str, ...]) -> str:
    """sha256 over rule, receiver and `field=value` pairs (stored: keep this format stable)."""
    rule = entry.rule
    key = _hashed(rule.name, receiver, [f"{f}\x1e{v}" for f, v in zip(rule.group_by, values, strict=True)])
    if len(entry.keys) >= _CACHE_LIMIT:
        entry.keys.clear()
    entry.keys[(receiver, values)] = key
    return key


def _hashed(rule: str, receiver: str, pairs: list[str]) -> str:
    return hashlib.sha256("\x1f".join([rule, receiver, *pairs]).encode()).hexdigest()[:32]


def _values_function(fields: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    """The group_by values of an event as text; text fields need no conversion."""
    parts = tuple((GETTERS[f], FIELDS[f][0] in ("text", "event")) for f in fields)
    if not parts:
        return lambda ev: ()
    if len(parts) == 1:
        get, plain = parts[0]
        if plain:
            return lambda ev: (get(ev),)
        return lambda ev: (field_text(get(ev)),)
    return lambda ev: tuple([g(ev) if plain else field_text(g(ev)) for g, plain in parts])


def _raw_values_function(fields: tuple[str, ...]) -> Callable[[Any], Any]:
    """What identifies an event's group_by values: the text fields' values themselves (one C
    call), else the values as `_values_function` gives them."""
    if not fields:
        return lambda ev: None
    if all(FIELDS[f][0] in ("text", "event") for f in fields):
        get: Callable[[Any], Any] = attrgetter(*(FIELDS[f][1] for f in fields))
        return get
    return _values_function(fields)


def _conjunction(conds: tuple[Condition, ...]) -> Callable[[Any, datetime], bool] | None:
    """One closure for a rule's remaining conditions: fewer calls and lookups per event."""
    if not conds:
        return None
    if len(conds) == 1:
        g1, t1 = conds[0].get, conds[0].test
        return lambda ev, now: t1(g1(ev), now)
    if len(conds) == 2:
        (g1, t1), (g2, t2) = ((c.get, c.test) for c in conds)
        return lambda ev, now: t1(g1(ev), now) and t2(g2(ev), now)
    pairs = tuple((c.get, c.test) for c in conds)

    def check(ev: Any, now: datetime) -> bool:
        for get, test in pairs:  # noqa: SIM110 - a plain loop beats all() here
            if not test(get(ev), now):
                return False
        return True

    return check


def _key_fields(rules: tuple[Rule, ...]) -> tuple[str, ...]:
    """The low-cardinality fields most rules test (at most KEY_FIELDS): the candidate cache key."""
    uses = {f: sum(any(c.field == f for c in r.matcher.conditions) for r in rules) for f in INDEX_FIELDS}
    ranked = sorted((f for f in INDEX_FIELDS if uses[f]), key=lambda f: (-uses[f], INDEX_FIELDS.index(f)))
    return tuple(ranked[:KEY_FIELDS])
