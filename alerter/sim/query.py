"""Search requests: validation as MeterFilterRequest says, filters evaluated over columns, page tokens.

How this works: a request is validated into a filter dict and a fingerprint of it. The matching
meter indices are computed once per filter — by byte-column masks (`bytes.translate` + big-int
AND, C speed over a million meters) or, when the request names meters (`meter_ids`,
`partner_references`, `connection_reference_ids`), by checking those few candidates — cached, and
patched for the meters mutated since. A page token carries the last index served and the
fingerprint, so the next page continues after that index even if meters changed in between, and a
token replayed with another filter is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import compress
from typing import Any

import orjson

from alerter.sim import catalog as c
from alerter.sim.columns import Columns
from alerter.sim.portfolio import Portfolio

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 500
UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PARTNER_REFERENCE = re.compile(r"^[^/\\?\]\[{}!#$%^&*()<>|]{3,256}$")

# name -> (minItems, maxItems, allowed values or None, item pattern or None)
_LISTS: dict[str, tuple[int, int, tuple[str, ...] | None, re.Pattern[str] | None]] = {
    "meter_ids": (0, 1000, None, UUID_PATTERN),
    "partner_references": (1, 1000, None, _PARTNER_REFERENCE),
    "global_enrollment_statuses": (1, 5, c.STATUSES, None),
    "meter_types": (1, 20, c.METER_TYPES, None),
    "load_types": (1, 20, c.LOAD_TYPES, None),
    "customer_groups": (1, 20, None, None),
    "tags": (1, 20, None, None),
    "connection_reference_ids": (1, 100, None, _PARTNER_REFERENCE),
    "action_type": (1, 20, c.ACTION_TYPES, None),
}
_ENUMS = {"transmission_region": c.REGIONS, "customer_classification": c.CLASSIFICATIONS}
_TIMES = ("last_modified_date_time", "created_after_date_time", "created_before_date_time")
_BOOLS = ("partner_action_required", "exclude_archived")
FIELDS = frozenset({"page_token", "page_size", *_LISTS, *_ENUMS, *_TIMES, *_BOOLS})


class BadRequest(Exception):
    """A 400 answer: Leap's `{title, status, details}` envelope."""

    def __init__(self, title: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(title)
        self.title = title
        self.details = details or {}


@dataclass(frozen=True)
class SearchRequest:
    page_size: int
    page_token: str | None
    filters: dict[str, Any]
    fingerprint: str


def parse_search(body: Any) -> SearchRequest:
    """Validates a search body; raises BadRequest naming the first offending field."""
    if not isinstance(body, dict):
        raise BadRequest("Bad Request", {"error": "the request body must be a JSON object"})
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadRequest("Bad Request", {unknown[0]: "unknown field"})
    filters: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("page_token", "page_size"):
            continue
        filters[name] = _check(name, value)
    page_size = body.get("page_size", DEFAULT_PAGE_SIZE)
    if type(page_size) is not int or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest("Bad Request", {"page_size": f"must be an integer from 1 to {MAX_PAGE_SIZE}"})
    token = body.get("page_token")
    if token is not None and not isinstance(token, str):
        raise BadRequest("Bad Request", {"page_token": "must be a string"})
    fingerprint = hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return SearchRequest(page_size, token or None, filters, fingerprint)


def _check(name: str, value: Any) -> Any:
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise BadRequest("Bad Request", {name: "must be a boolean"})
        return value
    if name in _ENUMS:
        if value not in _ENUMS[name]:
            raise BadRequest("Bad Request", {name: f"must be one of {', '.join(_ENUMS[name])}"})
        return value
    if name in _TIMES:
        us = c.parse_rfc3339_us(value) if isinstance(value, str) else None
        if us is None:
            raise BadRequest("Bad Request", {name: "must be an RFC 3339 date-time"})
        return value
    low, high, allowed, pattern = _LISTS[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("Bad Request", {name: "must be a list of strings"})
    if not low <= len(value) <= high:
        raise BadRequest("Bad Request", {name: f"must have {low} to {high} items"})
    if len(set(value)) != len(value):
        raise BadRequest("Bad Request", {name: "items must be unique"})
    for v in value:
        if name == "meter_ids" and not UUID_PATTERN.match(v):
            raise BadRequest("Meter id is not a UUID", {"meter_id": v})
        if allowed is not None and v not in allowed:
            raise BadRequest("Bad Request", {name: f"unknown value {v!r}"})
        if pattern is not None and not pattern.match(v):
            raise BadRequest("Bad Request", {name: f"invalid value {v!r}"})
    return value


# --- page tokens -----------------------------------------------------------------------------------


def encode_token(after: int, fingerprint: str) -> str:
    raw = orjson.dumps({"after": after, "filter": fingerprint})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, fingerprint: str) -> int:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        data = None
    if not isinstance(data, dict) or type(data.get("after")) is not int:
        raise BadRequest("Invalid page token", {"page_token": "not a token this API issued"})
    if data.get("filter") != fingerprint:
        raise BadRequest("Invalid page token", {"page_token": "issued for a different filter; resend the same filters"})
    return int(data["after"])


# --- evaluation ------------------------------------------------------------------------------------

Condition = list[tuple[bytearray, frozenset[int]]]
"""Meters whose byte in any of these columns is one of the accepted values."""


def _with_bits(mask: int) -> frozenset[int]:
    return frozenset(v for v in range(256) if v & mask)


def _bitmask(values: Sequence[str], vocabulary: Sequence[str]) -> int:
    return sum(1 << vocabulary.index(v) for v in set(values) if v in vocabulary)


def _conditions(cols: Columns, f: Mapping[str, Any]) -> list[Condition]:
    conds: list[Condition] = []
    if "transmission_region" in f:
        conds.append([(cols.region, frozenset({c.REGIONS.index(f["transmission_region"])}))])
    if "customer_classification" in f:
        code = c.CLASSIFICATIONS.index(f["customer_classification"])
        conds.append([(cols.classification, frozenset({code}))])
    if "global_enrollment_statuses" in f:
        conds.append([(cols.status, frozenset(c.STATUSES.index(s) for s in f["global_enrollment_statuses"]))])
    if "meter_types" in f:
        conds.append([(cols.meter_type, frozenset(c.METER_TYPES.index(s) for s in f["meter_types"]))])
    if "connection_reference_ids" in f:  # only utility meters carry a connection reference
        conds.append([(cols.meter_type, frozenset({c.METER_TYPES.index("UTILITY_METER")}))])
    if "customer_groups" in f:
        groups = frozenset(c.CUSTOMER_GROUPS.index(g) for g in f["customer_groups"] if g in c.CUSTOMER_GROUPS)
        conds.append([(cols.customer_group, groups)])
    if "tags" in f:
        conds.append([(cols.tags, _with_bits(_bitmask(f["tags"], c.TAGS)))])
    if "load_types" in f:
        mask = _bitmask(f["load_types"], c.LOAD_TYPES)
        conds.append([(cols.load_lo, _with_bits(mask & 0xFF)), (cols.load_hi, _with_bits(mask >> 8))])
    if "action_type" in f:
        mask = _bitmask(f["action_type"], c.ACTION_TYPES)
        conds.append([(cols.act_lo, _with_bits(mask & 0xFF)), (cols.act_hi, _with_bits(mask >> 8))])
    if f.get("partner_action_required"):
        conds.append([(cols.has_partner, frozenset({1}))])
    if f.get("exclude_archived"):
        conds.append([(cols.archived, frozenset({0}))])
    return conds


def _named(p: Portfolio, f: Mapping[str, Any]) -> set[int] | None:
    """The meters a request names explicitly (intersected), or None when it names none."""
    named: list[set[int]] = []
    if f.get("meter_ids"):
        named.append({i for i in map(p.index_of, f["meter_ids"]) if i is not None})
    for key, pattern in (
        ("partner_references", c.PARTNER_REFERENCE),
        ("connection_reference_ids", c.CONNECTION_REFERENCE),
    ):
        if key in f:
            found = (pattern.match(v) for v in f[key])
            named.append({int(m.group(1)) for m in found if m and int(m.group(1)) < p.size})
    return set.intersection(*named) if named else None


def _table(accepted: frozenset[int]) -> bytes:
    """A `bytes.translate` table: accepted byte values -> 1, the rest -> 0."""
    return bytes(1 if v in accepted else 0 for v in range(256))


def _bytes_and(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _bytes_or(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _updated_after(cols: Columns, after_us: int) -> bytes:
    k = bisect_right(cols.base_times, after_us)
    if (cols.size - k) * 2 > cols.size:
        mask = bytearray(b"\x01") * cols.size
        for i in cols.base_order[:k]:
            mask[i] = 0
    else:
        mask = bytearray(cols.size)
        for i in cols.base_order[k:]:
            mask[i] = 1
    for i in cols.touched:
        mask[i] = cols.updated[i] > after_us
    return bytes(mask)


def _bounds(cols: Columns, f: Mapping[str, Any]) -> tuple[int, int]:
    """The index range `created_after_date_time` and `created_before_date_time` leave."""
    lo, hi = 0, cols.size
    if "created_after_date_time" in f:
        lo = cols.created_index(c.parse_rfc3339_us(f["created_after_date_time"]) or 0)
    if "created_before_date_time" in f:
        hi = cols.created_index((c.parse_rfc3339_us(f["created_before_date_time"]) or 0) - 1)
    return lo, hi


def _after(f: Mapping[str, Any]) -> int | None:
    return c.parse_rfc3339_us(f["last_modified_date_time"]) if "last_modified_date_time" in f else None


def accepts(p: Portfolio, f: Mapping[str, Any]) -> Callable[[int], bool]:
    """Whether one meter matches validated filters (for a few meters; `select` does them all)."""
    cols = p.columns
    lo, hi = _bounds(cols, f)
    after = _after(f)
    conds = _conditions(cols, f)
    named = _named(p, f)

    def check(i: int) -> bool:
        return (
            lo <= i < hi
            and (named is None or i in named)
            and all(any(col[i] in accepted for col, accepted in cond) for cond in conds)
            and (after is None or cols.updated[i] > after)
        )

    return check


def select(p: Portfolio, f: Mapping[str, Any]) -> Sequence[int]:
    """Indices of the meters matching validated filters, ascending."""
    cols = p.columns
    named = _named(p, f)
    if named is not None:
        return sorted(filter(accepts(p, f), named))
    lo, hi = _bounds(cols, f)
    after = _after(f)
    masks: list[bytes] = []
    for cond in _conditions(cols, f):
        ored = [bytes(col.translate(_table(accepted))) for col, accepted in cond]
        masks.append(reduce(_bytes_or, ored))
    if after is not None:
        masks.append(_updated_after(cols, after))
    if not masks:
        return range(lo, max(lo, hi))
    mask = reduce(_bytes_and, masks)
    return array("I", compress(range(lo, hi), memoryview(mask)[lo:hi]))


_PATCH_LIMIT = 256
"""Up to this many meters changed since a filter's matches were computed, they are patched in place."""


class Searcher:
    """Serves pages of a portfolio, caching the match list per filter.

    A cached match list is brought up to date with the portfolio's mutations since it was computed
    by re-checking just the changed meters (inserting or removing them), so a filtered sweep under
    churn does not re-scan a million meters a page; past `_PATCH_LIMIT` changes it is recomputed.
    """

    def __init__(self, portfolio: Portfolio, cache_size: int = 32) -> None:
        self.portfolio = portfolio
        self._cache: OrderedDict[str, tuple[int, Sequence[int]]] = OrderedDict()
        self._cache_size = cache_size

    def matches(self, request: SearchRequest) -> Sequence[int]:
        cached = self._cache.get(request.fingerprint)
        if cached is not None and self._current(request, *cached):
            found = cached[1]
        else:
            found = select(self.portfolio, request.filters)
        self._cache[request.fingerprint] = (self.portfolio.version, found)
        self._cache.move_to_end(request.fingerprint)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def _current(self, request: SearchRequest, version: int, found: Sequence[int]) -> bool:
        """Whether a cached match list is (or has been patched to be) up to date."""
        if version == self.portfolio.version or isinstance(found, range):  # a range depends on no mutable column
            return True
        return isinstance(found, array) and self._patch(request, version, found)

    def _patch(self, request: SearchRequest, version: int, found: array[int]) -> bool:
        p = self.portfolio
        if len(p.changed) != p.version or not 0 <= version <= p.version:
            return False
        changed = set(p.changed[version:])
        if len(changed) > _PATCH_LIMIT:
            return False
        check = accepts(p, request.filters)
        for i in changed:
            at = bisect_left(found, i)
            present = at < len(found) and found[at] == i
            if check(i) and not present:
                found.insert(at, i)
            elif present and not check(i):
                del found[at]
        return True

    def window(self, request: SearchRequest) -> tuple[Sequence[int], str | None]:
        """The page's meter indices and the next page token (None on the last page)."""
        matches = self.matches(request)
        start = 0
        if request.page_token is not None:
            start = bisect_right(matches, decode_token(request.page_token, request.fingerprint))
        chosen = matches[start : start + request.page_size]
        more = start + request.page_size < len(matches)
        token = encode_token(chosen[-1], request.fingerprint) if more and len(chosen) else None
        return chosen, token

    def page(self, request: SearchRequest) -> tuple[list[dict[str, Any]], str | None]:
        """The page's meters and the next page token (None on the last page)."""
        chosen, token = self.window(request)
        return [self.portfolio.record(i) for i in chosen], token

    def page_json(self, request: SearchRequest) -> bytes:
        """The page as served: `{"meters":[…]}` plus `next_page_token` when there are more."""
        chosen, token = self.window(request)
        more = "" if token is None else f',"next_page_token":"{token}"'
        return f'{{"meters":{self.portfolio.json_array(chosen)}{more}}}'.encode()
