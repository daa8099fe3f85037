"""The service config: one strict pydantic tree loaded from YAML with `${VAR}` expansion.

`load_config(path)` returns a Config or raises ConfigError listing every problem as
`FILE:LINE:COL: message`. It also loads the rules files the config names (relative
paths and glob patterns resolve against the config file's directory) and keeps the
compiled RuleSet on the Config: `config.ruleset`, `config.rule_paths` (what SIGHUP
re-reads with `rules.load_rules`). A SQLite `state.url` path stays relative to the
working directory, as in any SQLAlchemy-style URL. `alerter check` runs exactly this
loader.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from alerter.durations import Duration, PositiveDuration, format_duration, parse_duration
from alerter.errors import ConfigError
from alerter.receivers import given, http_url
from alerter.yamlload import YamlDoc, load_yaml, sort_problems, validation_problems

if TYPE_CHECKING:
    from alerter.rulefile import RuleSet

__all__ = ["STRICT", "Config", "Duration", "format_duration", "load_config", "parse_duration"]

STRICT = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    """Leap's base URL; the key goes in `api_key` (a `user:password@` in it is refused: aiohttp
    cannot send both, and such a URL would be written wherever the URL is)."""
    url = http_url(value, "the URL")
    if "@" in urlsplit(url).netloc:
        raise ValueError("the URL must not hold a user or password (Leap's key is source.api_key)")
    return url


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


class WebhooksConfig(BaseModel):
    """Leap's webhooks in: where they are received and the secret header that authenticates them."""

    model_config = STRICT

    path: str = "/leap/webhooks"
    header: str = "x-api-key"
    """The header Leap sends each secret in (the subscription's `headers`); matched case-insensitively."""
    secrets: Annotated[list[SecretStr], Field(min_length=1)]
    """Every value accepted (several while rotating); the first is the one `leap-webhooks register` sets."""
    listen: str | None = None
    """HOST:PORT of a listener of its own; by default the endpoint is served on `http.listen`."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or " " in v:
            raise ValueError(f"expected an absolute URL path such as /leap/webhooks, got {v!r}")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"expected an HTTP header name, got {v!r}")
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(not s.get_secret_value().strip() for s in v):
            raise ValueError("a webhook secret is empty (is its ${VAR} set?)")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)


_SET_BY_ALERTER = {
    "last_modified_date_time": "alerter sets it from its watermark",
    "partner_action_required": "alerter sets it (its sweeps read the meters that need the partner)",
    "meter_ids": "alerter sets it when it reads meters again",
    "page_token": "alerter pages through the results itself",
    "page_size": "it is source.page_size",
}
"""Search fields the poller sets: as filters they would change what a sweep means (an old
`last_modified_date_time` kept in a reconcile sweep would resolve every meter it leaves out)."""
_LIST_FILTERS = {
    "partner_references": 1000,
    "global_enrollment_statuses": 5,
    "meter_types": 20,
    "load_types": 20,
    "customer_groups": 20,
    "tags": 20,
    "connection_reference_ids": 100,
    "action_type": 20,
}
"""Leap's search fields that take a list, and the most values each takes."""
_ONE_VALUE_FILTERS = ("transmission_region", "customer_classification")
_TIME_FILTERS = ("created_after_date_time", "created_before_date_time")
_FLAG_FILTERS = ("exclude_archived",)


