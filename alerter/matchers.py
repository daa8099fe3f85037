"""The matcher language, compiled once: the event fields rules may name and every operator.

How this works: a `match` mapping (`{field: spec}`) compiles into a Matcher, a tuple of
Conditions, each a getter for one event field and a predicate `(value, now) -> bool`.
A spec is a scalar (equals), a list (any of) or a mapping of operators that must all
hold: `not`, `in`, `not_in`, `regex`, `exists`, `contains`, `contains_any`, `within`,
`older_than`. On list fields (`tags`, `load_types`) a scalar or `contains` means "has
this element", a list, `in` or `contains_any` means "has any of these", `not_in` "has
none of these", `regex` "some element matches", `exists` "is not empty". On text fields
`contains`/`contains_any` are substring tests and `exists` means "not empty". `regex`
searches like `re.search` (anchor with `^...$` to match the whole value), on RE2 so that
it takes linear time (see alerter.regexes). Time fields (`deadline`, `opened_at`) take
`exists`, `within` (less than that ahead of now, not past) and `older_than` (more than
that behind now). Silences use the same language.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Literal

from alerter.durations import parse_duration
from alerter.regexes import compile_search

FieldKind = Literal["text", "list", "bool", "time", "event"]

FIELDS: dict[str, tuple[FieldKind, str]] = {
    "event": ("event", "kind"),
    "meter_id": ("text", "obligation.meter_id"),
    "partner_reference": ("text", "obligation.meter.partner_reference"),
    "transmission_region": ("text", "obligation.meter.transmission_region"),
    "customer_classification": ("text", "obligation.meter.customer_classification"),
    "meter_type": ("text", "obligation.meter.meter_type"),
    "load_types": ("list", "obligation.meter.load_types"),
    "tags": ("list", "obligation.meter.tags"),
    "customer_group": ("text", "obligation.meter.customer_group"),
    "global_enrollment_status": ("text", "obligation.meter.global_enrollment_status"),
    "is_archived": ("bool", "obligation.meter.is_archived"),
    "action_type": ("text", "obligation.action_type"),
    "action_code": ("text", "obligation.action_code"),
    "action_description": ("text", "obligation.action_description"),
    "program_identifier": ("text", "obligation.program_identifier"),
    "delivery_period": ("text", "obligation.delivery_period"),
    "deadline": ("time", "obligation.deadline"),
    "opened_at": ("time", "obligation.opened_at"),
}
"""Field name -> (kind, attribute path on an Event): the fields README's rules reference lists."""

GETTERS: dict[str, Callable[[Any], Any]] = {name: attrgetter(path) for name, (_, path) in FIELDS.items()}
EVENT_KINDS = ("opened", "changed", "reminder", "resolved")
OPERATORS = ("not", "in", "not_in", "regex", "exists", "contains", "contains_any", "within", "older_than")
_APPLIES: dict[str, tuple[FieldKind, ...]] = {
    "equals": ("text", "list", "bool", "event"),
    "not": ("text", "list", "bool", "time", "event"),
    "in": ("text", "list", "bool", "event"),
    "not_in": ("text", "list", "bool", "event"),
    "regex": ("text", "list", "event"),
    "exists": ("text", "list", "bool", "time", "event"),
    "contains": ("text", "list"),
    "contains_any": ("text", "list"),
    "within": ("time",),
    "older_than": ("time",),
}

Test = Callable[[Any, datetime], bool]
Report = Callable[[tuple[str | int, ...], str, bool], None]
"""(path, message, at_key) -> None: where the compiler sends each problem."""


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    get: Callable[[Any], Any]
    test: Test
    values: frozenset[Any] | None = None
    """Set when the condition is plain equality / any-of on a scalar field (usable as an index)."""
    costly: bool = False
    """A regex: tested after a rule's other conditions, which most events fail first."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """All conditions must hold; no condition matches everything."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, event: Any, now: datetime) -> bool:
        for c in self.conditions:  # noqa: SIM110 - a plain loop is faster than all() on the hot path
            if not c.test(c.get(event), now):
                return False
        return True


