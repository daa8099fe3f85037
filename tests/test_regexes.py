"""The `regex` operator on RE2: `re.search` semantics, linear time, and a clear refusal of what needs backtracking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerter.matchers import compile_matcher
from alerter.regexes import compile_search
from tests.test_rules import NOW, make_event

# Patterns both engines read the same way (ASCII classes, `$` only at the end: no newline in the texts).
SHARED = [
    "M-",
    "^M-",
    "^M-\\d+$",
    "(a+)+$",
    "(a|aa)*b",
    "^(IS|HAS)_[A-Z]+$",
    "(?i)vip",
    "\\bgold\\b",
    "a.*b",
    "^$",
    "[^a-c]{2,3}",
    "x?y*z+",
    "(?P<tag>v)ip",
]
texts = st.text(alphabet="aAbBcMvVipgold_-19 xyz", max_size=24)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SHARED), texts)
def test_search_agrees_with_re_search(pattern: str, text: str) -> None:
    search = compile_search(pattern)
    assert not isinstance(search, str), search
    assert search(text) == (re.search(pattern, text) is not None)


def test_nested_quantifiers_take_linear_time() -> None:
    # Python's backtracking `re` needs about 2**64 steps for this one; RE2 reads the text once.
    search = compile_search("(a+)+$")
    assert not isinstance(search, str)
    assert search("a" * 64) is True
    assert search("a" * 64 + "!") is False
    rule = compile_matcher({"partner_reference": {"regex": "^(a|aa)+$"}})
    assert not rule.matches(make_event(partner_reference="a" * 5000 + "!"), NOW)
    assert rule.matches(make_event(partner_reference="a" * 5000), NOW)


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        ("(?=IS_)", "lookahead '(?=...)'"),
        ("^(?!TEST)", "negative lookahead '(?!...)'"),
        ("(?<=M-)1", "lookbehind '(?<=...)'"),
        ("(?<!x)y", "negative lookbehind '(?<!...)'"),
        ("(a+)+\\1", "backreference '\\1'"),
        ("(?P<x>a)(?P=x)", "backreference '(?P=name)'"),
        ("(?>a+)b", "atomic group '(?>...)'"),
        ("a++", "possessive quantifier '++'"),
        ("end\\Z", "'\\Z' (write '$': it matches only at the end)"),
        ("(?x) a b", "inline flag '(?x' (RE2 knows i, m, s and U)"),
        ("((a{100}){100}){100}", "a repetition over 1000"),
    ],
)
def test_what_needs_backtracking_is_refused_by_name(pattern: str, construct: str) -> None:
    message = compile_search(pattern)
    assert isinstance(message, str)
    assert message.startswith(f"regex {pattern!r}: {construct} is not supported (regexes run in linear time")


def test_a_pattern_wrong_for_both_engines_keeps_the_position() -> None:
    assert compile_search("P-(\\d+") == "bad regex 'P-(\\\\d+': missing ), unterminated subpattern at position 2"