def _search_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """`source.filters` as Leap's search definition takes them, but for the fields alerter sets;
    every filter's problem is said, in one message."""
    known = sorted([*_LIST_FILTERS, *_ONE_VALUE_FILTERS, *_TIME_FILTERS, *_FLAG_FILTERS])
    problems: list[str] = []
    unknown = False
    for name, value in filters.items():
        if name in _SET_BY_ALERTER:
            problems.append(f"{name!r} cannot be a filter: {_SET_BY_ALERTER[name]}")
        elif name in _LIST_FILTERS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{name!r} takes a list of strings")
            elif len(value) > _LIST_FILTERS[name]:
                problems.append(f"{name!r} takes at most {_LIST_FILTERS[name]} values, got {len(value)}")
            elif len(set(value)) < len(value):  # Leap's definition: `uniqueItems` (it refuses the search)
                again = sorted({v for v in value if value.count(v) > 1})
                problems.append(f"{name!r} takes each value once, got {', '.join(map(repr, again))} more than once")
        elif name in _ONE_VALUE_FILTERS:
            if not isinstance(value, str):
                problems.append(f"{name!r} takes one value (a string)")
        elif name in _TIME_FILTERS:
            when = value if isinstance(value, datetime) else _instant(value)
            if when is None or when.tzinfo is None:
                problems.append(f"{name!r} takes an instant with its offset, such as 2024-11-01T00:00:00Z")
            else:
                filters[name] = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif name in _FLAG_FILTERS:
            if not isinstance(value, bool):
                problems.append(f"{name!r} takes true or false")
        else:
            problems.append(f"unknown filter {name!r}")
            unknown = True
    if unknown:
        problems.append(f"Leap's search takes {', '.join(known)}")
    if problems:
        raise ValueError("; ".join(problems))
    return filters


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class SourceConfig(BaseModel):
    model_config = STRICT

    base_url: Annotated[str, BeforeValidator(lambda v: _http_url(v) if isinstance(v, str) else v)] = (
        "https://api.leap.energy"
    )
    api_key: SecretStr
    page_size: int = Field(500, ge=1, le=500)
    timeout: PositiveDuration = timedelta(seconds=30)
    filters: Annotated[dict[str, Any], AfterValidator(_search_filters)] = Field(default_factory=dict)
    """Leap search fields every read adds (`_search_filters`)."""
    max_retries: int = Field(5, ge=0, le=20)
    webhooks: WebhooksConfig | None = None
    """Leap's webhooks in (push); polling goes on as reconciliation."""

    @field_validator("api_key")
    @classmethod
    def _key_given(cls, v: SecretStr) -> SecretStr:
        return given(v, "is empty (if it names an environment variable, is that set?)")


class PollConfig(BaseModel):
    model_config = STRICT

    interval: PositiveDuration = timedelta(minutes=5)
    overlap: Duration = timedelta(minutes=10)
    reconcile_interval: PositiveDuration = timedelta(hours=24)
    initial_sync: Literal["digest", "notify", "silent"] = "digest"
    resolution_check: Literal["meter_ids", "unfiltered"] = "meter_ids"
    """How an incremental cycle sees actions that cleared (the filtered query hides those meters):
    `meter_ids` re-reads the meters with open obligations by id (1000 a request), `unfiltered`
    drops `partner_action_required` from the incremental query (every modified meter)."""


class StateConfig(BaseModel):
    model_config = STRICT

    url: str = "sqlite:///./alerter.db"
    """`sqlite:///relative/path.db` (relative to the working directory), `sqlite:////abs/path.db`,
    or `postgresql://user:pass@host:5432/db`."""
    retention: Duration = timedelta(days=90)
    """Events and delivered notifications of obligations resolved longer ago are forgotten
    (obligations themselves are kept); 0s keeps everything."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            scheme, sep, _ = v.partition("://")
            got = f"{scheme}://..." if sep else "a URL without a scheme"  # the rest may hold a password
            raise ValueError(f"expected sqlite:///PATH or postgresql://..., got {got}")
        if v.startswith("sqlite:///"):
            if not v.removeprefix("sqlite:///").partition("?")[0]:
                raise ValueError("expected sqlite:///PATH, got no path")
            return v
        hosts = urlsplit(v).netloc.rpartition("@")[2]  # the rest may hold a password
        for host in hosts.split(","):  # several, host1:5432,host2:5432, for a failover
            try:
                urlsplit(f"//{host}").port  # noqa: B018 - reading it checks it
            except ValueError:
                raise ValueError(
                    "the PostgreSQL URL's port is not a number from 1 to 65535 (a password holding "
                    "/, #, ? or @ must be percent-encoded: %2F, %23, %3F, %40)"
                ) from None
        return v


class ConsoleUser(BaseModel):
    """A console login: a plain `password` or a `password_hash` from `alerter hash-password`."""

    model_config = STRICT

    username: str = Field(min_length=1, pattern=r"^[^\s:]+$")
    password: SecretStr | None = None
    password_hash: SecretStr | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ConsoleUser:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError("a user needs exactly one of password, password_hash")
        if self.password_hash is not None and not self.password_hash.get_secret_value().startswith("$argon2"):
            raise ValueError("password_hash: expected an argon2 hash as printed by `alerter hash-password`")
        return self


class AuthConfig(BaseModel):
    """Who may use the console and the JSON API (`http.auth`)."""

    model_config = STRICT

    users: list[ConsoleUser] = Field(default_factory=list)
    api_tokens: list[SecretStr] = Field(default_factory=list)
    """Bearer tokens for `/api/v1/` (at least 16 characters each)."""
    trusted_user_header: str | None = None
    """A header set by an SSO proxy in front (e.g. X-Forwarded-User): its value is the user."""

    @field_validator("api_tokens")
    @classmethod
    def _long_enough(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for i, token in enumerate(tokens):
            if len(token.get_secret_value()) < 16:  # said without the token's length
                raise ValueError(f"api_tokens[{i}] is too short: use at least 16 characters")
        return tokens


class HttpConfig(BaseModel):
    model_config = STRICT

    listen: str = "127.0.0.1:8080"
    """HOST:PORT (port 0 picks a free port)."""
    auth: AuthConfig | None = None
    """Console and API access; without it they are read-only and served on a loopback listen only."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v


