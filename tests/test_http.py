"""The HTTP details every edge shares: reading Retry-After against a given `now`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerter.http import RETRY_AFTER_MAX, retry_after

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("soon", None), ("7", 7.0), ("1.5", 1.5), ("-3", 0.0),
     ("Sat, 28 Nov 2026 10:00:30 GMT", 30.0), ("Sat, 28 Nov 2026 09:00:00 GMT", 0.0),
     ("Sat, 28 Nov 2026 10:02:00", 120.0), ("100000000000000", RETRY_AFTER_MAX), ("inf", RETRY_AFTER_MAX),
     ("nan", None), ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX)],
)  # fmt: skip
def test_retry_after_is_seconds_or_a_date_counted_from_now(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, NOW) == seconds
