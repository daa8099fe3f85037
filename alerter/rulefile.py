"""The rules file: receivers, defaults and ordered rules, loaded with positions, merged across
files in order and compiled once into a RuleSet (README's rules reference gives the format).

Every problem is reported as `FILE:LINE:COL: message`, all at once in one ConfigError:
unknown keys, fields or operators, bad regexes and durations, references to undefined
receivers, duplicate rule or receiver names across the merged files, rules without
receivers. `defaults` apply to the rules of their own file; a rule's `remind` replaces
the default policy whole. The fallback rule (`fallback: true`, at most one, no `match`)
receives only what matches no other rule. A rules set without any rule or receiver, and
an empty rules file, are errors: such rules would route nothing and drop every event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alerter.durations import Duration
from alerter.errors import ConfigError
from alerter.matchers import FIELDS, Matcher, compile_matcher, did_you_mean
from alerter.receivers import ConsoleConfig, EmailConfig, SlackConfig, WebhookConfig
from alerter.reminders import RemindPolicy
from alerter.routes import (
    DEFAULT_GROUP_BY,
    DEFAULT_GROUP_INTERVAL,
    DEFAULT_GROUP_WAIT,
    DEFAULT_REMIND,
    Rule,
    RuleTable,
)
from alerter.yamlload import (
    YamlDoc,
    YamlPath,
    load_yaml,
    sort_problems,
    validation_problems,
)

_STRICT = ConfigDict(extra="forbid", frozen=True)
CHANNELS = ("slack", "email", "webhook", "console")


class Receiver(BaseModel):
    """A named destination with exactly one channel."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    slack: SlackConfig | None = None
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    console: ConsoleConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_console(cls, data: Any) -> Any:
        if isinstance(data, dict) and "console" in data and data["console"] is None:
            return {**data, "console": {}}
        return data

    @model_validator(mode="after")
    def _one_channel(self) -> Receiver:
        found = [c for c in CHANNELS if getattr(self, c) is not None]
        if len(found) != 1:
            got = f"found {', '.join(found)}" if found else "found none"
            raise ValueError(f"a receiver needs exactly one of {', '.join(CHANNELS)} ({got})")
        return self

    @property
    def channel(self) -> str:
        return next(c for c in CHANNELS if getattr(self, c) is not None)

    @property
    def settings(self) -> SlackConfig | EmailConfig | WebhookConfig | ConsoleConfig:
        value: SlackConfig | EmailConfig | WebhookConfig | ConsoleConfig = getattr(self, self.channel)
        return value


class Defaults(BaseModel):
    model_config = _STRICT

    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUP_BY))
    group_wait: Duration = DEFAULT_GROUP_WAIT
    group_interval: Duration = DEFAULT_GROUP_INTERVAL
    remind: RemindPolicy = DEFAULT_REMIND
    send_resolved: bool = True


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    match: dict[str, Any] | None = None
    receivers: list[str] = Field(default_factory=list)
    continue_: bool = Field(False, alias="continue")
    fallback: bool = False
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    remind: RemindPolicy | None = None
    send_resolved: bool | None = None


