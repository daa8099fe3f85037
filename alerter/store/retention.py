"""Retention: what the store may forget after `state.retention`, so months of running stay small.

How this works: obligations themselves are kept (one row per action ever seen: their
version numbers keep event ids, and so webhook-ids, unique if an action comes back).
Forgotten, once older than the cutoff: the events of obligations resolved before it
(never those of open obligations — their reminder ids must stay known, or a reminder
would fire again — nor those of a notification still pending or dead, which reads its
events from them), notifications all of whose events are gone and whose deliveries all
went out (dead letters stay until replayed), the delivery rows of those, expired
silences that no kept event names (an open obligation's history shows its silences), and
the "told" records of the forgotten obligations, and their thread records once their
receiver has nothing of them pending or dead (a dead letter replayed still answers in its thread).
"""

from __future__ import annotations

from typing import Any, Protocol

from alerter.store.schema import Dialect


class Executes(Protocol):
    """A connection inside a write transaction (the SQL store's `Tx`)."""

    async def execute(self, sql: str, *args: Any) -> int: ...


_OLD_RESOLVED = "SELECT key_id FROM obligations WHERE status = 'resolved' AND resolved_at < $1"
_OLD = f"routed AND occurred_at < $1 AND key_id IN ({_OLD_RESOLVED}) "
"""Events old enough to forget, of obligations resolved before the cutoff; what is still in use
of them is left out by `_OLD_EVENTS` (or `_OLD_EVENTS_SQLITE`)."""
_OLD_EVENTS = (
    _OLD + "AND NOT EXISTS (SELECT 1 FROM group_members m WHERE m.event_id = events.id) "
    # a notification not yet delivered (or dead, to be replayed) reads its events from here
    "AND NOT EXISTS (SELECT 1 FROM notification_events ne JOIN deliveries d ON d.notification_id = "
    "ne.notification_id WHERE ne.event_id = events.id AND d.status IN ('pending', 'dead'))"
)
_OLD_EVENTS_SQLITE = (
    _OLD + "AND id NOT IN (SELECT event_id FROM group_members) "
    "AND id NOT IN (SELECT ne.event_id FROM deliveries d JOIN notification_events ne "
    "ON ne.notification_id = d.notification_id WHERE d.status IN ('pending', 'dead'))"
)
"""`_OLD_EVENTS` as SQLite runs it in time linear in the rows: each list read once (into a
temporary index) rather than searched per event. Members are not indexed by event, and without
the planner's statistics (a state file never closed cleanly) the correlated form scans every
member, and every pending delivery, for each event, inside the write lock
(`python -m bench.bench_purge`: 50,000 old events, 20,000 of them waiting in a group; the purge
takes 0.26 s with statistics or without, selecting by the correlated form without them 34 s).
PostgreSQL plans `NOT EXISTS` as an anti-join, while its `NOT IN` over more rows than
`work_mem` holds would search per row."""
_OLD_NOTIFICATIONS = (
    "notifications.created_at < $1 "
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id "
    "AND d.status IN ('pending', 'dead')) "
    "AND NOT EXISTS (SELECT 1 FROM notification_events ne JOIN events e ON e.id = ne.event_id "
    "WHERE ne.notification_id = notifications.id)"
)

_UNLINKED = (
    "DELETE FROM notification_events WHERE NOT EXISTS "
    "(SELECT 1 FROM notifications n WHERE n.id = notification_events.notification_id)"
)
"""PostgreSQL: the links of notifications forgotten. SQLite's go with their events (`purge`),
and a notification is forgotten only once none of its events is left: none of its links is."""


async def purge(tx: Executes, at: Any, dialect: Dialect) -> dict[str, int]:
    """Forget what is older than `at` (a cutoff as the store writes times; see the module note)
    inside the caller's write transaction, fenced (only the leader purges); returns rows
    removed per kind."""
    old_events = _OLD_EVENTS_SQLITE if dialect == "sqlite" else _OLD_EVENTS
    await tx.execute(f"DELETE FROM silenced WHERE event_id IN (SELECT id FROM events WHERE {old_events})", at)
    if dialect == "sqlite":  # a link is an event's number, which SQLite may give again once it is gone
        await tx.execute(
            f"DELETE FROM notification_links WHERE event_seq IN (SELECT seq FROM events WHERE {old_events})", at
        )
    events = await tx.execute(f"DELETE FROM events WHERE {old_events}", at)
    deliveries = await tx.execute(
        f"DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM notifications WHERE {_OLD_NOTIFICATIONS})",
        at,
    )
    notifications = await tx.execute(f"DELETE FROM notifications WHERE {_OLD_NOTIFICATIONS}", at)
    if dialect == "postgres":
        await tx.execute(_UNLINKED)
    await tx.execute(f"DELETE FROM notified WHERE key_id IN ({_OLD_RESOLVED})", at)
    # a thread root stays while its receiver has something of that obligation left to send: a
    # dead letter replayed later (its resolution) still ticks the original and answers in its thread
    await tx.execute(
        f"DELETE FROM threads WHERE key_id IN ({_OLD_RESOLVED}) AND NOT EXISTS (SELECT 1 FROM deliveries d "
        "JOIN notification_events ne ON ne.notification_id = d.notification_id JOIN events e ON e.id = ne.event_id "
        "WHERE d.receiver = threads.receiver AND d.status IN ('pending', 'dead') AND e.key_id = threads.key_id)",
        at,
    )
    # a silence stays while an event it silenced does (an open obligation's history names it)
    silences = await tx.execute(
        "DELETE FROM silences WHERE ends_at < $1 "
        "AND NOT EXISTS (SELECT 1 FROM silenced x WHERE x.silence_id = silences.id)",
        at,
    )
    return {"events": events, "notifications": notifications, "deliveries": deliveries, "silences": silences}
