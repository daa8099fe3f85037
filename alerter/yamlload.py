"""YAML with positions: plain data plus FILE:LINE:COL for every key and value, `${VAR}` expanded.

How this works: ruamel.yaml's round-trip loader keeps the line and column of every
mapping key, mapping value and sequence item. `load_yaml` walks that tree once and
returns plain Python data (dict, list, str, int, float, bool, None, date) together
with a table from each path (`("rules", 2, "match", "tags")`) to its position, so
later stages (pydantic, the rule compiler) can report `FILE:LINE:COL: message` for
any problem they find. `${VAR}` and `${VAR:-default}` are replaced in string values
(`$${` writes a literal `${`); an unset variable without a default is a problem at
its own position. Lines and columns are 1-based.

A `${VAR}` written unquoted inside a flow mapping (`{password: ${SMTP_PASSWORD}}`) is not
valid YAML: its braces are flow indicators. Before parsing, each unquoted reference is
swapped for a placeholder of the same length (positions stay true) made of private-use
characters, and swapped back in the parsed strings before expansion.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from alerter.errors import ConfigError

YamlPath = tuple[str | int, ...]

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_REF = re.compile(r"(?<!\$)\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}")
_VALUES_SHOWN = re.compile(r' with value ".*', re.S)
_ALIAS_NAMED = re.compile(r"found undefined alias .*", re.S)
_MARK = "\ue000"
_HOLDER = re.compile(_MARK + r"(\d+)" + _MARK + "+")


@dataclass
class YamlDoc:
    """One parsed file: `data` and where each part of it came from."""

    file: str
    data: Any
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Problems found while loading (unset variables); the data is still usable."""
    bad_paths: set[YamlPath] = field(default_factory=set)
    """Paths whose value is a placeholder because of a problem; later errors there are noise."""

    def where(self, path: YamlPath, *, key: bool = False) -> str:
        """`FILE:LINE:COL` of `path` (its key when `key`), or of its closest known ancestor."""
        if key and path in self.keys:
            line, col = self.keys[path]
            return f"{self.file}:{line}:{col}"
        p = path
        while p:
            if p in self.values:
                line, col = self.values[p]
                return f"{self.file}:{line}:{col}"
            if p in self.keys:
                line, col = self.keys[p]
                return f"{self.file}:{line}:{col}"
            p = p[:-1]
        line, col = self.values.get((), (1, 1))
        return f"{self.file}:{line}:{col}"

    def problem(self, path: YamlPath, message: str, *, key: bool = False) -> str:
        return f"{self.where(path, key=key)}: {message}"

    def is_bad(self, path: YamlPath) -> bool:
        return any(path[: len(bad)] == bad for bad in self.bad_paths)


