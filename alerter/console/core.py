"""The console's pure core: filters parsed from a query string, the SQL they become, keyset
cursors, deadline buckets, JSON and CSV shapes. No IO: the store executes what this builds.

How this works: obligations are listed by deadline, then by key id. A page is a keyset range
`(deadline, key_id) > cursor`; obligations without a deadline come after every dated one
(a second range over `deadline IS NULL`, by key id), so each page is one index range scan
whatever its depth. The cursor is the last row's (deadline, key id), base64url JSON.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

import orjson

from alerter.durations import parse_duration
from alerter.models import Obligation
from alerter.store.schema import Dialect, expression

State = Literal["open", "resolved"]
Bucket = Literal["overdue", "24h", "7d", "later", "none"]
BUCKETS: tuple[Bucket, ...] = ("overdue", "24h", "7d", "later", "none")
BUCKET_LABELS: dict[str, str] = {
    "overdue": "overdue",
    "24h": "due in < 24 h",
    "7d": "due in < 7 d",
    "later": "later",
    "none": "no deadline",
}
KEY = ("meter_id", "program_identifier", "delivery_period", "action_type", "action_code")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
TEXT_FILTERS = ("action_type", "transmission_region", "program_identifier", "delivery_period", "tag", "receiver")
CSV_COLUMNS = (
    "meter_id",
    "partner_reference",
    "transmission_region",
    "action_type",
    "action_code",
    "action_description",
    "program_identifier",
    "delivery_period",
    "deadline",
    "opened_at",
    "resolved_at",
    "state",
    "tags",
)


class QueryError(ValueError):
    """A query parameter the console cannot use; the message names it."""


@dataclass(frozen=True)
class Cursor:
    deadline: str | None
    """ISO time of the last row's deadline; None once the listing is among undated rows."""
    key_id: str

    def encode(self) -> str:
        raw = orjson.dumps({"d": self.deadline, "k": self.key_id})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            key_id = data["k"]
            deadline = data["d"]
            if not isinstance(key_id, str) or not (deadline is None or isinstance(deadline, str)):
                raise ValueError
            if deadline is not None and datetime.fromisoformat(deadline).tzinfo is None:
                raise ValueError(deadline)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            raise QueryError("cursor: not a cursor this console gave out") from None
        return cls(deadline, key_id)


@dataclass(frozen=True)
class ObligationQuery:
    """What `/obligations` and `/api/v1/obligations` filter on."""

    state: State = "open"
    action_type: str | None = None
    transmission_region: str | None = None
    program_identifier: str | None = None
    delivery_period: str | None = None
    tag: str | None = None
    receiver: str | None = None
    q: str | None = None
    """A meter id or a partner_reference."""
    deadline_within: timedelta | None = None
    """Deadline less than this ahead of now (overdue included)."""
    bucket: Bucket | None = None
    limit: int = DEFAULT_LIMIT
    cursor: Cursor | None = None

    def params(self, **over: Any) -> dict[str, str]:
        """The query string that asks for this (with `over` replacing fields), for links."""
        q = replace(self, **over) if over else self
        out: dict[str, str] = {}
        if q.state != "open":
            out["state"] = q.state
        for name in (*TEXT_FILTERS, "q"):
            value = getattr(q, name)
            if value:
                out[name] = value
        if q.deadline_within is not None:
            out["deadline_within"] = _duration_text(q.deadline_within)
        if q.bucket:
            out["deadline"] = q.bucket
        if q.limit != DEFAULT_LIMIT:
            out["limit"] = str(q.limit)
        if q.cursor is not None:
            out["cursor"] = q.cursor.encode()
        return out


