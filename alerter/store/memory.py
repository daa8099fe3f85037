"""The routing-groups part of the store, in memory: what tests, benchmarks and `alerter rules
test` run grouping against without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from alerter.models import GroupState, RoutingWrite


class GroupBook:
    """Groups and their members in memory, with the store's semantics: `apply` a RoutingWrite
    as `commit_routing` does; `heads` is what `group_heads` returns (a live mapping: pass it
    to `plan`), `groups()` what `load_groups` returns, `due()` what `due_groups` returns."""

    def __init__(self) -> None:
        self.heads: dict[str, GroupState] = {}
        self._members: dict[str, dict[str, None]] = {}
        """group key -> event ids in arrival order (a dict: each id once, like the store's UNIQUE)."""

    def apply(self, write: RoutingWrite) -> None:
        heads, members = self.heads, self._members
        for key in write.deleted_groups:
            heads.pop(key, None)
            members.pop(key, None)
        touched = []
        for g in write.groups:
            heads[g.key] = replace(g, pending=()) if g.pending else g
            touched.append(g.key)
        for key, event_id in write.appended:
            ids = members.get(key)
            if ids is None:
                members[key] = {event_id: None}
                touched.append(key)
            else:
                ids[event_id] = None
        for key, event_id in write.flushed:
            ids = members.get(key)
            if ids is not None:
                ids.pop(event_id, None)
                if not ids:
                    del members[key]
                    touched.append(key)
        for key in touched:  # `waiting` says what the members say, as the store derives it
            head = heads.get(key)
            if head is not None and head.waiting is not (key in members):
                heads[key] = replace(head, waiting=key in members)

    def groups(self) -> list[GroupState]:
        return [self._full(self.heads[key]) for key in sorted(self.heads)]

    def due(self, now: datetime, *, force: bool = False, idle_before: datetime | None = None) -> list[GroupState]:
        out = []
        for g in self.heads.values():
            if g.waiting:
                if force or g.flush_at <= now:
                    out.append(self._full(g))
            elif idle_before is not None and (g.last_flush_at or g.flush_at) < idle_before:
                out.append(g)
        return sorted(out, key=lambda g: g.key)

    def _full(self, head: GroupState) -> GroupState:
        ids = self._members.get(head.key)
        return replace(head, pending=tuple(ids)) if ids else head
