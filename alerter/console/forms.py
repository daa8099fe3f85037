"""What the console's forms and JSON bodies mean: silences, replays, receivers shown without secrets,
silence previews. Pure: parsed input in, domain values or a list of problems out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alerter.durations import parse_duration
from alerter.matchers import Matcher, MatcherError, compile_matcher, parse_silence_matchers
from alerter.models import Obligation, Silence

PREVIEW_LIMIT = 200


class FormError(ValueError):
    """Input the console refuses; `problems` names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _time(value: Any, name: str, problems: list[str]) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        # stored as UTC: an instant that has no UTC form (9999-12-31T23:59:59-12:00) could
        # be written but not read back, and every read of the silences would fail
        dt = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        problems.append(f"{name}: not an ISO time: {value!r}")
        return None
    except OverflowError:
        problems.append(f"{name}: {value!r} is out of range once read as UTC")
        return None
    if not datetime(2000, 1, 1, tzinfo=UTC) <= dt <= datetime(9000, 1, 1, tzinfo=UTC):
        problems.append(f"{name}: {value!r} is not between the years 2000 and 9000")
        return None
    return dt


def matchers_from(raw: Any, problems: list[str]) -> dict[str, Any]:
    """A matcher mapping (the rules' language) or lines / a list of `field=value`, `field!=value`,
    `field=~regex`."""
    if isinstance(raw, str):
        raw = [line for line in raw.splitlines() if line.strip()]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        try:
            return parse_silence_matchers(raw)
        except MatcherError as err:
            problems.extend(f"matchers: {p}" for p in err.problems)
            return {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append('matchers: give at least one, e.g. {"meter_id": "M-1"}')
        return {}
    try:
        compile_matcher(raw)
    except MatcherError as err:
        problems.extend(f"matchers: {p}" for p in err.problems)
        return {}
    return dict(raw)


def silence_from(body: Mapping[str, Any], actor: str, now: datetime, silence_id: str) -> Silence:
    """A silence from `{matchers, duration | ends_at, starts_at?, reason}`; raises FormError."""
    problems: list[str] = []
    matchers = matchers_from(body.get("matchers"), problems)
    raw_reason = body.get("reason")
    reason = raw_reason.strip() if isinstance(raw_reason, str) else ""
    if raw_reason is not None and not isinstance(raw_reason, str):
        problems.append("reason: expected text")
    elif not reason:
        problems.append("reason: required (say why, for whoever reads the silence list)")
    starts = _time(body.get("starts_at"), "starts_at", problems) or now
    ends = _time(body.get("ends_at"), "ends_at", problems)
    duration = str(body.get("duration") or "").strip()
    if ends is None and duration:
        try:
            ends = starts + parse_duration(duration)
        except ValueError as err:
            problems.append(f"duration: {err}")
        except OverflowError:
            problems.append("duration: it would end past the year 9999")
    elif ends is None and not any(p.startswith("ends_at") for p in problems):
        problems.append("expiry: give a duration (e.g. 24h) or ends_at")
    if ends is not None and ends <= max(starts, now):
        problems.append("expiry: the silence would end before it starts or in the past")
    if problems:
        raise FormError(problems)
    assert ends is not None
    return Silence(silence_id, matchers, starts, ends, reason, created_by=actor, created_at=now)


@dataclass(frozen=True)
class _Probe:
    """An open obligation as a silence sees its next event (a reminder)."""

    kind: str
    obligation: Obligation


_STILL_TO_COME = ("reminder", "changed", "resolved")


class Preview:
    """Counts the open obligations a matcher would silence, keeping the first few."""

    def __init__(self, matchers: Mapping[str, Any], now: datetime, keep: int = PREVIEW_LIMIT) -> None:
        self.matcher: Matcher = compile_matcher(matchers)
        self.now = now
        self.keep = keep
        self.matched = 0
        self.obligations: list[Obligation] = []

    def feed(self, obligations: Iterable[Obligation]) -> None:
        matches, now = self.matcher.matches, self.now
        for o in obligations:
            # any event an open obligation can still make: a change, a reminder, its resolution
            if any(matches(_Probe(kind, o), now) for kind in _STILL_TO_COME):
                self.matched += 1
                if len(self.obligations) < self.keep:
                    self.obligations.append(o)


def ids_from(raw: Any) -> list[str] | None:
    """Notification ids of a replay request; None when none were named."""
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise FormError(["ids: expected a list of notification ids"])
    return list(dict.fromkeys(raw))


def redact_url(url: str) -> str:
    """A URL's scheme, host and port: its user info, path and query, where tokens hide (a
    Slack or Teams incoming webhook's path is its secret), show only as `…`."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable url)"
    path = "/…" if parts.path not in ("", "/") else parts.path
    return urlunsplit((parts.scheme, (parts.hostname or "") + port, path, "…" if parts.query else "", ""))


def describe_receiver(receiver: Any) -> dict[str, Any]:
    """A receiver's channel and where it sends, with every secret left out."""
    channel = receiver.channel
    s = receiver.settings
    if channel == "slack":
        target = {"channel": s.channel, "api_url": redact_url(s.api_url)}
    elif channel == "email":
        target = {
            "to": list(s.to),
            "from": s.from_,
            "smtp": f"{s.smtp.host}:{s.smtp.port}",
            "username": s.smtp.username or "",
        }
    elif channel == "webhook":
        target = {"url": redact_url(s.url), "headers": sorted(s.headers), "signed": s.secret is not None}
    else:
        target = {"stream": getattr(s, "stream", "stdout")}
    return {"name": receiver.name, "channel": channel, "target": target}
