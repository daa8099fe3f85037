"""The `regex` operator's engine: RE2, so a match takes time linear in the text, whatever the pattern.

How this works: a pattern is compiled by RE2 (the `google-re2` package) and tested with an
unanchored search, the meaning `re.search` gives it: anchor with `^...$` to match a whole
value. RE2 has no backtracking, so `(a+)+$` on a long run of `a`s costs microseconds, not
minutes, and a rule or silence cannot freeze the service. What needs backtracking is refused
with a message naming the construct: backreferences (`\\1`, `(?P=name)`), lookahead and
lookbehind (`(?=`, `(?!`, `(?<=`, `(?<!`), atomic groups and possessive quantifiers. Other
differences from Python's `re`: `\\d`, `\\w`, `\\s` and `\\b` are ASCII; `$` matches only at
the very end (`\\Z` is written `$`); repetitions are limited to 1000. A pattern that neither
engine accepts keeps Python's message, which names the position of the mistake.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import re2

__all__ = ["Search", "compile_search"]

Search = Callable[[str], bool]
"""`search(text)`: does the pattern occur in `text`."""

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the message goes to the user through our error, not to stderr
_OPTIONS.never_capture = True  # only "does it match" is asked: groups are never read

NOT_SUPPORTED = "regexes run in linear time (RE2): no backreferences, lookaround, atomic groups, possessive quantifiers"
_CONSTRUCTS = (
    ("invalid perl operator: (?=", "lookahead '(?=...)'"),
    ("invalid perl operator: (?!", "negative lookahead '(?!...)'"),
    ("invalid perl operator: (?<=", "lookbehind '(?<=...)'"),
    ("invalid perl operator: (?<!", "negative lookbehind '(?<!...)'"),
    ("invalid perl operator: (?>", "atomic group '(?>...)'"),
    ("invalid perl operator: (?#", "comment group '(?#...)'"),
    ("invalid perl operator: (?(", "conditional group '(?(...)...)'"),
    ("invalid escape sequence: \\Z", "'\\Z' (write '$': it matches only at the end)"),
    ("invalid repetition size", "a repetition over 1000"),
    ("bad repetition operator: ++", "possessive quantifier '++'"),
    ("bad repetition operator: *+", "possessive quantifier '*+'"),
    ("bad repetition operator: ?+", "possessive quantifier '?+'"),
)
_BACKREF = re.compile(r"invalid escape sequence: \\([1-9]|k|g)")
_FLAGS = re.compile(r"invalid perl operator: \(\?([a-zA-Z-]+)")


def compile_search(pattern: str) -> Search | str:
    """The search function of `pattern`, or one line saying why it cannot be used."""
    try:
        rx = re2.compile(pattern, _OPTIONS)
    except re2.error as err:
        return _explain(pattern, err)
    search = rx.search
    return lambda text: search(text) is not None


def _explain(pattern: str, err: Exception) -> str:
    try:
        re.compile(pattern)
    except re.error as py_err:  # wrong for both engines: Python says where
        return f"bad regex {pattern!r}: {py_err}"
    except (OverflowError, RecursionError) as py_err:
        return f"bad regex {pattern!r}: {py_err}"
    reason = err.args[0] if err.args else ""
    reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    what = _construct(reason)
    if reason.startswith("invalid perl operator: (?P") and "(?P=" in pattern:
        what = "backreference '(?P=name)'"
    return f"regex {pattern!r}: {what or reason or 'refused by RE2'} is not supported ({NOT_SUPPORTED})"


def _construct(reason: str) -> str | None:
    """The construct a RE2 parse error is about, in the user's words."""
    for prefix, what in _CONSTRUCTS:
        if reason.startswith(prefix):
            return what
    backref = _BACKREF.match(reason)
    if backref:
        return f"backreference '\\{backref.group(1)}'"
    flags = _FLAGS.match(reason)
    if flags:
        return f"inline flag '(?{flags.group(1)}' (RE2 knows i, m, s and U)"
    return None