class LogConfig(BaseModel):
    model_config = STRICT

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(BaseModel):
    model_config = STRICT

    source: SourceConfig
    poll: PollConfig = PollConfig()
    state: StateConfig = StateConfig()
    http: HttpConfig = HttpConfig()
    rules: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        default_factory=list
    )
    """Rules files (a file or a list; glob patterns allowed), relative to the config file."""
    log: LogConfig = LogConfig()
    operations_receiver: str | None = None
    """A receiver of the rules files that hears the service's own alerts."""

    _ruleset: RuleSet | None = PrivateAttr(default=None)
    _rule_paths: tuple[Path, ...] = PrivateAttr(default=())
    _path: Path | None = PrivateAttr(default=None)

    @property
    def ruleset(self) -> RuleSet:
        """The compiled rules (empty when the Config was not built by load_config)."""
        if self._ruleset is None:
            from alerter.rulefile import RuleSet

            return RuleSet()
        return self._ruleset

    @property
    def rule_paths(self) -> tuple[Path, ...]:
        """The rules files, resolved against the config file's directory, in order."""
        return self._rule_paths

    @property
    def path(self) -> Path | None:
        """The file this config was loaded from."""
        return self._path


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Load, validate and expand a config file and the rules files it names.

    Raises ConfigError with every problem as `FILE:LINE:COL: message`. `env` replaces
    `os.environ` for `${VAR}` expansion (tests).
    """
    from alerter.rulefile import compile_rules

    doc = load_yaml(path, env=env)
    problems = list(doc.problems)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), "a config file is a mapping (source, poll, state, http, rules, log)")])
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems.extend(validation_problems(doc, err))
    rule_files, rule_docs = _rule_docs(doc, data, Path(path), env, problems)
    ruleset = None
    try:
        ruleset = compile_rules(rule_docs)
    except ConfigError as err:
        problems.extend(err.problems)
    ops = data.get("operations_receiver")
    if ruleset is not None and isinstance(ops, str) and ops not in ruleset.receivers:
        problems.append(doc.problem(("operations_receiver",), f"undefined receiver '{ops}'"))
    if problems or config is None or ruleset is None:
        raise ConfigError(sort_problems(problems, [doc.file, *(d.file for d in rule_docs)]))
    config._ruleset = ruleset
    config._rule_paths = tuple(rule_files)
    config._path = Path(path)
    return config


def _rule_docs(
    doc: YamlDoc, data: dict[str, Any], path: Path, env: Mapping[str, str] | None, problems: list[str]
) -> tuple[list[Path], list[YamlDoc]]:
    raw = data.get("rules", [])
    entries = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    at_list = not isinstance(raw, str)
    if isinstance(raw, list) and not raw:  # no rules would route nothing: every event dropped
        problems.append(doc.problem(("rules",), "no rules files (e.g. rules: rules.yaml)", key=True))
    base = path.parent
    files: list[Path] = []
    docs: list[YamlDoc] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            continue
        where = ("rules", i) if at_list else ("rules",)
        target = Path(entry) if os.path.isabs(entry) else Path(os.path.normpath(base / entry))
        if glob.has_magic(entry):
            matches = sorted(Path(p) for p in glob.glob(str(target)))
            if not matches:
                problems.append(doc.problem(where, f"no rules file matches {entry!r}"))
        elif not target.is_file():
            problems.append(doc.problem(where, f"rules file not found: {entry!r} (relative to the config file)"))
            continue
        else:
            matches = [target]
        for m in matches:
            files.append(m)
            try:
                docs.append(load_yaml(m, display=os.path.normpath(m), env=env))
            except ConfigError as err:
                problems.extend(err.problems)
    return files, docs