class MatcherError(ValueError):
    """Raised by compile_matcher without a `report` callback; `problems` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def compile_matcher(
    spec: Mapping[str, Any] | None, report: Report | None = None, path: tuple[str | int, ...] = ()
) -> Matcher:
    """Compile a `match` mapping. Problems go to `report` (path, message, at_key), or raise MatcherError."""
    problems: list[str] = []

    def collect(p: tuple[str | int, ...], message: str, at_key: bool) -> None:
        problems.append(message)

    rep = report or collect
    conditions: list[Condition] = []
    if spec is None:
        return Matcher()
    if not isinstance(spec, Mapping):
        rep(path, "match must be a mapping of field: matcher", False)
    else:
        for name, sub in spec.items():
            if name not in FIELDS:
                rep(
                    (*path, name),
                    f"unknown field '{name}' {did_you_mean(name, list(FIELDS), 'fields')}",
                    True,
                )
                continue
            kind = FIELDS[name][0]
            compiled = _compile_spec(name, kind, sub, (*path, name), rep)
            if compiled is not None:
                test, values = compiled
                conditions.append(Condition(name, GETTERS[name], test, values, _mentions_regex(sub)))
    if report is None and problems:
        raise MatcherError(problems)
    return Matcher(tuple(sorted(conditions, key=lambda c: c.costly)))  # all must hold: any order


def _mentions_regex(spec: Any) -> bool:
    if isinstance(spec, Mapping):
        return "regex" in spec or any(_mentions_regex(v) for v in spec.values())
    return False


def _compile_spec(
    name: str, kind: FieldKind, spec: Any, path: tuple[str | int, ...], rep: Report
) -> tuple[Test, frozenset[Any] | None] | None:
    """One field's spec -> (test, index values or None); None after reporting a problem."""
    if isinstance(spec, list):
        values = _values(name, kind, spec, path, rep)
        if values is None or not _applies("in", name, kind, path, rep, key=False):
            return None
        return _any_of(kind, values), (frozenset(values) if kind != "list" else None)
    if isinstance(spec, dict):
        if not spec:
            rep(path, f"empty matcher for '{name}' (operators: {', '.join(OPERATORS)})", False)
            return None
        tests: list[Test] = []
        index: frozenset[Any] | None = None
        for op, arg in spec.items():
            at = (*path, op)
            if op not in OPERATORS:
                rep(at, f"unknown operator '{op}' {did_you_mean(op, OPERATORS, 'operators')}", True)
                continue
            if not _applies(op, name, kind, at, rep, key=True):
                continue
            got = _compile_op(op, name, kind, arg, at, rep)
            if got is None:
                continue
            tests.append(got)
            if op == "in" and len(spec) == 1 and kind != "list" and isinstance(arg, list):
                index = frozenset(_values(name, kind, arg, at, _ignore) or ())
        if not tests:
            return None
        if len(tests) == 1:
            return tests[0], index
        all_tests = tuple(tests)
        return (lambda v, now: all(t(v, now) for t in all_tests)), None
    if spec is None:
        rep(path, f"'{name}' needs a value (use {{exists: false}} to match a missing value)", False)
        return None
    if not _applies("equals", name, kind, path, rep, key=False):
        return None
    one = _value(name, kind, spec, path, rep)
    if one is None:
        return None
    if kind == "list":
        return (lambda v, now: one in v), None
    return (lambda v, now: v == one), frozenset([one])


