"""Config loading: good files, `${VAR}` expansion, and one bad fixture per kind of error with its position."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from alerter.config import Config, SourceConfig, StateConfig, load_config
from alerter.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "config"
REPO = Path(__file__).parent.parent


@pytest.fixture
def in_bad(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in the bad fixtures directory so messages name files the way a user typed them."""
    monkeypatch.chdir(FIXTURES / "bad")
    return FIXTURES / "bad"


def problems(name: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(name, env=env or {})
    return info.value.problems


BAD = [
    ("unknown_key.yaml", ["unknown_key.yaml:3:3: unknown key 'pagesize' in source"]),
    ("unknown_section.yaml", ["unknown_section.yaml:4:1: unknown key 'polling'"]),
    ("missing_api_key.yaml", ["missing_api_key.yaml:1:1: missing required key 'api_key' in source"]),
    ("bad_duration.yaml", ["bad_duration.yaml:4:13: poll.interval: not a duration: 'five minutes'"]),
    ("zero_interval.yaml", ["zero_interval.yaml:4:13: poll.interval: must be longer than 0s, got 0s"]),
    ("bad_enum.yaml", ["bad_enum.yaml:4:17: poll.initial_sync: Input should be 'digest', 'notify' or 'silent'"]),
    ("out_of_range.yaml", ["out_of_range.yaml:3:14: source.page_size: must be at most 500"]),
    ("bad_type.yaml", ["bad_type.yaml:3:12: source.filters: expected a mapping, got a list"]),
    ("empty_api_key.yaml", ["empty_api_key.yaml:2:12: source.api_key: is empty (if it names an environment"]),
    (
        "unreadable_state_url.yaml",
        ["unreadable_state_url.yaml:4:8: state.url: the PostgreSQL URL's port is not a number from 1 to 65535"],
    ),
    ("no_state_path.yaml", ["no_state_path.yaml:4:8: state.url: expected sqlite:///PATH, got no path"]),
    (
        "poller_filter.yaml",
        [
            "poller_filter.yaml:4:5: source.filters: 'last_modified_date_time' cannot be a filter: "
            "alerter sets it from its watermark"
        ],
    ),
    ("unknown_filter.yaml", ["unknown_filter.yaml:3:12: source.filters: unknown filter 'region'; Leap's search takes"]),
    (
        "section_not_a_mapping.yaml",
        ["section_not_a_mapping.yaml:4:7: poll: expected a mapping of settings, got a string"],
    ),
    (
        "section_not_indented.yaml",
        [
            "section_not_indented.yaml:4:1: poll: expected a mapping of settings, got an empty value "
            "(are its settings on the next lines, indented under it?)",
            "section_not_indented.yaml:5:1: unknown key 'interval'",
        ],
    ),
    ("duplicate_section.yaml", ['duplicate_section.yaml:5:1: found duplicate key "source" (while constructing']),
    (
        "unset_variable.yaml",
        ["unset_variable.yaml:2:12: environment variable ALERTER_TEST_UNSET_KEY is not set"],
    ),
    ("syntax_error.yaml", ["syntax_error.yaml:3:2: expected <block end>, but found '<block mapping start>'"]),
    (
        "missing_rules_file.yaml",
        ["missing_rules_file.yaml:5:5: rules file not found: 'nowhere.yaml' (relative to the config file)"],
    ),
    ("rules_problem.yaml", ["broken_rules.yaml:6:17: undefined receiver 'opz' (did you mean 'ops'?)"]),
    ("undefined_operations_receiver.yaml", ["undefined_operations_receiver.yaml:4:22: undefined receiver 'pager'"]),
    (
        "bad_url.yaml",
        [
            "bad_url.yaml:3:13: source.base_url: the URL must start with http:// or https://",
            "bad_url.yaml:5:8: state.url: expected sqlite:///PATH or postgresql://..., got mysql://...",
            "bad_url.yaml:7:11: http.listen: expected HOST:PORT, got 'localhost'",
        ],
    ),
    ("not_a_mapping.yaml", ["not_a_mapping.yaml:1:1: a config file is a mapping"]),
    ("no_rules_files.yaml", ["no_rules_files.yaml:1:1: no rules files (e.g. rules: rules.yaml)"]),
    (
        "many_problems.yaml",
        [
            "many_problems.yaml:2:12: environment variable ALERTER_TEST_UNSET_KEY is not set",
            "many_problems.yaml:3:12: source.timeout: not a duration: 'forever'",
            "many_problems.yaml:5:12: poll.overlap: not a duration: '-1x'",
            "many_problems.yaml:6:3: unknown key 'bogus' in poll",
            "broken_rules.yaml:6:17: undefined receiver 'opz'",
        ],
    ),
    (
        "bad_webhooks.yaml",
        [
            "bad_webhooks.yaml:4:11: source.webhooks.path: expected an absolute URL path such as /leap/webhooks",
            "bad_webhooks.yaml:5:13: source.webhooks.header: expected an HTTP header name, got 'x api key'",
            "bad_webhooks.yaml:6:14: source.webhooks.secrets: List should have at least 1 item",
            "bad_webhooks.yaml:7:13: source.webhooks.listen: expected HOST:PORT, got 'localhost'",
        ],
    ),
    (
        "empty_webhook_secret.yaml",
        ["empty_webhook_secret.yaml:4:14: source.webhooks.secrets: a webhook secret is empty"],
    ),
]


@pytest.mark.parametrize(("name", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_reports_every_problem_at_its_position(in_bad: Path, name: str, expected: list[str]) -> None:
    got = problems(name)
    assert len(got) == len(expected), got
    for want, have in zip(expected, got, strict=True):
        assert have.startswith(want), (want, have)


def test_a_duplicate_key_is_reported_without_the_values_it_holds(in_bad: Path) -> None:
    text = "\n".join(problems("duplicate_section.yaml"))
    assert "duplicate key" in text
    assert "secret-value" not in text  # an api_key, a password: never echoed back


def test_every_bad_fixture_is_in_the_table() -> None:
    helpers = {"rules.yaml", "broken_rules.yaml"}
    on_disk = {p.name for p in (FIXTURES / "bad").glob("*.yaml")} - helpers
    assert on_disk == {name for name, _ in BAD}


def test_minimal_config_takes_the_documented_defaults() -> None:
    config = load_config(FIXTURES / "good" / "minimal.yaml", env={})
    assert config.source.base_url == "https://api.leap.energy"
    assert config.source.api_key.get_secret_value() == "test-key"
    assert config.source.page_size == 500
    assert config.source.timeout == timedelta(seconds=30)
    assert config.poll.interval == timedelta(minutes=5)
    assert config.poll.overlap == timedelta(minutes=10)
    assert config.poll.reconcile_interval == timedelta(hours=24)
    assert config.poll.initial_sync == "digest"
    assert config.state.url == "sqlite:///./alerter.db"
    assert config.http.listen == "127.0.0.1:8080"
    assert config.log.format == "json"
    assert config.rules == ["rules.yaml"]
    assert config.rule_paths == (FIXTURES / "good" / "rules.yaml",)
    assert [r.name for r in config.ruleset.rules] == ["all"]
    assert config.path == FIXTURES / "good" / "minimal.yaml"


def test_full_config_expands_variables_and_durations() -> None:
    env = {"ALERTER_TEST_KEY": "s3cret"}
    config = load_config(FIXTURES / "good" / "full.yaml", env=env)
    assert config.source.base_url == "http://127.0.0.1:8099"  # the ${VAR:-default}
    assert config.source.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump())
    assert config.poll.overlap == timedelta(seconds=90)
    assert config.poll.initial_sync == "silent"
    assert config.source.filters == {"transmission_region": "CAISO"}
    assert config.state.url == "sqlite:///./state/alerter.db"  # kept relative to the working directory
    assert config.operations_receiver == "ops"
    assert set(config.ruleset.receivers) == {"ops"}


def test_a_set_variable_wins_over_its_default_and_an_empty_one_does_not() -> None:
    env = {"ALERTER_TEST_KEY": "k", "ALERTER_TEST_BASE_URL": "https://api.staging.leap.energy"}
    assert load_config(FIXTURES / "good" / "full.yaml", env=env).source.base_url.endswith("staging.leap.energy")
    env["ALERTER_TEST_BASE_URL"] = ""
    assert load_config(FIXTURES / "good" / "full.yaml", env=env).source.base_url == "http://127.0.0.1:8099"


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTER_TEST_KEY", "from-env")
    config = load_config(FIXTURES / "good" / "full.yaml")
    assert config.source.api_key.get_secret_value() == "from-env"


def test_dollar_dollar_escapes_a_literal(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text((FIXTURES / "good" / "rules.yaml").read_text())
    (tmp_path / "c.yaml").write_text("source: {api_key: 'a$${NOT_EXPANDED}b'}\nrules: r.yaml\n")
    config = load_config(tmp_path / "c.yaml", env={})
    assert config.source.api_key.get_secret_value() == "a${NOT_EXPANDED}b"


def test_rules_globs_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "10-receivers.yaml").write_text("receivers: [{name: c, console: {}}]\n")
    (tmp_path / "rules.d" / "20-rules.yaml").write_text("rules: [{name: all, receivers: [c]}]\n")
    (tmp_path / "c.yaml").write_text("source: {api_key: k}\nrules: rules.d/*.yaml\n")
    config = load_config(tmp_path / "c.yaml", env={})
    assert [p.name for p in config.rule_paths] == ["10-receivers.yaml", "20-rules.yaml"]
    assert [r.name for r in config.ruleset.rules] == ["all"]


def test_unreadable_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.problems == [f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"]


def test_a_config_built_in_code_has_an_empty_ruleset() -> None:
    config = Config.model_validate({"source": {"api_key": "k"}})
    assert config.ruleset.rules == () and config.rule_paths == ()


EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path, env={"LEAP_API_KEY": "example-key"})
    assert config.ruleset.rules
    assert config.path == path


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"config.yaml", "staging.yaml", "demo.yaml"}


def test_variables_unquoted_in_flow_mappings_as_the_interface_example_writes_them(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "receivers:\n"
        "  - name: team\n"
        "    email:\n"
        "      to: [enrollment@example.com]\n"
        "      from: alerter@example.com\n"
        "      smtp: {host: smtp.example.com, port: '${SMTP_PORT:-587}', starttls: true, username: alerter,"
        " password: ${SMTP_PASSWORD}}\n"
        "rules:\n"
        "  - {name: all, receivers: [team]}\n"
    )
    (tmp_path / "c.yaml").write_text("source: {api_key: ${LEAP_KEY}, page_size: ${PAGE:-200}}\nrules: r.yaml\n")
    config = load_config(tmp_path / "c.yaml", env={"LEAP_KEY": "k-1", "SMTP_PASSWORD": "p{w}d, x"})
    assert (config.source.api_key.get_secret_value(), config.source.page_size) == ("k-1", 200)
    smtp = config.ruleset.receivers["team"].email.smtp  # type: ignore[union-attr]
    assert (smtp.port, smtp.password.get_secret_value()) == (587, "p{w}d, x")  # type: ignore[union-attr]


def test_an_unset_variable_in_a_flow_mapping_keeps_its_position(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text((FIXTURES / "good" / "rules.yaml").read_text())
    (tmp_path / "c.yaml").write_text("rules: r.yaml\nsource: {page_size: 10, api_key: ${UNSET_KEY}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml", env={})
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path / 'c.yaml'}:2:34: environment variable UNSET_KEY is not set")


@pytest.mark.parametrize(
    ("filters", "problem"),
    [
        ({"partner_action_required": False}, "'partner_action_required' cannot be a filter"),
        ({"meter_ids": ["x"]}, "'meter_ids' cannot be a filter"),
        ({"page_size": 10}, "'page_size' cannot be a filter: it is source.page_size"),
        ({"transmission_region": ["CAISO", "NYISO"]}, "'transmission_region' takes one value"),
        ({"tags": "vip"}, "'tags' takes a list of strings"),
        ({"global_enrollment_statuses": ["A"] * 6}, "'global_enrollment_statuses' takes at most 5 values, got 6"),
        ({"tags": ["vip", "b", "vip", "b", "c"]}, "'tags' takes each value once, got 'b', 'vip' more than once"),
        ({"created_after_date_time": "2024-01-01T00:00:00"}, "'created_after_date_time' takes an instant with its"),
        ({"exclude_archived": "yes"}, "'exclude_archived' takes true or false"),
        ({"modified_after": "2024-01-01T00:00:00Z"}, "unknown filter 'modified_after'"),
    ],
)
def test_search_filters_are_leaps_and_not_those_alerter_sets(filters: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        SourceConfig.model_validate({"api_key": "k", "filters": filters})


def test_search_filters_keep_leaps_shapes() -> None:
    filters = {"tags": [], "transmission_region": "CAISO", "created_after_date_time": "2024-11-01T02:00:00+02:00"}
    config = SourceConfig.model_validate({"api_key": "k", "filters": {**filters, "exclude_archived": True}})
    assert config.filters == {
        **filters,
        "created_after_date_time": "2024-11-01T00:00:00.000000Z",
        "exclude_archived": True,
    }


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@h1:5432,h2:5433/db", "postgresql://u:p@[::1]:5432/db", "postgres://u@h/db?host=/run/pg"],
)
def test_postgresql_urls_the_driver_takes_are_taken(url: str) -> None:
    assert StateConfig(url=url).url == url