class RulesFile(BaseModel):
    model_config = _STRICT

    receivers: list[Receiver] = Field(default_factory=list)
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[RuleSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class RuleSet(RuleTable):
    """Compiled rules (ordered, plus the fallback) and the receivers they name."""

    receivers: Mapping[str, Receiver] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    where: Mapping[str, str] = field(default_factory=dict)
    """`receiver:NAME` / `rule:NAME` -> `FILE:LINE:COL` of its definition."""

    def receiver(self, name: str) -> Receiver:
        return self.receivers[name]


def load_rules(paths: str | Path | Sequence[str | Path], *, env: Mapping[str, str] | None = None) -> RuleSet:
    """Load and merge rules files in order; raises ConfigError listing every problem."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    docs: list[YamlDoc] = []
    problems: list[str] = []
    for p in items:
        try:
            docs.append(load_yaml(p, env=env))
        except ConfigError as err:
            problems.extend(err.problems)
    try:
        ruleset = compile_rules(docs)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return ruleset


def compile_rules(docs: Sequence[YamlDoc]) -> RuleSet:
    """Validate and compile parsed rules files (merged in order) into one RuleSet."""
    c = _Compiler()
    for doc in docs:
        c.add(doc)
    return c.finish()


class _Compiler:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.receivers: dict[str, Receiver] = {}
        self.rules: list[Rule] = []
        self.fallback: Rule | None = None
        self.where: dict[str, str] = {}
        self.refs: list[tuple[YamlDoc, YamlPath, str]] = []
        self.files: list[str] = []
        self.docs: list[YamlDoc] = []

    def add(self, doc: YamlDoc) -> None:
        self.files.append(doc.file)
        self.docs.append(doc)
        self.problems.extend(doc.problems)
        if doc.data is None and not doc.problems:
            self.problems.append(doc.problem((), "the rules file is empty (expected receivers, defaults, rules)"))
            return
        data = {} if doc.data is None else doc.data
        if not isinstance(data, dict):
            self.problems.append(doc.problem((), "a rules file is a mapping with receivers, defaults, rules"))
            return
        model: RulesFile | None = None
        try:
            model = RulesFile.model_validate(data)
        except ValidationError as err:
            self.problems.extend(validation_problems(doc, err))
        self._names(doc, data, "receivers", "receiver")
        self._names(doc, data, "rules", "rule")
        defaults = data.get("defaults")
        if isinstance(defaults, dict):
            self._group_by(doc, defaults.get("group_by"), ("defaults", "group_by"))
        raw_rules = data.get("rules")
        matchers: dict[int, Matcher] = {}
        for i, raw in enumerate(raw_rules if isinstance(raw_rules, list) else []):
            if not isinstance(raw, dict):
                continue
            at: YamlPath = ("rules", i)
            report = self._reporter(doc)
            match = raw.get("match")
            matchers[i] = compile_matcher(match if isinstance(match, dict) else None, report, (*at, "match"))
            self._group_by(doc, raw.get("group_by"), (*at, "group_by"))
            refs = raw.get("receivers")
            if not refs and "name" in raw:
                self.problems.append(doc.problem(at, f"rule '{raw['name']}' has no receivers"))
            for j, ref in enumerate(refs if isinstance(refs, list) else []):
                if isinstance(ref, str):
                    self.refs.append((doc, (*at, "receivers", j), ref))
            if raw.get("fallback") is True and raw.get("match"):
                self.problems.append(doc.problem((*at, "match"), "a fallback rule takes no match", key=True))
        if model is None:
            return
        for r in model.receivers:
            self.receivers.setdefault(r.name, r)
        d = model.defaults
        for i, spec in enumerate(model.rules):
            rule = Rule(
                name=spec.name,
                receivers=tuple(dict.fromkeys(spec.receivers)),
                matcher=matchers[i],
                continue_=spec.continue_,
                fallback=spec.fallback,
                group_by=tuple(spec.group_by if spec.group_by is not None else d.group_by),
                group_wait=_pick(spec.group_wait, d.group_wait),
                group_interval=_pick(spec.group_interval, d.group_interval),
                remind=spec.remind if spec.remind is not None else d.remind,
                send_resolved=spec.send_resolved if spec.send_resolved is not None else d.send_resolved,
                where=doc.where(("rules", i)),
            )
            if not rule.fallback:
                self.rules.append(rule)
            elif self.fallback is None:
                self.fallback = rule
            else:
                first = self.fallback.where
                self.problems.append(
                    doc.problem(("rules", i, "fallback"), f"a second fallback rule (the first is at {first})")
                )

    def _reporter(self, doc: YamlDoc) -> Any:
        def report(path: YamlPath, message: str, at_key: bool) -> None:
            self.problems.append(doc.problem(path, message, key=at_key))

        return report

    def _names(self, doc: YamlDoc, data: dict[str, Any], section: str, what: str) -> None:
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            name = item["name"]
            here = doc.where((section, i, "name"))
            first = self.where.setdefault(f"{what}:{name}", here)
            if first != here:
                self.problems.append(f"{here}: duplicate {what} name '{name}' (first defined at {first})")

    def _not_empty(self) -> None:
        """Rules that route nothing drop every event: a set without rules or receivers is an error
        (so a reload that read a truncated file keeps the rules it had)."""
        for section, missing, have in (
            ("receivers", "no receivers defined: the rules have nowhere to send", self.receivers),
            ("rules", "no rules defined: every event would be dropped (a rule without match takes all)", self.rules),
        ):
            if have or (section == "rules" and self.fallback is not None):
                continue
            named = [d for d in self.docs if isinstance(d.data, dict) and section in d.data]
            doc = named[-1] if named else self.docs[-1]
            self.problems.append(doc.problem((section,) if named else (), missing, key=True))

    def _group_by(self, doc: YamlDoc, value: Any, path: YamlPath) -> None:
        for i, name in enumerate(value if isinstance(value, list) else []):
            if isinstance(name, str) and name not in FIELDS:
                hint = did_you_mean(name, list(FIELDS), "fields")
                self.problems.append(doc.problem((*path, i), f"unknown field '{name}' in group_by {hint}"))

    def finish(self) -> RuleSet:
        for doc, path, ref in self.refs:
            if ref not in self.receivers and f"receiver:{ref}" not in self.where:
                known = [k.removeprefix("receiver:") for k in self.where if k.startswith("receiver:")]
                hint = did_you_mean(ref, known, "receivers") if known else "(no receivers defined)"
                self.problems.append(doc.problem(path, f"undefined receiver '{ref}' {hint}"))
        if not self.problems and self.docs:
            self._not_empty()
        if self.problems:
            raise ConfigError(sort_problems(self.problems, self.files))
        return RuleSet(
            rules=tuple(self.rules),
            fallback=self.fallback,
            receivers=dict(self.receivers),
            files=tuple(self.files),
            where=dict(self.where),
        )


def _pick(value: timedelta | None, default: timedelta) -> timedelta:
    return value if value is not None else default


def check_warnings(ruleset: RuleSet) -> list[str]:
    """Legal but probably wrong: no fallback, rules after a catch-all, unused receivers."""
    out: list[str] = []
    where = ruleset.files[0] if ruleset.files else "rules"
    stopper: Rule | None = None
    for rule in ruleset.rules:
        if stopper is not None:
            why = f"'{stopper.name}' above it matches and stops every event"
            out.append(f"{rule.where}: rule '{rule.name}' is never reached: {why}")
        elif rule.catch_all and not rule.continue_:
            stopper = rule
    if ruleset.fallback is None and not any(r.catch_all for r in ruleset.rules):
        last = ruleset.rules[-1].where if ruleset.rules else where
        out.append(
            f"{last}: no fallback rule: an event that matches no rule is not delivered "
            "(add a last rule without match, or fallback: true)"
        )
    used = {name for r in (*ruleset.rules, *([ruleset.fallback] if ruleset.fallback else [])) for name in r.receivers}
    for name in ruleset.receivers:
        if name not in used:
            out.append(f"{ruleset.where.get(f'receiver:{name}', where)}: receiver '{name}' is not used by any rule")
    return out
