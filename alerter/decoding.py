"""Leap's search pages decoded: one pass over the whole page, record by record only when that
fails, so one invalid record is counted, named and skipped while the rest of the page goes on.

How this works: `decode_page` validates the page in one `validate_json` of its raw bytes (the
record types normalise date-times to UTC themselves, so there is no extra pass), and gathers in
the same pass the page's meter ids, the records listing partner actions and the highest
`audit.updated_at`. When that fails, `_decode_each` reads the page leniently (a lone surrogate in
one record fails only that record) and validates each record apart. `peek_next_token` reads the
next page's token out of the raw bytes, so a sweep can ask for it before decoding this one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from alerter.errors import SourceError
from alerter.models import LeapTime, Record

log = structlog.get_logger()


class SearchResponse(BaseModel):
    """The search response as far as the product reads it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    meters: list[Record]
    next_page_token: str | None = None


_PAGE = TypeAdapter(SearchResponse)
_NEXT_KEY = b'"next_page_token"'
_NEXT_TOKEN = re.compile(rb'"next_page_token"\s*:\s*("(?:[^"\\]|\\.)*")')
_TIME = TypeAdapter(LeapTime)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: its valid records, how many were skipped, and where the next starts."""

    number: int
    records: list[Record]
    invalid: int
    next_page_token: str | None
    max_updated_at: datetime | None
    """The highest `audit.updated_at` on the page, invalid records included when it was readable."""
    meter_ids: list[str] = field(default_factory=list)
    """The valid records' meter ids, in order."""
    acting: list[Record] = field(default_factory=list)
    """The valid records listing partner actions, in order.

    Gathered while decoding, in the pass that finds `max_updated_at`: a page's freshly decoded
    objects are still in the CPU caches then, and a sweep needs little else of most pages."""
    invalid_ids: list[str] = field(default_factory=list)
    """The readable meter ids of the invalid records: those meters are listed, though unread."""

    @property
    def unidentified(self) -> int:
        """Invalid records without a readable meter id: which meters they are is unknown."""
        return self.invalid - len(self.invalid_ids)


def peek_next_token(raw: bytes) -> str | None:
    """The `next_page_token` of a raw page without decoding it; None when absent, null or not plain.

    A guess, to start the next request early: the decoded page has the final word. The last
    occurrence is read, as the top-level field usually follows `meters`.
    """
    at = raw.rfind(_NEXT_KEY)
    if at < 0:
        return None
    found = _NEXT_TOKEN.match(raw, at)
    if found is None:
        return None
    try:
        token = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return token if isinstance(token, str) and token else None


def decode_page(raw: bytes, number: int) -> Page:
    """Decodes one search page; invalid records are skipped, logged and counted."""
    try:
        whole = _PAGE.validate_json(raw)
    except ValidationError:
        return _decode_each(raw, number)
    records = whole.meters
    latest = None
    ids: list[str] = []
    acting: list[Record] = []
    for record in records:
        ids.append(record.meter_id)
        if record.partner_actions:
            acting.append(record)
        updated = record.updated_at  # aware UTC (LeapTime)
        if updated is not None and (latest is None or updated > latest):
            latest = updated
    return Page(number, records, 0, whole.next_page_token or None, latest, ids, acting)


def _decode_each(raw: bytes, number: int) -> Page:
    data, lenient = _loads(raw, number)
    meters = data.get("meters") if isinstance(data, dict) else None
    if not isinstance(meters, list):
        raise SourceError(f"Leap returned a page without a `meters` list (page {number})")
    token = data.get("next_page_token")
    records: list[Record] = []
    invalid_ids: list[str] = []
    latest: datetime | None = None
    for index, item in enumerate(meters):
        updated = _updated_at(item)
        if updated is not None and (latest is None or updated > latest):
            latest = updated
        try:
            record = Record.model_validate(item)
            if lenient:
                _check_encodable(record)
            records.append(record)
            continue
        except ValidationError as err:
            error = summarize_errors(err)
        except ValueError as err:
            error = str(err)
        meter_id = _readable_id(item)
        if meter_id is not None:
            invalid_ids.append(meter_id)
        log.warning("record_invalid", meter_id=meter_id, page=number, index=index, error=error)
    invalid = len(meters) - len(records)
    ids = [r.meter_id for r in records]
    acting = [r for r in records if r.partner_actions]
    if token is not None and not isinstance(token, str):
        # read as the last page, it would end the sweep early, and a reconcile sweep would then
        # resolve every meter on the pages never read
        raise SourceError(f"Leap returned a next_page_token that is not a string (page {number})")
    token = token or None
    return Page(number, records, invalid, token, latest, ids, acting, invalid_ids)


def _loads(raw: bytes, number: int) -> tuple[Any, bool]:
    """The page as Python objects, and whether only the lenient parser could read it.

    orjson refuses a lone surrogate escape (`"\\ud800"`) anywhere in the page; the standard
    parser reads it, and `_check_encodable` then fails the records that hold one, alone.
    """
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        raise SourceError(f"Leap returned a page that is not JSON (page {number})") from None


def _check_encodable(record: Record) -> None:
    """A record read by the lenient parser must hold only text that can be stored."""
    try:
        record.model_dump_json()
    except ValueError:
        raise ValueError("<record>: holds text that is not valid Unicode (a lone surrogate)") from None


def _readable_id(item: Any) -> str | None:
    """An invalid record's `meter_id`, when it is a non-empty string of valid Unicode."""
    meter_id = item.get("meter_id") if isinstance(item, dict) else None
    if not isinstance(meter_id, str) or not meter_id:
        return None
    try:
        meter_id.encode()
    except UnicodeEncodeError:
        return None
    return meter_id


def _updated_at(item: Any) -> datetime | None:
    try:
        updated: datetime = _TIME.validate_python(item["audit"]["updated_at"])
        return updated
    except (KeyError, TypeError, ValidationError):
        return None


def summarize_errors(err: ValidationError) -> str:
    """Where and why a record failed, without its values."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)[:3]
    ]
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
