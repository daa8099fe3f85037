"""Initial-sync digests built over a backlog of any size in bounded batches (pure).

How this works: the backlog is read twice. `count` takes every event once, in any order,
routes it and adds it to the summary of each receiver it reaches (counts by action type,
region and deadline: what every part of the digest carries). `add` then takes the same
events most urgent first (deadline, meter, action type, id) and fills each receiver's
current part; a part is returned as soon as it holds `max_events` events, so only one
part per receiver is held at a time. `finish` returns the last parts, and for receivers
whose digest only lists the most urgent (Slack) the one notification. Ids depend only on
receiver, part and events: building the same digest again yields the same notifications.
Silenced events are counted nowhere and reported in `silenced`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime

from alerter.matchers import Matcher
from alerter.models import Event, Notification
from alerter.routes import Router
from alerter.summary import Summary

DEFAULT_MAX_EVENTS = 1000
"""Events per notification for a channel without a `max_events` option (Slack, console)."""


def urgency(ev: Event) -> tuple[bool, datetime | None, str, str, str]:
    """The order a digest lists its events in: the nearest deadline first, none last."""
    o = ev.obligation
    return (o.deadline is None, o.deadline, o.meter_id, o.action_type, ev.id)


class DigestBuilder:
    """One initial-sync digest per receiver, in parts (see the module note)."""

    def __init__(
        self,
        router: Router,
        now: datetime,
        sizes: dict[str, int],
        listed: dict[str, int],
        silences: Sequence[tuple[str, Matcher]] = (),
    ) -> None:
        self.router = router
        self.now = now
        self.sizes = sizes
        self.listed = listed
        self.silences = silences
        self.summaries: dict[str, Summary] = {}
        self.silenced: list[tuple[str, str]] = []
        self.told: list[tuple[str, str]] = []
        """(obligation key id, receiver) of obligations a listing-only digest (Slack) counts
        without listing: the receiver heard of them, so their resolutions go to it."""
        self._chunks: dict[str, list[Event]] = {}
        self._index: dict[str, int] = {}

    def _receivers(self, ev: Event) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.receiver for t in self.router.route(ev, self.now)))

    def _silence(self, ev: Event) -> str | None:
        return next((sid for sid, m in self.silences if m.matches(ev, self.now)), None)

    def count(self, events: Iterable[Event]) -> None:
        for ev in events:
            if self.silences and self._silence(ev) is not None:
                continue
            for r in self._receivers(ev):
                summary = self.summaries.get(r)
                if summary is None:
                    summary = self.summaries[r] = Summary(self.now)
                summary.add(ev)

    def add(self, events: Iterable[Event]) -> list[Notification]:
        """Events most urgent first (continuing the previous call's order): the parts filled."""
        out: list[Notification] = []
        for ev in events:
            if self.silences:
                sid = self._silence(ev)
                if sid is not None:
                    self.silenced.append((ev.id, sid))
                    continue
            for r in self._receivers(ev):
                chunk = self._chunks.setdefault(r, [])
                limit = self.listed.get(r)
                if limit is not None:
                    if len(chunk) < limit:
                        chunk.append(ev)
                    else:
                        self.told.append((ev.obligation.key_id, r))
                    continue
                chunk.append(ev)
                if len(chunk) >= self._size(r):
                    out.append(self._part(r))
        return out

    def finish(self) -> list[Notification]:
        out = [self._part(r) for r, chunk in list(self._chunks.items()) if chunk or r in self.listed]
        self._chunks.clear()
        return out

    def _size(self, receiver: str) -> int:
        return max(1, self.sizes.get(receiver, DEFAULT_MAX_EVENTS))

    def _part(self, receiver: str) -> Notification:
        chunk = self._chunks.pop(receiver)
        summary = self.summaries[receiver]
        if receiver in self.listed:
            index, count = 1, 1
            ids = [f"listed\x1e{summary.total}", *sorted(e.id for e in chunk)]
        else:
            index = self._index[receiver] = self._index.get(receiver, 0) + 1
            count = max(1, -(-summary.total // self._size(receiver)))
            ids = sorted(e.id for e in chunk) if count == 1 else [f"part\x1e{index}", *sorted(e.id for e in chunk)]
        return Notification(
            id=hashlib.sha256("\x1f".join(["digest", receiver, *ids]).encode()).hexdigest()[:32],
            kind="digest",
            rule="initial-sync",
            receiver=receiver,
            events=tuple(chunk),
            created_at=self.now,
            part=(index, count),
            summary=summary.counts(),
        )
