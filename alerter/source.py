"""Leap client: aiohttp in, validated records out — search pages, single meters, retries, stats.

How this works: every request goes through `_request`, which retries connection errors,
timeouts, 429 (honouring Retry-After, capped) and 500/502/503/504 with exponential backoff and full
jitter until `max_retries` is spent, then raises SourceError naming the last status or condition.
401/403 raise SourceError(auth=True); 400 raises with Leap's title and details. Pages are
decoded by `alerter.decoding` (one pass, record by record only when that fails).
A sweep asks for page n+1 before decoding page n, from the token read out of page n's raw bytes;
the decoded token must agree, or that request is cancelled and the page asked for again.
No message or log line carries the API key.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
import orjson
import structlog
from pydantic import ValidationError
from yarl import URL

from alerter.config import SourceConfig
from alerter.decoding import Page, decode_page, peek_next_token, summarize_errors
from alerter.errors import SourceError
from alerter.http import retry_after as parse_retry_after
from alerter.models import Record, is_uuid

SEARCH_PATH = "/v2/meters/enrollments/search"
ENROLLMENT_PATH = "/v2/meters/{meter_id}/enrollments"
MAX_METER_IDS = 1000
RETRYABLE = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "alerter/0.1 (+leap-partner-actions)"

log = structlog.get_logger()


_SEND_TURNS = 3
"""Turns of the event loop given to a request ahead to be written before the page is decoded."""


@dataclass(frozen=True, slots=True)
class _Ahead:
    """The request for the next page, started from the token read out of the raw page."""

    token: str
    task: asyncio.Future[tuple[int, bytes]]


class MeterNotFound(SourceError):
    """Leap answered a search naming `meter_id` with 404 "Meter not found"."""

    def __init__(self, meter_id: str, message: str) -> None:
        super().__init__(message, status=404)
        self.meter_id = meter_id


def _meter_not_found(raw: bytes) -> str | None:
    """The meter a 404 body (Leap's `ErrorResponse`) names in its `details`, if any."""
    try:
        details = orjson.loads(raw).get("details")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    meter_id = details.get("meter_id") if isinstance(details, dict) else None
    return meter_id if isinstance(meter_id, str) else None


async def _discard(task: asyncio.Future[Any]) -> None:
    """Cancels a request no one will read and waits for it, its error (if any) retrieved."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


@dataclass
class ClientStats:
    """Counters the service exports as metrics."""

    requests: int = 0
    retries: int = 0
    pages: int = 0
    records: int = 0
    invalid_records: int = 0
    latency_sum: float = 0.0
    """Seconds spent in HTTP requests (each attempt), summed."""
    latency_count: int = 0
    decode_seconds: float = 0.0
    """Seconds spent decoding and validating pages."""


class LeapClient:
    """`async with LeapClient(config) as leap: async for page in leap.search({...}): ...`."""

    def __init__(
        self,
        config: SourceConfig,
        session: aiohttp.ClientSession | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        retry_after_limit: float = 120.0,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock`: the time a Retry-After date is counted from (the wall clock when not given).
        A Retry-After up to `retry_after_limit` is waited out (at most `retry_after_max`); a
        longer one ends the request, and Leap is not called again before it has passed."""
        self.config = config
        self.stats = ClientStats()
        self._session = session
        self._owns_session = session is None
        self._base = config.base_url.rstrip("/")
        self._where = URL(self._base).with_user(None).with_password(None).human_repr()
        self._timeout = aiohttp.ClientTimeout(total=config.timeout.total_seconds())
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._retry_after_limit = retry_after_limit
        self._not_before = 0.0
        """`time.monotonic()` before which Leap asked not to be called (a Retry-After too long to wait out)."""
        self._rng = rng or random.Random()
        self._clock = clock or _utcnow

    async def __aenter__(self) -> LeapClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- the API ---------------------------------------------------------------------------------

    async def search(self, filters: Mapping[str, Any] | None = None) -> AsyncIterator[Page]:
        """All pages of `POST /v2/meters/enrollments/search`, the same filter body on every page.

        Page n+1 is asked for while page n is decoded: its token is read from page n's raw bytes
        (`peek_next_token`) and the request is started first, so the server renders it meanwhile.
        The decoded token must agree, or that request is dropped and page n+1 asked for as before.
        At most one such request is in flight; one this generator leaves unused is cancelled.
        """
        body = search_body({**self.config.filters, **(filters or {})}, self.config.page_size)
        token: str | None = None
        used: set[str] = set()
        """The tokens this sweep has followed (a few bytes each, one a page)."""
        number = 0
        ahead: _Ahead | None = None
        try:
            while True:
                number += 1
                request = body if token is None else {**body, "page_token": token}
                first = None
                if ahead is not None:
                    if ahead.token == token:
                        first = ahead.task
                    else:
                        await _discard(ahead.task)
                    ahead = None
                page, ahead = await self._search_page(request, number, first, body)
                next_token = page.next_page_token
                yield page
                del page  # the caller's alone now: freed when it lets go, not after the next page
                if next_token is None:
                    return
                if next_token in used:  # A, B, A, ...: a loop would page for ever
                    raise SourceError(
                        f"Leap returned a page token it had already given (page {number}); stopping the sweep"
                    )
                used.add(next_token)
                token = next_token
        finally:
            if ahead is not None:
                await _discard(ahead.task)

    async def _search_page(
        self,
        request: Mapping[str, Any],
        number: int,
        first: asyncio.Future[tuple[int, bytes]] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[Page, _Ahead | None]:
        """One page; a body that is not a page at all (truncated, a proxy's page) is asked again.

        `first`, when given, is the request for this page already under way. With `body`, the next
        page is requested from the raw token before this one is decoded, and returned with it.
        """
        attempt = 0
        while True:
            if first is not None:
                fetch, first = first, None
                status, raw = await fetch
            else:
                status, raw = await self._request("POST", SEARCH_PATH, request)
            if status == 404:
                missing = _meter_not_found(raw)
                if missing is not None and missing in request.get("meter_ids", ()):
                    raise MeterNotFound(missing, f"Leap does not know meter {missing} (404 to the search)")
                raise SourceError(f"Leap answered 404 to the search at {self._where}: is base_url right?")
            ahead = None if body is None else await self._request_ahead(raw, body, request.get("page_token"))
            try:
                page = self._decode(raw, number)
            except SourceError as err:
                if ahead is not None:
                    await _discard(ahead.task)
                if attempt >= self.config.max_retries:
                    raise
                attempt += 1
                self.stats.retries += 1
                log.warning("page_undecodable", page=number, attempt=attempt, error=str(err))
                await asyncio.sleep(self._delay(attempt - 1, None))
                continue
            except BaseException:
                if ahead is not None:
                    await _discard(ahead.task)
                raise
            if ahead is not None and ahead.token != page.next_page_token:
                await _discard(ahead.task)
                ahead = None
            return page, ahead

    async def _request_ahead(self, raw: bytes, body: Mapping[str, Any], current: Any) -> _Ahead | None:
        """Starts the request for the page after `raw`, when its token can be read cheaply."""
        token = peek_next_token(raw)
        if token is None or token == current:
            return None
        task = asyncio.ensure_future(self._request("POST", SEARCH_PATH, {**body, "page_token": token}))
        # Let the task send its request before this coroutine decodes (CPU-bound, no awaits):
        # on a kept-alive connection aiohttp writes it on the second turn of the loop.
        for _ in range(_SEND_TURNS):
            await asyncio.sleep(0)
        return _Ahead(token, task)

    async def search_meters(
        self,
        meter_ids: Iterable[str],
        last_modified: datetime | str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Page]:
        """Pages for the given meters, asking for at most 1000 ids a request. An id that is not a
        UUID (stored by a version that took such records) is not asked for: Leap refuses the whole
        request for it (400); it reads as absent."""
        ids = list(dict.fromkeys(meter_ids))
        unnamed = [i for i in ids if not is_uuid(i)]
        if unnamed:
            log.warning("meter_id_not_uuid", meter_ids=unnamed[:10], count=len(unnamed))
            ids = [i for i in ids if is_uuid(i)]
        number = 0
        for start in range(0, len(ids), MAX_METER_IDS):
            chunk = ids[start : start + MAX_METER_IDS]
            while chunk:
                request = {**(filters or {}), "meter_ids": chunk, "last_modified_date_time": last_modified}
                read = number
                try:
                    async for page in self.search(request):
                        number += 1
                        yield replace(page, number=number)
                    break
                except MeterNotFound as err:
                    # Leap's definition of the search answers 404 for a meter it does not know: the
                    # others are asked again without it, and it reads as absent (`run_meters`)
                    if number != read:  # pages already given out: the search cannot start over
                        raise
                    log.warning("meter_not_found", meter_id=err.meter_id)
                    chunk = [i for i in chunk if i != err.meter_id]

    async def get_enrollment(self, meter_id: str) -> Record | None:
        """`GET /v2/meters/{meter_id}/enrollments`; None when Leap does not know the meter."""
        status, raw = await self._request("GET", ENROLLMENT_PATH.format(meter_id=meter_id), None)
        if status == 404:
            return None
        try:
            return Record.model_validate_json(raw)
        except ValidationError as err:
            self.stats.invalid_records += 1
            log.warning("record_invalid", meter_id=meter_id, error=summarize_errors(err))
            raise SourceError(
                f"Leap returned an invalid record for meter {meter_id}: {summarize_errors(err)}"
            ) from None

    # --- decoding --------------------------------------------------------------------------------

    def _decode(self, raw: bytes, number: int) -> Page:
        started = time.perf_counter()
        try:
            page = decode_page(raw, number)
        finally:
            self.stats.decode_seconds += time.perf_counter() - started
        self.stats.pages += 1
        self.stats.records += len(page.records)
        self.stats.invalid_records += page.invalid
        return page

    # --- transport -------------------------------------------------------------------------------

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
            self._owns_session = True
        return self._session

    async def _request(self, method: str, path: str, body: Mapping[str, Any] | None) -> tuple[int, bytes]:
        """Status and body of a 200 or 404, after retries; raises SourceError otherwise."""
        left = self._not_before - time.monotonic()
        if left > 0:
            raise SourceError(f"Leap asked not to be called for {math.ceil(left)} s more (Retry-After)", status=429)
        session = self._session_or_new()
        headers = {
            "Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        attempt = 0
        while True:
            started = time.perf_counter()
            self.stats.requests += 1
            retry_after: float | None = None
            try:
                async with session.request(
                    method, self._base + path, data=data, headers=headers, timeout=self._timeout
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
                if status in (200, 404):
                    return status, raw
                condition = f"{status} {_reason(status, raw, self)}"
            except (TimeoutError, aiohttp.ServerTimeoutError):
                status, raw = 0, b""
                condition = f"timed out after {self._timeout.total:g}s"
            except aiohttp.ClientError as err:  # the connection, or an answer that is not HTTP (a broken proxy)
                status, raw = 0, b""
                condition = f"connection failed ({type(err).__name__}: {_scrub(str(err), self)})"
            finally:
                self.stats.latency_sum += time.perf_counter() - started
                self.stats.latency_count += 1
            if status in (401, 403):
                raise SourceError(self._auth_message(status), auth=True, status=status)
            if status == 400:
                raise SourceError(f"Leap rejected the request (400): {_reason(status, raw, self)}", status=400)
            if status and status not in RETRYABLE:
                raise SourceError(f"Leap answered {condition} to {method} {path}", status=status)
            if retry_after is not None and retry_after > self._retry_after_limit:
                # longer than a cycle should wait: this cycle ends, the next ones do not call
                # before then (retrying sooner would only be refused again, and counted)
                self._not_before = time.monotonic() + retry_after
                raise SourceError(
                    f"Leap answered {condition} and asked not to be called for {retry_after:g} s (Retry-After)",
                    status=status,
                )
            if attempt >= self.config.max_retries:
                raise SourceError(
                    f"Leap API at {self._where} failed after {attempt + 1} attempts: {condition}",
                    status=status or None,
                )
            delay = self._delay(attempt, retry_after)
            attempt += 1
            self.stats.retries += 1
            log.warning("source_retry", attempt=attempt, condition=condition, delay=round(delay, 3), path=path)
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._retry_after_max)
        return self._rng.uniform(0, min(self._backoff_max, self._backoff_base * 2**attempt))

    def _auth_message(self, status: int) -> str:
        if status == 403:
            return (
                f"Leap refused the API key (403) at {self._where}: a staging key used on production, or a revoked key?"
            )
        return (
            f"Leap refused the API key (401) at {self._where}: is source.api_key set, current, "
            "and issued for this environment (staging or production)?"
        )


def search_body(filters: Mapping[str, Any], page_size: int) -> dict[str, Any]:
    """The JSON body: unused filters (None, empty) left out, datetimes as RFC 3339 UTC, sets as lists."""
    body: dict[str, Any] = {"page_size": page_size}
    for name, value in filters.items():
        if value is None or (isinstance(value, str | list | tuple | set | frozenset | dict) and not value):
            continue
        if isinstance(value, datetime):
            value = _rfc3339(value)
        elif isinstance(value, set | frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        body[name] = value
    return body


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _rfc3339(dt: datetime) -> str:
    return _aware(dt).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reason(status: int, raw: bytes, client: LeapClient) -> str:
    """A short reason from Leap's error envelope, a bare JSON string, or an HTML/other body; the
    API key taken out (a gateway may echo the request's headers)."""
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "title" in data:
        details = data.get("details")
        text = str(data["title"]) + (f" {orjson.dumps(details).decode()}" if details else "")
    elif isinstance(data, str):
        text = data
    elif raw.lstrip()[:1] == b"<":
        text = "(HTML body)"
    else:
        text = _STATUS.get(status, "")
    return _scrub(text, client)[:300]


_STATUS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}


def _scrub(text: str, client: LeapClient) -> str:
    key = client.config.api_key.get_secret_value()
    return text.replace(key, "***") if key else text