def load_yaml(path: str | Path, *, display: str | None = None, env: Mapping[str, str] | None = None) -> YamlDoc:
    """Parse one YAML file; raises ConfigError (`FILE:LINE:COL: ...`) when it cannot be parsed.

    `display` is the file name used in messages (default: `path` as given).
    """
    name = display if display is not None else str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError([f"{name}: cannot read: {err.strerror or err}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        before = raw[: err.start].decode("utf-8", "replace")
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        raise ConfigError([f"{name}:{line}:{col}: not UTF-8 text (save the file as UTF-8)"]) from None
    return parse_yaml(text, name, env=env)


def parse_yaml(text: str, file: str, *, env: Mapping[str, str] | None = None) -> YamlDoc:
    """Like load_yaml, for text already in memory; `file` names it in messages."""
    yaml = YAML(typ="rt")
    text, refs = _hold_references(text)
    try:
        node = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = err.problem or err.context or "invalid YAML"
        # `found duplicate key "k" with value "..." (original value: "...")`: values may be secrets
        message = _VALUES_SHOWN.sub("", message)
        # `found undefined alias 's3cret'`: an unquoted value that starts with `*`
        message = _ALIAS_NAMED.sub("found an undefined alias (a value that starts with * must be quoted)", message)
        ctx = err.context_mark
        if err.problem and err.context and ctx is not None and ctx is not mark:
            message += f" ({err.context} at {ctx.line + 1}:{ctx.column + 1})"
        if mark is None:
            raise ConfigError([f"{file}:1:1: {message}"]) from None
        raise ConfigError([f"{file}:{mark.line + 1}:{mark.column + 1}: {message}"]) from None
    except YAMLError as err:
        raise ConfigError([f"{file}:1:1: invalid YAML: {err}"]) from None
    except (ValueError, TypeError, OverflowError):  # a scalar of its type that is out of range: 2024-02-30
        raise ConfigError([_unreadable_scalar(text, file)]) from None
    doc = YamlDoc(file=file, data=None)
    doc.values[()] = _node_pos(node)
    doc.data = _convert(node, (), doc, os.environ if env is None else env, refs)
    return doc


_SCALAR_KINDS = {
    "tag:yaml.org,2002:timestamp": "a date or date-time (a day or month out of range?)",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
}


def _unreadable_scalar(text: str, file: str) -> str:
    """Where the value that YAML's loader could not build is, and what it should be, read again
    one value at a time. Not the loader's own message: it repeats the value (`!!int s3cret`)."""
    yaml = YAML(typ="rt")
    stack: list[Node] = [yaml.compose(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, ScalarNode):
            try:
                yaml.constructor.construct_object(node, deep=True)
            except (ValueError, TypeError, OverflowError):
                at, tag = node.start_mark, str(node.tag)
                kind = _SCALAR_KINDS.get(tag, f"a value of type {tag.rpartition(':')[2]}")
                return f"{file}:{at.line + 1}:{at.column + 1}: not a valid value: expected {kind}"
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, MappingNode):
            for key, value in reversed(node.value):
                stack += [value, key]
    return f"{file}:1:1: a value cannot be read"


def _hold_references(text: str) -> tuple[str, list[str]]:
    """Each `${...}` becomes a same-length placeholder; returns the text and the originals."""
    if "${" not in text or _MARK in text:
        return text, []
    refs: list[str] = []

    def hold(m: re.Match[str]) -> str:
        ref = m.group(0)
        tag = f"{_MARK}{len(refs)}"
        if len(ref) <= len(tag):
            return ref
        refs.append(ref)
        return tag + _MARK * (len(ref) - len(tag))

    return _REF.sub(hold, text), refs


def _restore(value: str, refs: Sequence[str]) -> str:
    return _HOLDER.sub(lambda m: refs[int(m.group(1))], value)


def _node_pos(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and lc.line is not None:
        return (lc.line + 1, lc.col + 1)
    return (1, 1)


def _convert(node: Any, path: YamlPath, doc: YamlDoc, env: Mapping[str, str], refs: Sequence[str] = ()) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for k, v in node.items():
            key = _scalar(k)
            if refs and isinstance(key, str) and _MARK in key:
                key = _restore(key, refs)
            sub = (*path, key if isinstance(key, str | int) else str(key))
            try:
                kl, kc = node.lc.key(k)
                doc.keys[sub] = (kl + 1, kc + 1)
                vl, vc = node.lc.value(k)
                doc.values[sub] = (vl + 1, vc + 1)
            except (KeyError, TypeError):  # merged (`<<:`) keys carry no position of their own
                doc.keys.setdefault(sub, doc.values.get(path, (1, 1)))
            out[key] = _convert(v, sub, doc, env, refs)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for i, v in enumerate(node):
            sub = (*path, i)
            try:
                il, ic = node.lc.item(i)
                doc.values[sub] = (il + 1, ic + 1)
            except (KeyError, TypeError):
                pass
            items.append(_convert(v, sub, doc, env, refs))
        return items
    value = _scalar(node)
    if refs and isinstance(value, str) and _MARK in value:
        value = _restore(value, refs)
    if isinstance(value, str) and "$" in value:
        return _expand(value, path, doc, env)
    return value


def _scalar(value: Any) -> Any:
    """ruamel's scalar subclasses (ScalarInt, LiteralScalarString, TimeStamp) to plain types."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dt.datetime):
        return dt.datetime.fromisoformat(value.isoformat())
    if isinstance(value, dt.date):
        return dt.date(value.year, value.month, value.day)
    return value


def _expand(value: str, path: YamlPath, doc: YamlDoc, env: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is not None and (got != "" or default is None):
            return got
        if default is not None:
            return default
        hint = f"write ${{{name}:-default}} for a default"
        doc.problems.append(doc.problem(path, f"environment variable {name} is not set ({hint})"))
        doc.bad_paths.add(path)
        return ""

    return _VAR.sub(repl, value)


def validation_problems(doc: YamlDoc, err: ValidationError, prefix: YamlPath = ()) -> list[str]:
    """pydantic errors as `FILE:LINE:COL: message`, placed on the YAML node each one is about.

    `prefix` is the path of the data that was validated, inside `doc.data`.
    """
    out: list[str] = []
    seen: set[Any] = set()
    placed: list[tuple[tuple[Any, ...], str, bool]] = []  # (loc, problem, a type this value is not)
    for e in err.errors():
        loc, kind = _resolve((*prefix, *e["loc"]), doc.data, e["type"])
        if doc.is_bad(loc):
            continue
        if kind == "missing":
            problem = doc.problem(loc[:-1], f"missing required key '{loc[-1]}'" + _under(loc[:-1]), key=True)
            once: Any = problem
        elif kind == "extra":
            problem = doc.problem(loc, f"unknown key '{loc[-1]}'" + _under(loc[:-1]), key=True)
            once = problem
        else:
            msg = _SHAPES.get(e["type"], "")
            empty = bool(msg) and e.get("input") is None  # `poll:` with nothing after: point at `poll`
            if msg:
                msg = f"{msg}, got {_kind(e.get('input'))}"
            elif e["type"] in _BOUNDS:
                msg = f"{_BOUNDS[e['type']]} {next(iter((e.get('ctx') or {'': '?'}).values()))}"
            else:
                msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            problem = doc.problem(loc, f"{dotted(loc)}: {msg}" if loc else msg, key=empty)
            once = loc  # a union reports once per member: keep the first message per node
            placed.append((tuple(loc), problem, str(e["type"]).endswith("_type")))
        if once not in seen:
            seen.add(once)
            out.append(problem)
    # a union member whose type the value is not (`secret: str | list[str]` given a list) is
    # beside the problem the matching member found inside it: that one alone is said
    beside = {
        problem
        for loc, problem, mismatch in placed
        if mismatch and any(len(other) > len(loc) and other[: len(loc)] == loc for other, _, _ in placed)
    }
    return [p for p in out if p not in beside]


_SHAPES = {
    "model_type": "expected a mapping of settings",
    "model_attributes_type": "expected a mapping of settings",
    "dataclass_type": "expected a mapping of settings",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}
"""pydantic's errors about the shape of a value, said the way a YAML file shows it."""
_BOUNDS = {
    "less_than_equal": "must be at most",
    "greater_than_equal": "must be at least",
    "greater_than": "must be more than",
    "less_than": "must be less than",
}
"""pydantic's errors about a number's range (its bound the one value of their `ctx`)."""


def _kind(value: Any) -> str:
    """What the YAML held, never the value itself (it may be a secret)."""
    if value is None:
        return "an empty value (are its settings on the next lines, indented under it?)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, dt.date):
        return "a date"
    return type(value).__name__


_POS = re.compile(r"^(.*?):(\d+):(\d+): ")


def sort_problems(problems: Sequence[str], files: Sequence[str] = ()) -> list[str]:
    """By file (in `files` order, then by name), line and column; unpositioned ones first."""
    order = {f: i for i, f in enumerate(files)}

    def key(p: str) -> tuple[int, str, int, int]:
        m = _POS.match(p)
        if not m:
            return (-1, p, 0, 0)
        return (order.get(m.group(1), len(order)), m.group(1), int(m.group(2)), int(m.group(3)))

    return sorted(dict.fromkeys(problems), key=key)


def _under(path: YamlPath) -> str:
    return f" in {dotted(path)}" if path else ""


def dotted(path: YamlPath) -> str:
    """`rules[2].match.tags`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _resolve(loc: tuple[Any, ...], data: Any, etype: str) -> tuple[YamlPath, str]:
    """Map a pydantic `loc` onto the data, dropping the union/validator tags pydantic adds."""
    path: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_map = isinstance(cur, dict) and part in cur
        if in_map or (isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)):
            path.append(part)
            cur = cur[part]
        elif last and etype == "missing" and isinstance(part, str):
            return (*path, part), "missing"
    if etype == "extra_forbidden":
        return tuple(path), "extra"
    return tuple(path), "other"
