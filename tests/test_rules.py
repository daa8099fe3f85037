"""The rules file and the matcher language: every operator, every kind of error at its position."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerter.errors import ConfigError
from alerter.matchers import FIELDS, GETTERS, MatcherError, compile_matcher, parse_silence_matchers
from alerter.models import Event, EventKind, Meter, Obligation, event_id
from alerter.rulefile import RuleSet, check_warnings, load_rules

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
REPO = Path(__file__).parent.parent
NOW = datetime.fromisoformat("2026-11-28T10:00:00+00:00")


def make_event(
    kind: EventKind = "opened",
    *,
    meter_id: str = "M-1",
    action_type: str = "IS_AUTHORIZED",
    action_code: str = "AUTH_1",
    program: str = "CAISO-ELRP",
    period: str = "2026-12",
    deadline: datetime | None = NOW + timedelta(days=5),
    opened_at: datetime = NOW - timedelta(days=3),
    version: int = 1,
    detail: str = "",
    initial: bool = False,
    occurred_at: datetime = NOW,
    **meter: Any,
) -> Event:
    """An event with sensible defaults; meter attributes as keyword arguments."""
    m = Meter(
        meter_id=meter_id,
        partner_reference=meter.pop("partner_reference", f"P-{meter_id}"),
        transmission_region=meter.pop("transmission_region", "CAISO"),
        customer_classification=meter.pop("customer_classification", "RESIDENTIAL"),
        meter_type=meter.pop("meter_type", "ELECTRIC"),
        load_types=tuple(meter.pop("load_types", ("EV",))),
        tags=tuple(meter.pop("tags", ())),
        customer_group=meter.pop("customer_group", ""),
        global_enrollment_status=meter.pop("global_enrollment_status", "ENROLLED"),
        is_archived=meter.pop("is_archived", False),
    )
    assert not meter, meter
    o = Obligation(
        meter_id=meter_id,
        program_identifier=program,
        delivery_period=period,
        action_type=action_type,
        action_code=action_code,
        action_description="Re-authorize",
        deadline=deadline,
        meter=m,
        status="resolved" if kind == "resolved" else "open",
        opened_at=opened_at,
        first_seen=opened_at,
        last_seen=NOW,
        version=version,
    )
    return Event(
        id=event_id(o.key, kind, version, detail),
        kind=kind,
        occurred_at=occurred_at,
        obligation=o,
        detail=detail,
        initial=initial,
    )


def matches(spec: dict[str, Any], event: Event, now: datetime = NOW) -> bool:
    return compile_matcher(spec).matches(event, now)


E = make_event
OPERATORS: list[tuple[str, dict[str, Any], Event, bool]] = [
    ("equals", {"action_type": "IS_AUTHORIZED"}, E(), True),
    ("equals other", {"action_type": "MISSING_FIELDS"}, E(), False),
    ("equals coerces numbers", {"delivery_period": 2026}, E(period="2026"), True),
    ("equals on list field means has", {"tags": "vip"}, E(tags=["a", "vip"]), True),
    ("equals on list field, absent", {"tags": "vip"}, E(tags=["a"]), False),
    ("equals bool", {"is_archived": True}, E(is_archived=True), True),
    ("equals bool from text", {"is_archived": "false"}, E(), True),
    ("any of", {"transmission_region": ["CAISO", "NYISO"]}, E(transmission_region="NYISO"), True),
    ("any of, none", {"transmission_region": ["CAISO", "NYISO"]}, E(transmission_region="ERCOT"), False),
    ("any of on list field", {"load_types": ["BATTERY", "EV"]}, E(load_types=["EV"]), True),
    ("event kinds", {"event": ["opened", "changed"]}, E("changed"), True),
    ("event kinds, other", {"event": ["opened", "changed"]}, E("resolved"), False),
    ("not scalar", {"customer_group": {"not": "residential"}}, E(customer_group="business"), True),
    ("not scalar, equal", {"customer_group": {"not": "residential"}}, E(customer_group="residential"), False),
    ("not list", {"transmission_region": {"not": ["CAISO"]}}, E(), False),
    ("not nested", {"deadline": {"not": {"within": "7d"}}}, E(deadline=NOW + timedelta(days=10)), True),
    ("in", {"action_code": {"in": ["AUTH_1", "AUTH_2"]}}, E(), True),
    ("in, none", {"action_code": {"in": ["AUTH_2"]}}, E(), False),
    ("not_in", {"action_code": {"not_in": ["AUTH_2"]}}, E(), True),
    ("not_in, present", {"action_code": {"not_in": ["AUTH_1"]}}, E(), False),
    ("not_in on list field", {"tags": {"not_in": ["vip"]}}, E(tags=["x"]), True),
    ("not_in on list field, present", {"tags": {"not_in": ["vip"]}}, E(tags=["vip"]), False),
    ("regex searches", {"partner_reference": {"regex": "M-"}}, E(), True),
    ("regex anchored by the user", {"partner_reference": {"regex": "^M-"}}, E(), False),
    ("regex fullmatch by the user", {"meter_id": {"regex": "^M-\\d+$"}}, E(), True),
    ("regex on list field", {"tags": {"regex": "^v"}}, E(tags=["a", "vip"]), True),
    ("regex on event", {"event": {"regex": "^(opened|changed)$"}}, E("changed"), True),
    ("exists true", {"customer_group": {"exists": True}}, E(customer_group="g"), True),
    ("exists true, empty", {"customer_group": {"exists": True}}, E(), False),
    ("exists false", {"customer_group": {"exists": False}}, E(), True),
    ("exists on time", {"deadline": {"exists": True}}, E(deadline=None), False),
    ("exists false on time", {"deadline": {"exists": False}}, E(deadline=None), True),
    ("exists on list", {"tags": {"exists": True}}, E(tags=[]), False),
    ("exists on bool", {"is_archived": {"exists": True}}, E(), True),
    ("contains on list", {"tags": {"contains": "vip"}}, E(tags=["vip"]), True),
    ("contains on text is a substring", {"action_description": {"contains": "author"}}, E(), True),
    ("contains on text, absent", {"action_description": {"contains": "sign"}}, E(), False),
    ("contains_any on list", {"tags": {"contains_any": ["vip", "gold"]}}, E(tags=["gold"]), True),
    ("contains_any on list, none", {"tags": {"contains_any": ["vip", "gold"]}}, E(tags=["x"]), False),
    ("contains_any on text", {"action_description": {"contains_any": ["sign", "Re-"]}}, E(), True),
    ("within, ahead", {"deadline": {"within": "7d"}}, E(deadline=NOW + timedelta(days=6)), True),
    ("within, too far", {"deadline": {"within": "7d"}}, E(deadline=NOW + timedelta(days=8)), False),
    ("within, exactly at the edge", {"deadline": {"within": "7d"}}, E(deadline=NOW + timedelta(days=7)), False),
    ("within, past", {"deadline": {"within": "7d"}}, E(deadline=NOW - timedelta(seconds=1)), False),
    ("within, now", {"deadline": {"within": "7d"}}, E(deadline=NOW), True),
    ("within, no deadline", {"deadline": {"within": "7d"}}, E(deadline=None), False),
    ("older_than", {"opened_at": {"older_than": "2d"}}, E(opened_at=NOW - timedelta(days=3)), True),
    ("older_than, recent", {"opened_at": {"older_than": "2d"}}, E(opened_at=NOW - timedelta(days=1)), False),
    ("older_than deadline passed", {"deadline": {"older_than": "1h"}}, E(deadline=NOW - timedelta(hours=2)), True),
    ("operators combine with and", {"tags": {"contains": "a", "not_in": ["b"]}}, E(tags=["a"]), True),
    ("operators combine, one fails", {"tags": {"contains": "a", "not_in": ["b"]}}, E(tags=["a", "b"]), False),
    ("fields combine with and", {"action_type": "IS_AUTHORIZED", "transmission_region": "PJM"}, E(), False),
    ("unknown enum values are plain values", {"action_type": "NEW_KIND"}, E(action_type="NEW_KIND"), True),
    ("no match matches everything", {}, E(), True),
]


@pytest.mark.parametrize(("spec", "event", "expected"), [o[1:] for o in OPERATORS], ids=[o[0] for o in OPERATORS])
def test_operator(spec: dict[str, Any], event: Event, expected: bool) -> None:
    assert matches(spec, event) is expected


def test_getters_agree_with_event_fields() -> None:
    ev = make_event(tags=["vip"], customer_group="g", is_archived=True)
    fields = ev.fields()
    assert set(FIELDS) == set(fields)
    for name, get in GETTERS.items():
        value = get(ev)
        assert (list(value) if isinstance(value, tuple) else value) == fields[name], name


BAD_MATCHERS: list[tuple[dict[str, Any], str]] = [
    ({"nope": 1}, "unknown field 'nope'"),
    ({"tags": {"contanis": "x"}}, "unknown operator 'contanis' (did you mean 'contains'?)"),
    ({"tags": {}}, "empty matcher for 'tags'"),
    ({"tags": []}, "empty list for 'tags'"),
    ({"meter_id": None}, "'meter_id' needs a value"),
    ({"meter_id": {"regex": "("}}, "bad regex '('"),
    ({"meter_id": {"regex": 5}}, "'regex' takes a string"),
    ({"meter_id": {"regex": "(?<=M-)1"}}, "regex '(?<=M-)1': lookbehind '(?<=...)' is not supported"),
    ({"tags": {"regex": "(v)\\1"}}, "regex '(v)\\\\1': backreference '\\1' is not supported"),
    ({"meter_id": {"in": "x"}}, "'in' takes a list"),
    ({"meter_id": {"exists": "yes"}}, "'exists' takes true or false"),
    ({"meter_id": {"within": "2d"}}, "'within' does not apply to text field 'meter_id'"),
    ({"deadline": "2026-01-01"}, "a value does not apply to time field 'deadline'"),
    ({"deadline": {"within": "0s"}}, "'within' needs a positive duration"),
    ({"deadline": {"older_than": "later"}}, "bad duration for 'older_than'"),
    ({"is_archived": "maybe"}, "'is_archived' is true or false"),
    ({"is_archived": {"regex": "t"}}, "'regex' does not apply to bool field 'is_archived'"),
    ({"event": "closed"}, "unknown event 'closed'"),
    ({"meter_id": [["a"]]}, "expected a single value for 'meter_id'"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_MATCHERS, ids=[m for _, m in BAD_MATCHERS])
def test_bad_matcher(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(MatcherError) as info:
        compile_matcher(spec)
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


BAD_FILES: list[tuple[str | list[str], list[str]]] = [
    ("unknown_key.yaml", ["unknown_key.yaml:7:5: unknown key 'contiune' in rules[0]"]),
    ("unknown_field.yaml", ["unknown_field.yaml:7:7: unknown field 'action_typ' (did you mean 'action_type'?)"]),
    (
        "unknown_operator.yaml",
        ["unknown_operator.yaml:7:14: unknown operator 'contains_al' (did you mean 'contains_any'?)"],
    ),
    ("undefined_receiver.yaml", ["undefined_receiver.yaml:6:22: undefined receiver 'opz' (did you mean 'ops'?)"]),
    ("bad_regex.yaml", ["bad_regex.yaml:7:34: bad regex 'P-(\\\\d+': missing ), unterminated subpattern"]),
    ("bad_duration.yaml", ["bad_duration.yaml:7:26: bad duration for 'within': not a duration: 'soon'"]),
    ("bad_group_wait.yaml", ["bad_group_wait.yaml:5:15: defaults.group_wait: not a duration: '5 parsecs'"]),
    (
        "unusable_url.yaml",  # each passed alerter check, then failed at start-up or at each send
        [
            "unusable_url.yaml:2:30: receivers[0].webhook.url: webhook url cannot be read: Port out of range 0-65535",
            "unusable_url.yaml:3:62: receivers[1].slack.api_url: slack api_url must start with http:// or https://",
            "unusable_url.yaml:4:30: receivers[2].webhook.url: webhook url has no host",
        ],
    ),
    (
        "overlong_duration.yaml",  # each once a traceback: an overflow, a number handed to difflib
        [
            "overlong_duration.yaml:7:26: bad duration for 'within': 99999999999d is longer than 36500d",
            "overlong_duration.yaml:8:7: unknown field '5' (fields: event, meter_id,",
            "overlong_duration.yaml:8:10: rules[0].match[5]: Input should be a valid string",
            "overlong_duration.yaml:10:17: rules[0].group_wait: 1000000w is longer than 36500d",
        ],
    ),
    (
        "no_receivers.yaml",
        ["no_receivers.yaml:5:5: rule 'r' has no receivers", "no_receivers.yaml:7:5: rule 's' has no receivers"],
    ),
    ("two_channels.yaml", ["two_channels.yaml:2:5: receivers[0]: a receiver needs exactly one of slack, email"]),
    (
        "receiver_missing_key.yaml",
        ["receiver_missing_key.yaml:3:5: missing required key 'token' in receivers[0].slack"],
    ),
    ("fallback_with_match.yaml", ["fallback_with_match.yaml:7:5: a fallback rule takes no match"]),
    (
        "two_fallbacks.yaml",
        ["two_fallbacks.yaml:9:15: a second fallback rule (the first is at two_fallbacks.yaml:5:5)"],
    ),
    ("bad_group_by.yaml", ["bad_group_by.yaml:7:29: unknown field 'region' in group_by"]),
    (
        "operator_not_applicable.yaml",
        [
            "operator_not_applicable.yaml:7:18: 'regex' does not apply to time field 'deadline'",
            "operator_not_applicable.yaml:8:21: 'within' does not apply to text field 'action_type'",
        ],
    ),
    ("bad_event.yaml", ["bad_event.yaml:6:29: unknown event 'closed'"]),
    (
        "bad_operand.yaml",
        [
            "bad_operand.yaml:7:33: 'in' takes a list",
            "bad_operand.yaml:8:26: 'exists' takes true or false",
            "bad_operand.yaml:9:20: 'is_archived' is true or false, not 'sometimes'",
        ],
    ),
    (
        "bad_remind.yaml",
        [
            "bad_remind.yaml:7:21: rules[0].remind.every: must be a positive duration",
            "bad_remind.yaml:7:47: rules[0].remind.before_deadline[1]: not a duration: 'tomorrow'",
        ],
    ),
    ("syntax_error.yaml", ["syntax_error.yaml:7:1: expected ',' or ']', but got '<stream end>'"]),
    ("duplicate_key.yaml", ['duplicate_key.yaml:7:5: found duplicate key "receivers"']),
    (
        ["duplicate_names_a.yaml", "duplicate_names_b.yaml"],
        [
            "duplicate_names_b.yaml:2:11: duplicate receiver name 'ops' (first defined at duplicate_names_a.yaml:2:11)",
            "duplicate_names_b.yaml:5:11: duplicate rule name 'route' (first defined at duplicate_names_a.yaml:5:11)",
        ],
    ),
    ("unset_variable.yaml", ["unset_variable.yaml:4:12: environment variable ALERTER_TEST_UNSET_URL is not set"]),
    ("not_a_mapping.yaml", ["not_a_mapping.yaml:1:1: a rules file is a mapping with receivers, defaults, rules"]),
    (
        "unsupported_regex.yaml",
        [
            "unsupported_regex.yaml:7:34: regex '^(?!TEST-)': negative lookahead '(?!...)' is not supported",
            "unsupported_regex.yaml:8:35: regex '(a+)+\\\\1': backreference '\\1' is not supported",
        ],
    ),
    ("empty.yaml", ["empty.yaml:1:1: the rules file is empty"]),
    ("only_comments.yaml", ["only_comments.yaml:1:1: the rules file is empty"]),
    ("no_rules.yaml", ["no_rules.yaml:4:1: no rules defined: every event would be dropped"]),
    (
        "nothing_defined.yaml",
        ["nothing_defined.yaml:1:1: no receivers defined", "nothing_defined.yaml:2:1: no rules defined"],
    ),
]


@pytest.mark.parametrize(("files", "expected"), BAD_FILES, ids=[str(b[0]) for b in BAD_FILES])
def test_bad_rules_file_reports_every_problem_at_its_position(
    monkeypatch: pytest.MonkeyPatch, files: str | list[str], expected: list[str]
) -> None:
    monkeypatch.chdir(FIXTURES / "bad")
    with pytest.raises(ConfigError) as info:
        load_rules(files, env={})
    got = info.value.problems
    assert len(got) == len(expected), got
    for want, have in zip(expected, got, strict=True):
        assert have.startswith(want), (want, have)


def test_every_bad_fixture_is_in_the_table() -> None:
    named = {f for files, _ in BAD_FILES for f in ([files] if isinstance(files, str) else files)}
    assert {p.name for p in (FIXTURES / "bad").glob("*.yaml")} == named


def test_full_rules_file_compiles_every_override() -> None:
    rs = load_rules(FIXTURES / "good" / "full.yaml")
    assert [r.name for r in rs.rules] == ["operators", "to-mail"]
    assert rs.fallback is not None and rs.fallback.name == "fallback"
    ops, mail = rs.rules
    assert ops.receivers == ("slack", "hook") and ops.continue_
    assert ops.group_by == ("meter_id",) and ops.group_wait == timedelta(0)
    assert ops.group_interval == timedelta(hours=1) and ops.send_resolved
    assert ops.remind.before_deadline == (timedelta(days=2),) and ops.remind.every is None
    assert len(ops.matcher.conditions) == 12
    # the other rules inherit the file's defaults
    assert mail.group_by == ("action_type", "transmission_region")
    assert mail.group_wait == timedelta(minutes=1) and mail.group_interval == timedelta(minutes=10)
    assert mail.remind.every == timedelta(hours=12) and not mail.send_resolved
    assert mail.remind.before_deadline == (timedelta(days=7), timedelta(days=1))
    assert {n: r.channel for n, r in rs.receivers.items()} == {
        "slack": "slack",
        "mail": "email",
        "hook": "webhook",
        "console": "console",
    }
    assert rs.receiver("mail").settings.model_dump(by_alias=True)["from"] == "alerter@example.com"
    assert rs.where["rule:to-mail"].endswith("full.yaml:42:11")
    assert check_warnings(rs) == []


def test_files_merge_in_order_and_share_receivers() -> None:
    rs = load_rules([FIXTURES / "good" / "split_receivers.yaml", FIXTURES / "good" / "split_rules.yaml"])
    assert [r.name for r in rs.rules] == ["everything"] and list(rs.receivers) == ["team"]
    assert len(rs.files) == 2


def test_builtin_defaults() -> None:
    (rule,) = load_rules(FIXTURES / "good" / "minimal.yaml").rules
    assert rule.group_by == ("action_type",)
    assert rule.group_wait == timedelta(seconds=30) and rule.group_interval == timedelta(minutes=5)
    assert rule.remind.before_deadline == (timedelta(days=7), timedelta(days=2), timedelta(days=1))
    assert rule.remind.overdue and rule.remind.every is None and rule.send_resolved and rule.catch_all


def _rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "r.yaml"
    path.write_text("receivers: [{name: c, console: {}}, {name: d, console: {}}]\n" + text)
    return load_rules(path)


def test_warns_when_nothing_catches_unmatched_events(tmp_path: Path) -> None:
    rs = _rules(tmp_path, "rules:\n  - {name: a, match: {event: opened}, receivers: [c, d]}\n")
    (warning,) = check_warnings(rs)
    assert warning.endswith(
        "r.yaml:3:5: no fallback rule: an event that matches no rule is not delivered "
        "(add a last rule without match, or fallback: true)"
    )


def test_warns_about_unreachable_rules_and_unused_receivers(tmp_path: Path) -> None:
    rs = _rules(
        tmp_path, "rules:\n  - {name: a, receivers: [c]}\n  - {name: b, match: {event: opened}, receivers: [c]}\n"
    )
    assert [w.split(": ", 1)[1] for w in check_warnings(rs)] == [
        "rule 'b' is never reached: 'a' above it matches and stops every event",
        "receiver 'd' is not used by any rule",
    ]


def test_an_explicit_fallback_silences_the_warning(tmp_path: Path) -> None:
    rs = _rules(
        tmp_path,
        "rules:\n  - {name: a, match: {event: opened}, receivers: [c]}\n"
        "  - {name: f, fallback: true, receivers: [d]}\n",
    )
    assert check_warnings(rs) == []


SILENCES: list[tuple[list[str], dict[str, Any]]] = [
    (["meter_id=M-1"], {"meter_id": "M-1"}),
    (["action_type!=IS_AUTHORIZED"], {"action_type": {"not": "IS_AUTHORIZED"}}),
    (["partner_reference=~^ACME-"], {"partner_reference": {"regex": "^ACME-"}}),
    (["tags=vip", "event=reminder"], {"tags": "vip", "event": "reminder"}),
    (["action_description=a=b"], {"action_description": "a=b"}),
]


@pytest.mark.parametrize(("args", "expected"), SILENCES, ids=[" ".join(a) for a, _ in SILENCES])
def test_parse_silence_matchers(args: list[str], expected: dict[str, Any]) -> None:
    assert parse_silence_matchers(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nonsense"], "'nonsense': expected field=value"),
        (["metre_id=M-1"], "'metre_id=M-1': unknown field 'metre_id' (did you mean 'meter_id'?)"),
        (["meter_id=~("], "'meter_id=~(': bad regex"),
        (["action_description=~(?=x)"], "'action_description=~(?=x)': regex '(?=x)': lookahead"),
        (["meter_id=a", "meter_id=b"], "'meter_id=b': field 'meter_id' given twice"),
        ([], "a silence needs at least one matcher"),
    ],
)
def test_parse_silence_matchers_rejects(args: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_silence_matchers(args)
    assert isinstance(info.value, MatcherError)
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


RULE_FILES = sorted((REPO / "rules").glob("*.yaml"))


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_shipped_rules_file_loads_without_environment(path: Path) -> None:
    rs = load_rules(path, env={})
    assert rs.rules


def test_shipped_rules_files() -> None:
    assert {p.name for p in RULE_FILES} >= {"example.yaml", "demo.yaml", "escalation.yaml"}
    rs = load_rules([REPO / "rules" / "escalation.yaml", REPO / "rules" / "example.yaml"], env={})
    assert check_warnings(rs) == []
    assert [r.name for r in rs.rules] == ["deadline-escalation", "caiso-authorization", "everything-else"]


def test_a_rules_regex_is_tested_after_its_cheaper_conditions() -> None:
    """All of a rule's conditions must hold: its regexes are tried last, after the equalities
    most events fail, rather than searched for every event a rule with a regex is a candidate for."""
    m = compile_matcher({"partner_reference": {"not": {"regex": "^TEST-"}}, "action_type": "IS_AUTHORIZED"})
    assert [c.field for c in m.conditions] == ["action_type", "partner_reference"]
    assert [c.costly for c in m.conditions] == [False, True]
    assert m.matches(make_event(), NOW) == compile_matcher({"action_type": "IS_AUTHORIZED"}).matches(make_event(), NOW)