def _duration_text(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_obligation_query(params: Mapping[str, str]) -> ObligationQuery:
    """Raises QueryError naming the first parameter that cannot be used. Empty values are unset."""
    get = {k: v.strip() for k, v in params.items() if isinstance(v, str) and v.strip()}
    state = get.get("state", "open")
    if state not in ("open", "resolved"):
        raise QueryError(f"state: expected open or resolved, got {state!r}")
    within = None
    if "deadline_within" in get:
        try:
            within = parse_duration(get["deadline_within"])
        except ValueError as err:
            raise QueryError(f"deadline_within: {err}") from None
    bucket = get.get("deadline")
    if bucket is not None and bucket not in BUCKETS:
        raise QueryError(f"deadline: expected one of {', '.join(BUCKETS)}, got {bucket!r}")
    try:
        limit = int(get.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise QueryError(f"limit: expected a number, got {get['limit']!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit: expected 1 to {MAX_LIMIT}, got {limit}")
    cursor = Cursor.decode(get["cursor"]) if "cursor" in get else None
    texts = {name: get.get(name) for name in TEXT_FILTERS}
    return ObligationQuery(
        state="resolved" if state == "resolved" else "open",
        q=get.get("q"),
        deadline_within=within,
        bucket=bucket,  # checked against BUCKETS above
        limit=limit,
        cursor=cursor,
        **texts,
    )


@dataclass
class Sql:
    """A WHERE clause under construction: conditions and their `$n` arguments."""

    ts: Callable[[datetime | None], Any]
    conds: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self) -> str:
        return " AND ".join(self.conds) if self.conds else "TRUE"


def obligation_filter(q: ObligationQuery, dialect: Dialect, now: datetime, ts: Callable[[datetime | None], Any]) -> Sql:
    """The conditions of `q` on the `obligations` table (no cursor)."""
    s = Sql(ts)
    s.conds.append(f"status = {s.arg(q.state)}")
    for name in ("action_type", "program_identifier", "delivery_period"):
        value = getattr(q, name)
        if value:
            s.conds.append(f"{name} = {s.arg(value)}")
    if q.transmission_region:
        s.conds.append(f"{expression(dialect, 'region')} = {s.arg(q.transmission_region)}")
    if q.tag:
        tags, tag = expression(dialect, "meter_tags"), s.arg(q.tag)
        if dialect == "sqlite":
            s.conds.append(f"EXISTS (SELECT 1 FROM json_each({tags}) WHERE value = {tag})")
        else:
            s.conds.append(f"EXISTS (SELECT 1 FROM json_array_elements_text({tags}) AS t(v) WHERE t.v = {tag})")
    if q.receiver:
        s.conds.append(
            "EXISTS (SELECT 1 FROM notified n WHERE n.key_id = obligations.key_id "
            f"AND n.receiver = {s.arg(q.receiver)})"
        )
    if q.q:
        p = s.arg(q.q)
        s.conds.append(f"(meter_id = {p} OR {expression(dialect, 'ref')} = {p})")
    if q.deadline_within is not None:
        s.conds.append(f"deadline < {s.arg(ts(now + q.deadline_within))}")
    if q.bucket == "none":
        s.conds.append("deadline IS NULL")
    elif q.bucket is not None:
        low, high = bucket_range(q.bucket, now)
        if low is not None:
            s.conds.append(f"deadline >= {s.arg(ts(low))}")
        if high is not None:
            s.conds.append(f"deadline < {s.arg(ts(high))}")
    return s


def bucket_range(bucket: Bucket, now: datetime) -> tuple[datetime | None, datetime | None]:
    """[low, high) of a dated bucket."""
    day, week = now + timedelta(hours=24), now + timedelta(days=7)
    return {
        "overdue": (None, now),
        "24h": (now, day),
        "7d": (day, week),
        "later": (week, None),
    }.get(bucket, (None, None))


def bucket_of(deadline: datetime | None, now: datetime) -> Bucket:
    if deadline is None:
        return "none"
    if deadline < now:
        return "overdue"
    if deadline < now + timedelta(hours=24):
        return "24h"
    if deadline < now + timedelta(days=7):
        return "7d"
    return "later"


def bucket_case(now: datetime, s: Sql) -> str:
    """SQL naming each row's deadline bucket (the same boundaries as `bucket_of`)."""
    day, week = now + timedelta(hours=24), now + timedelta(days=7)
    return (
        f"CASE WHEN deadline IS NULL THEN 'none' WHEN deadline < {s.arg(s.ts(now))} THEN 'overdue' "
        f"WHEN deadline < {s.arg(s.ts(day))} THEN '24h' WHEN deadline < {s.arg(s.ts(week))} THEN '7d' "
        "ELSE 'later' END"
    )


ORDER_DATED = "deadline, key_id"
ORDER_UNDATED = "key_id"


def page_ranges(base: Sql, cursor: Cursor | None, ts: Callable[[datetime | None], Any]) -> list[tuple[str, list[Any]]]:
    """(WHERE, args) of the ranges to read in order: dated rows after the cursor, then undated ones."""
    out: list[tuple[str, list[Any]]] = []
    if cursor is None or cursor.deadline is not None:
        s = Sql(ts, [*base.conds, "deadline IS NOT NULL"], list(base.args))
        if cursor is not None:
            assert cursor.deadline is not None
            marks = ", ".join(s.arg(v) for v in (ts(datetime.fromisoformat(cursor.deadline)), cursor.key_id))
            s.conds.append(f"({ORDER_DATED}) > ({marks})")
        out.append((s.where() + f" ORDER BY {ORDER_DATED}", s.args))
    s = Sql(ts, [*base.conds, "deadline IS NULL"], list(base.args))
    if cursor is not None and cursor.deadline is None:
        s.conds.append(f"{ORDER_UNDATED} > {s.arg(cursor.key_id)}")
    out.append((s.where() + f" ORDER BY {ORDER_UNDATED}", s.args))
    return out


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def unb64(text: str) -> str:
    """Raises ValueError for anything `b64` did not make."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(text) from None


def cursor_after(o: Obligation) -> Cursor:
    return Cursor(o.deadline.isoformat() if o.deadline else None, o.key_id)


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def obligation_json(o: Obligation) -> dict[str, Any]:
    """One obligation as the API lists it."""
    m = o.meter
    return {
        "meter_id": o.meter_id,
        "partner_reference": m.partner_reference,
        "transmission_region": m.transmission_region,
        "action_type": o.action_type,
        "action_code": o.action_code,
        "action_description": o.action_description,
        "program_identifier": o.program_identifier,
        "delivery_period": o.delivery_period,
        "deadline": iso(o.deadline),
        "opened_at": iso(o.opened_at),
        "resolved_at": iso(o.resolved_at),
        "state": o.status,
        "tags": list(m.tags),
        "customer_group": m.customer_group,
    }


def csv_text(obligations: Iterable[Obligation], *, header: bool = True) -> str:
    """Obligations as CSV rows (CSV_COLUMNS); a cell that a spreadsheet would run as a formula is quoted
    with a leading apostrophe."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for o in obligations:
        row = obligation_json(o)
        row["tags"] = " ".join(row["tags"])
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def portal_url(base: str, meter_id: str) -> str:
    """The meter's page in Leap's Partner Portal."""
    return f"{base.rstrip('/')}/meters/{quote(meter_id, safe='')}"
