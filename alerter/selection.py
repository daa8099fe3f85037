"""What the poller reads of a page: each page as it arrives, reduced to the records that can change state.

A sweep lists every meter needing partner action, most of which did not change: they are
dropped here, while the page is fresh in memory, and never read, diffed or kept.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from alerter.models import Record

_METER_ID = operator.attrgetter("meter_id")


class PageLike(Protocol):
    @property
    def records(self) -> Sequence[Record]: ...
    @property
    def invalid(self) -> int: ...
    @property
    def max_updated_at(self) -> datetime | None: ...
    @property
    def meter_ids(self) -> Sequence[str]:
        """The records' meter ids, in order."""

    @property
    def acting(self) -> Sequence[Record]:
        """The records listing partner actions, in order."""

    @property
    def invalid_ids(self) -> Sequence[str]:
        """The readable meter ids of the invalid records."""


class SourceLike(Protocol):
    def search(self, filters: dict[str, object]) -> AsyncIterator[PageLike]: ...
    def search_meters(
        self,
        meter_ids: Sequence[str],
        last_modified: datetime | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[PageLike]: ...


@dataclass(slots=True)
class Selected:
    """What a diff needs of one page: the records that can change state, and the page's counts."""

    records: list[Record]
    listed: int
    invalid: int
    max_updated_at: datetime | None
    invalid_ids: Sequence[str]


async def select_pages(pages: AsyncIterator[PageLike], tracked: set[str] | None) -> AsyncGenerator[Selected, None]:
    """Each page as it arrives, reduced to the records that can change state.

    `tracked`, when given (a sweep), holds the meters that can have open obligations: those
    open before the sweep, and those it finds listing partner actions (added here, in page
    order, so a later copy of a meter that changed while the sweep paged is kept even when
    it lists none). Only those and meters listing partner actions can change; the others,
    most of a portfolio, are dropped here, while the page is fresh in memory, and not read,
    diffed or kept. Without `tracked` (an incremental read) every record is kept.
    """
    try:
        async for page in pages:
            records = page.records
            if tracked is not None:
                ids = page.meter_ids
                if len(set(ids)) < len(ids):  # a meter listed twice in a page: the later copy
                    latest = dict(zip(ids, records, strict=True))
                    records = [r for r in latest.values() if r.partner_actions or r.meter_id in tracked]
                elif tracked.isdisjoint(ids):
                    records = page.acting
                else:
                    records = [r for r in records if r.partner_actions or r.meter_id in tracked]
                tracked.update(map(_METER_ID, records))
            selected = Selected(list(records), len(page.records), page.invalid, page.max_updated_at, page.invalid_ids)
            # The rest of the page is freed here, while its objects are fresh in the caches.
            del page, records
            yield selected
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
