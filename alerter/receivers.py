"""Receiver config models, one per channel (pure: no IO; the channel modules depend on these).

A rules file's `receivers[]` entries validate into these: loading and checking rules needs
no SMTP, HTTP or Slack client. Template options are compiled here, so a syntax error is a
config problem with its line and column.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from datetime import timedelta
from email.utils import parseaddr
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from alerter import templates
from alerter.durations import Duration, PositiveDuration

STRICT = ConfigDict(extra="forbid", frozen=True)

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def http_url(value: str, what: str) -> str:
    """`value` if it is an http:// or https:// URL that can be sent to (a host, a port in range,
    no space or control character); else ValueError saying what is wrong without repeating the
    URL, whose path or query can be a secret (an incoming webhook's token)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{what} must start with http:// or https://")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{what} holds a space or a control character")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as err:
        raise ValueError(f"{what} cannot be read: {err}") from None
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    return value


_Given = TypeVar("_Given", str, SecretStr)


def given(value: _Given, problem: str) -> _Given:
    """`value` unless it is empty or blank (an environment variable left unset); else ValueError
    saying `problem`, never the value."""
    if not (value.get_secret_value() if isinstance(value, SecretStr) else value).strip():
        raise ValueError(problem)
    return value


def _is_address(value: str) -> bool:
    """An address as a mail's headers take it: `name@domain`, or with a display name."""
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in address)


class SlackConfig(BaseModel):
    model_config = STRICT

    token: SecretStr
    channel: str
    api_url: str = "https://slack.com/api/"
    template: str | None = None
    """Optional Jinja2 template for the message text (Block Kit is built from it)."""
    portal_url: str = templates.PORTAL_URL
    """Base URL of the Leap Partner Portal; each meter links to `{portal_url}/meters/{meter_id}`."""
    min_interval: Duration = timedelta(seconds=1)
    """Pacing: at most one message per this interval in the channel."""
    max_wait: Duration = timedelta(seconds=10)
    """The longest a send waits (for its turn, or a Retry-After) before handing back to delivery."""

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        return templates.validate_template(value)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return http_url(value, "slack api_url")

    @field_validator("token")
    @classmethod
    def _token_given(cls, value: SecretStr) -> SecretStr:
        return given(value, "the Slack token is empty (an unset environment variable?)")

    @field_validator("channel")
    @classmethod
    def _channel_given(cls, value: str) -> str:
        return given(value, "the Slack channel is empty")


class SmtpConfig(BaseModel):
    model_config = STRICT

    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool | None = None
    """True: STARTTLS required; False: never. Unset: with a `username`, STARTTLS whenever the
    server offers it (the password does not go in clear to a server that could take it
    encrypted); without one, none (a relay's self-signed certificate keeps working)."""
    tls: bool = False
    """Implicit TLS (usually port 465)."""
    username: str | None = None
    password: SecretStr | None = None
    timeout: PositiveDuration = timedelta(seconds=30)
    cert_bundle: str | None = None
    """A CA bundle to verify the server with (a private CA); the system store otherwise."""

    @field_validator("host")
    @classmethod
    def _host_given(cls, value: str) -> str:
        return given(value, "the SMTP host is empty")

    @field_validator("cert_bundle")
    @classmethod
    def _bundle_readable(cls, value: str | None) -> str | None:
        if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError(f"no readable file at {value}")
        return value


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smtp: SmtpConfig
    subject_template: str | None = None
    text_template: str | None = None
    html_template: str | None = None
    portal_url: str = templates.PORTAL_URL
    max_events: int = Field(200, ge=1)
    """A larger group or digest is sent as several mails."""

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        for i, address in enumerate(value):
            if not _is_address(address):
                raise ValueError(f"to[{i}] is not an email address (name@domain, or Name <name@domain>)")
        return value

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not _is_address(value):
            raise ValueError("from is not an email address (name@domain, or Name <name@domain>)")
        return value

    @field_validator("subject_template", "text_template")
    @classmethod
    def _text_template_compiles(cls, value: str | None) -> str | None:
        return templates.validate_template(value)

    @field_validator("html_template")
    @classmethod
    def _html_template_compiles(cls, value: str | None) -> str | None:
        return templates.validate_template(value, html=True)


class WebhookConfig(BaseModel):
    model_config = STRICT

    url: str
    secret: SecretStr | list[SecretStr] | None = None
    """`whsec_<base64>`; a list while a secret rotates (one signature per secret)."""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveDuration = timedelta(seconds=15)
    max_events: int = Field(500, ge=1)
    """A larger group or digest is sent as several notifications (`data.part`)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "webhook url")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        for s in [] if value is None else value if isinstance(value, list) else [value]:
            if not whsec_key_valid(s.get_secret_value()):
                raise ValueError("webhook secret must be whsec_ followed by base64 (A-Z, a-z, 0-9, +, /)")
        return value

    def secrets(self) -> list[str]:
        s = self.secret
        return [x.get_secret_value() for x in ([] if s is None else s if isinstance(s, list) else [s])]


def whsec_key_valid(secret: str) -> bool:
    """A Standard Webhooks secret the signing library accepts and signs with the key it names."""
    key = secret.removeprefix("whsec_")
    # the signing library would skip characters that are not base64 and sign with another key
    if _BASE64.fullmatch(key) is None:
        return False
    try:  # the library's own decoding (standardwebhooks.Webhook): padded, and a key may not be empty
        return bool(base64.b64decode(key + "=="))
    except (binascii.Error, ValueError):
        return False


class ConsoleConfig(BaseModel):
    model_config = STRICT

    stream: Literal["stdout", "stderr"] = "stdout"