def did_you_mean(word: str, choices: Sequence[str], what: str) -> str:
    """`(did you mean 'action_type'?)`, or the list of choices when nothing is close."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)  # a YAML key can be a number
    return f"(did you mean '{close[0]}'?)" if close else f"({what}: {', '.join(choices)})"


def _ignore(path: tuple[str | int, ...], message: str, at_key: bool) -> None:
    return None


def _applies(op: str, name: str, kind: FieldKind, path: tuple[str | int, ...], rep: Report, key: bool) -> bool:
    if kind in _APPLIES[op]:
        return True
    what = "a value" if op == "equals" else ("a list" if op == "in" and not key else f"'{op}'")
    if kind == "time":
        rep(path, f"{what} does not apply to time field '{name}' (use within, older_than, exists)", key)
    else:
        rep(path, f"'{op}' does not apply to {kind} field '{name}'", key)
    return False


def _compile_op(op: str, name: str, kind: FieldKind, arg: Any, path: tuple[str | int, ...], rep: Report) -> Test | None:
    if op == "not":
        inner = _compile_spec(name, kind, arg, path, rep)
        if inner is None:
            return None
        t = inner[0]
        return lambda v, now: not t(v, now)
    if op in ("in", "not_in", "contains_any"):
        if not isinstance(arg, list):
            rep(path, f"'{op}' takes a list", False)
            return None
        values = _values(name, kind, arg, path, rep)
        if values is None:
            return None
        if op == "contains_any" and kind == "text":
            subs = tuple(str(x) for x in values)
            return lambda v, now: any(s in v for s in subs)
        any_of = _any_of(kind, values)
        return any_of if op != "not_in" else (lambda v, now: not any_of(v, now))
    if op == "contains":
        one = _value(name, kind, arg, path, rep)
        if one is None:
            return None
        return lambda v, now: one in v
    if op == "regex":
        if not isinstance(arg, str):
            rep(path, "'regex' takes a string", False)
            return None
        search = compile_search(arg)
        if isinstance(search, str):
            rep(path, search, False)
            return None
        found = _memo(search)
        if kind == "list":
            return lambda v, now: any(found(x, now) for x in v)
        return found
    if op == "exists":
        if not isinstance(arg, bool):
            rep(path, "'exists' takes true or false", False)
            return None
        if kind == "bool":
            return lambda v, now: arg
        return lambda v, now: (v is not None and v != "" and v != ()) is arg
    # within / older_than
    try:
        span = parse_duration(arg)
    except ValueError as err:
        rep(path, f"bad duration for '{op}': {err}", False)
        return None
    if span <= timedelta(0):
        rep(path, f"'{op}' needs a positive duration", False)
        return None
    if op == "within":
        return lambda v, now: v is not None and now <= v < now + span
    return lambda v, now: v is not None and v < now - span


def _memo(fn: Callable[[str], bool]) -> Test:
    """Remember a costly text test per value (rule fields repeat few values); bounded."""
    seen: dict[str, bool] = {}

    def test(v: str, now: datetime) -> bool:
        hit = seen.get(v)
        if hit is None:
            if len(seen) >= 4096:
                seen.clear()
            hit = seen[v] = fn(v)
        return hit

    return test


def _any_of(kind: FieldKind, values: Sequence[Any]) -> Test:
    pool = frozenset(values)
    if kind == "list":
        return lambda v, now: not pool.isdisjoint(v)
    return lambda v, now: v in pool


def _values(name: str, kind: FieldKind, items: list[Any], path: tuple[str | int, ...], rep: Report) -> list[Any] | None:
    out = []
    ok = True
    for i, item in enumerate(items):
        v = _value(name, kind, item, (*path, i), rep)
        if v is None:
            ok = False
        else:
            out.append(v)
    if not items:
        rep(path, f"empty list for '{name}'", False)
        return None
    return out if ok else None


def _value(name: str, kind: FieldKind, raw: Any, path: tuple[str | int, ...], rep: Report) -> Any:
    """A literal in a matcher, as the field's type (text, bool or event kind); None after a report."""
    if isinstance(raw, dict | list) or raw is None:
        rep(path, f"expected a single value for '{name}'", False)
        return None
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        rep(path, f"'{name}' is true or false, not {raw!r}", False)
        return None
    text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    if kind == "event" and text not in EVENT_KINDS:
        rep(path, f"unknown event '{text}' (events: {', '.join(EVENT_KINDS)})", False)
        return None
    return text


_SILENCE_ARG = re.compile(r"^\s*([A-Za-z_]+)\s*(!=|=~|=)(.*)$")


def parse_silence_matchers(args: Sequence[str]) -> dict[str, Any]:
    """`field=value`, `field!=value`, `field=~regex` (as `alerter silence add` takes them) -> a
    matcher mapping. Raises MatcherError naming every bad argument."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for arg in args:
        m = _SILENCE_ARG.match(arg)
        if not m:
            problems.append(f"{arg!r}: expected field=value, field!=value or field=~regex")
            continue
        name, op, value = m.group(1), m.group(2), m.group(3).strip()
        if name in out:
            problems.append(f"{arg!r}: field '{name}' given twice")
            continue
        spec: Any = value if op == "=" else ({"not": value} if op == "!=" else {"regex": value})
        try:
            compile_matcher({name: spec})
        except MatcherError as err:
            problems.extend(f"{arg!r}: {p}" for p in err.problems)
            continue
        out[name] = spec
    if not args:
        problems.append("a silence needs at least one matcher (e.g. meter_id=M-1)")
    if problems:
        raise MatcherError(problems)
    return out


def field_text(value: Any) -> str:
    """A field value as a group key / template string: lists joined sorted, times ISO, bools lower."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
