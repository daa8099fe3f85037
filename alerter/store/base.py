"""The Store protocol: every durable fact the service keeps, behind one async interface.

How this works: the cycle writes obligation changes and the events they produce in one
transaction (`commit_page`); routing consumes events and writes groups, notifications
and ledger rows in one transaction (`commit_routing`, `commit_flush`); delivery claims
ledger rows with a lease and records each attempt. A lease ends when its row's outcome is
recorded, when it expires, or when its holder is known dead: every instance heartbeats
(`heartbeat`), and a row leased by an instance not seen for a while can be claimed by
another (`claim_deliveries(stale_before=...)`); SQLite, one instance per file, releases
every lease when the instance starts (`start_instance`). Every write that belongs to the
poller (obligations, events, meta, routing) checks the fencing token set by
`set_fence`, so a deposed leader cannot write (FencedError). Ledger writes are not
fenced: every replica delivers.

`Store` is the union of small protocols, one per concern (`ObligationStore`, `RoutingStore`,
`SilenceStore`, `LedgerStore`, `LeadershipStore`, `RetentionStore`): the poller takes the
obligations, the deliverer the ledger, and only the composition root holds the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from alerter.models import (
    Event,
    EventRef,
    FirstLook,
    GroupState,
    Notification,
    Obligation,
    ObligationKey,
    RoutingWrite,
    Silence,
)

DeliveryStatus = Literal["pending", "sent", "dead", "disabled"]


# Meta keys the state holds: the server's `audit.updated_at` high-water mark, whether the initial
# sync is committed, when the last full sweep and the last cycle were committed, and the rules the
# reminders' next looks were computed under.
META_WATERMARK = "watermark"
META_INITIALIZED = "initialized"
META_LAST_RECONCILE = "last_reconcile_at"
META_LAST_CYCLE = "last_cycle_at"
META_REMIND_RULES = "remind_rules"
"""The rules files (digest) the stored `remind_at` times were computed under."""
META_DEFERRED = "deferred_indexes"
"""The definitions of the indexes an initial sync's bulk load dropped, until it builds them."""
META_CONSUMING = "consuming_initial"
"""The initial-sync events up to this sequence number are being marked routed (`consume_initial`)."""
WRITE_BATCH = 5000
"""Rows a bulk update changes per transaction: a large transaction holds every page it changes
in memory until it commits."""


@dataclass(frozen=True)
class Delivery:
    """One ledger row: a notification to one receiver, and its delivery history."""

    notification: Notification
    receiver: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None = None
    sent_at: datetime | None = None
    external_id: str | None = None
    steps: Mapping[str, str] = field(default_factory=dict)
    """The messages of this notification already sent (step name -> external id): a retry sends only the rest."""
    retry_from: datetime | None = None
    """When its retry budget started, if a replay started it again (else: its notification's creation)."""
    unreadable: tuple[str, ...] = ()
    """Its stored parts that cannot be read (`<event id>: <why>`, or `notification: <why>`): left
    out, and named by the delivery, which sends the rest (a notification with nothing left is dead)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One line of `alerter history`: a transition and what became of it."""

    at: datetime
    event: Event
    outcomes: tuple[str, ...] = field(default=())
    """e.g. `grouped rule/receiver`, `notified receiver (sent)`, `silenced <id>`."""


class Sent(NamedTuple):
    """A successful attempt, for `record_outcomes`."""

    notification_id: str
    receiver: str
    sent_at: datetime
    external_id: str | None = None


class Failed(NamedTuple):
    """A failed attempt, for `record_outcomes`: `next_attempt_at=None` makes a dead letter."""

    notification_id: str
    receiver: str
    error: str
    next_attempt_at: datetime | None
    failed_at: datetime
    attempted: bool = True
    """False for a deferral (the channel busy, paced or rate limited): not counted as an attempt."""


class ObligationStore(Protocol):
    """Obligations and the events they produce, cycle meta (watermark, ...) and history: what the poller writes."""

    def bulk_load(self) -> AbstractAsyncContextManager[bool]:
        """Around an initial sync: a store may defer building its secondary indexes while it
        holds no obligation yet, and build them at the end (or when next opened, after a stop).
        Yields whether it held no obligation at the start: what the sync then reads back of
        stored state is only what it wrote itself."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, values: Mapping[str, str]) -> None:
        """Fenced. e.g. watermark, last_reconcile_at, initialized."""

    async def is_empty(self) -> bool:
        """No obligation has ever been recorded and no initial sync completed."""

    async def load_obligations(self, meter_ids: Sequence[str]) -> dict[ObligationKey, Obligation]:
        """Every obligation (open or resolved) of these meters."""

    async def open_meter_ids(self) -> list[str]:
        """Meters that have at least one open obligation."""

    async def open_obligations(self, after: str = "", limit: int = 1000) -> list[Obligation]:
        """Open obligations in key id order, after the key id `after` (keyset pagination)."""

    async def reminder_candidates(self, now: datetime, limit: int = 1000) -> list[Obligation]:
        """Up to `limit` open obligations whose `remind_at` is at or before `now`, the earliest
        first (through its index). The caller moves each one's `remind_at` on (`set_remind_at`);
        one that cannot be read is skipped, named in `unreadable`, and not offered again until
        it is rewritten."""

    async def set_remind_at(self, items: Sequence[tuple[str, int, datetime | None]]) -> None:
        """Fenced: (key id, version, when the reminders step next looks at it, or None: not until
        it changes); an obligation changed since (another version) keeps its own."""

    async def reset_remind_at(self, at: datetime) -> None:
        """Fenced: every open obligation is looked at again from `at` (the rules changed)."""

    async def commit_page(
        self,
        obligations: Sequence[Obligation],
        events: Sequence[Event],
        meta: Mapping[str, str] | None = None,
        look: FirstLook | None = None,
    ) -> int:
        """Fenced, one transaction: upsert obligations, insert events (an event id already
        present is ignored), set meta. An open obligation's `remind_at` is `look(obligation)`
        (default: its `last_seen`, looked at on the reminders' next step). Returns how many
        events were new."""

    async def count_open(self) -> list[tuple[str, datetime | None, int]]:
        """(action_type, deadline, count) over open obligations, for metrics."""

    async def history(self, meter_id: str) -> list[HistoryEntry]: ...

    async def meters_by_reference(self, partner_reference: str) -> list[str]:
        """The ids of the meters with obligations whose `partner_reference` is this one."""


@dataclass(frozen=True, slots=True)
class StoredEvents:
    """Events as the store holds them, read but not yet decoded (`events`): routing and a digest
    read the next batch before the previous batch's write commits, and decode it while that
    write runs."""

    rows: Sequence[Any]
    decode: Callable[[Any], Event]
    unreadable: list[tuple[str, str]] = field(default_factory=list, kw_only=True)
    """(event id, why) of each row `events` skipped because it cannot be read."""

    def __len__(self) -> int:
        return len(self.rows)

    def events(self) -> list[Event]:
        """The rows' events; a row that cannot be read is skipped and named in `unreadable`."""
        decode = self.decode
        try:  # the common case: every row reads
            return [decode(r) for r in self.rows]
        except ValueError:
            pass
        out = []
        for r in self.rows:
            try:
                out.append(decode(r))
            except ValueError as err:  # msgspec's errors are ValueErrors too
                self.unreadable.append((r["id"], str(err)))
        return out


@dataclass(frozen=True, slots=True)
class PendingBatch(StoredEvents):
    """Events waiting for routing (`RoutingStore.pending_after`)."""

    last: int
    """The sequence number of the last event (`after`, when there is none)."""
    resolved: Sequence[str]
    """The obligation key ids of its `resolved` events (whom they go to is read before decoding)."""


class RoutingStore(Protocol):
    """Events waiting for routing, groups and their members, and what routing decided."""

    async def pending_events(self, limit: int = 1000) -> list[Event]:
        """Events not yet consumed by routing, oldest first."""

    async def pending_after(self, after: int, limit: int) -> PendingBatch:
        """Up to `limit` events not yet consumed by routing with a sequence number above
        `after`, oldest first, read but not decoded (`PendingBatch`)."""

    async def initial_events(self, after: int = 0, limit: int = 1000) -> PendingBatch:
        """Up to `limit` pending events of an initial sync with a sequence number above `after`,
        in order, read but not decoded (`PendingBatch`)."""

    async def initial_superseded(self, upto: int) -> set[str]:
        """The ids of pending initial-sync events up to `upto` that a digest leaves out: a first
        sync stopped midway and read again may have found an obligation changed or resolved
        since; the digest tells its latest state, once, and nothing of one resolved."""

    async def initial_by_urgency(self, upto: int) -> list[str]:
        """The ids of the pending initial-sync events up to sequence number `upto`, the nearest
        deadline first (then meter, action type, id): the order a digest lists them in."""

    async def consume_initial(self, upto: int) -> None:
        """Fenced: the pending initial-sync events up to sequence number `upto` are routed: the
        decision is one write (META_CONSUMING), then it is carried out a batch per transaction,
        so that a backlog of any size never makes one large transaction (`finish_initial`)."""

    async def finish_initial(self) -> None:
        """Fenced: carries out a `consume_initial` a stopped process left unfinished (if any)."""

    async def load_events(self, ids: Sequence[str]) -> list[Event]: ...

    async def read_events(self, ids: Sequence[str]) -> StoredEvents:
        """`load_events`, read but not decoded."""

    async def openings(self, obligations: Sequence[tuple[str, str]]) -> dict[str, list[Event]]:
        """The stored `opened` events of each (meter id, obligation key id), by key id, in order
        (an obligation opened again has several)."""

    async def load_event_refs(self, ids: Sequence[str], group_key: str | None = None) -> list[EventRef]:
        """What a group flush needs of these events (those stored, in the order given), without
        reading them whole: from `group_key`'s member rows when routing kept it there (`told`),
        else from the events."""

    async def event_times(self, ids: Sequence[str]) -> dict[str, datetime]:
        """When each of these events (those stored) occurred, by id."""

    async def load_groups(self) -> list[GroupState]:
        """Every group with its members (`pending`), by key."""

    async def group_heads(self) -> list[GroupState]:
        """Every group without its members (`pending` empty, `waiting` set): what `plan` needs."""

    async def due_groups(
        self, now: datetime, *, force: bool = False, idle_before: datetime | None = None
    ) -> list[GroupState]:
        """What `flush` needs, by key: groups with members due at `now` (every one with members
        when `force`), with their members; and, when `idle_before` is given, groups without
        members whose last flush (or flush time) is before it."""

    async def notified_receivers(self, key_ids: Sequence[str]) -> dict[str, set[str]]:
        """obligation key id -> receivers that got a notification carrying its opening."""

    async def commit_routing(self, write: RoutingWrite) -> None:
        """Fenced, one transaction: see RoutingWrite."""

    async def tidy(self) -> None:
        """After a routing pass that flushed groups: the space its writes freed given back
        (SQLite: see SqliteStore.tidy; PostgreSQL's autovacuum does its own)."""


class SilenceStore(Protocol):
    async def add_silence(self, silence: Silence) -> None: ...

    async def list_silences(self, now: datetime, include_expired: bool = False) -> list[Silence]: ...

    async def expire_silence(self, silence_id: str, now: datetime) -> bool: ...


class LedgerStore(Protocol):
    """The delivery ledger (not fenced: every replica delivers) and the instances that deliver."""

    async def start_instance(self, owner: str, now: datetime) -> int:
        """Register `owner` as alive at `now`. SQLite (one instance per file): also release every
        lease left by a process that died (nobody else can hold one). Returns leases released."""

    async def heartbeat(self, owner: str, now: datetime) -> None:
        """`owner` is alive at `now` (and forget instances not seen for a day)."""

    async def stop_instance(self, owner: str) -> int:
        """Graceful exit: release the leases `owner` still holds (their rows are due again at
        once) and forget the instance. Returns leases released."""

    async def claim_deliveries(
        self,
        now: datetime,
        owner: str,
        limit: int,
        lease_seconds: float,
        *,
        receiver: str | None = None,
        other_than: Sequence[str] | None = None,
        stale_before: datetime | None = None,
    ) -> list[Delivery]:
        """Due pending rows of enabled receivers, leased to `owner` (SKIP LOCKED on PostgreSQL):
        of `receiver` only, or of receivers not in `other_than`, or of all. A row whose lease
        has not expired is claimable only when `stale_before` is given and its holder (another
        instance) was last seen before it."""

    async def set_delivery_steps(
        self,
        notification_id: str,
        receiver: str,
        steps: Mapping[str, str],
        lease: tuple[str, datetime] | None = None,
    ) -> None:
        """Record the messages of a notification sent so far (all of them, step -> external id);
        with `lease` (owner, until), the row's lease runs to `until` if that owner still holds it:
        a notification of many messages outlasts one lease."""

    async def pending_before(self, receiver: str, created_before: datetime, other_than: Sequence[str]) -> bool:
        """Whether a notification made before `created_before` waits for `receiver` (pending),
        other than these: one the later ones about the same obligations must not overtake."""

    async def waits_for(
        self, receiver: str, notification_id: str, created_at: datetime, obligations: Sequence[tuple[str, str]]
    ) -> tuple[str, datetime] | None:
        """A pending notification to `receiver` made before this one (`created_at`) about one of
        these obligations ((meter id, key id) each): its id and next attempt, the latest such."""

    async def defer_delivery(self, notification_id: str, receiver: str, until: datetime, note: str, owner: str) -> None:
        """A row `owner` claimed put back, due at `until`, its lease released and no attempt
        counted (`note` is its last_error: what it waits for); left alone if another holds it."""

    async def renew_lease(
        self, notification_id: str, receiver: str, owner: str, until: datetime, seen_at: datetime | None = None
    ) -> bool:
        """Extend a pending row's lease to `until` if `owner` still holds it; False when another
        instance has claimed it since (a row that waited behind others, or a paused process).
        With `seen_at`, the owner's heartbeat too, in the same transaction (a stale one would let
        another instance take the row right after)."""

    async def mark_sent(self, notification_id: str, receiver: str, sent_at: datetime, external_id: str | None) -> None:
        """`record_outcomes` of one sent row."""

    async def mark_failed(
        self,
        notification_id: str,
        receiver: str,
        error: str,
        next_attempt_at: datetime | None,
        failed_at: datetime,
    ) -> None:
        """Record a failed attempt (at `failed_at`); `next_attempt_at=None` makes the row a dead letter."""

    async def record_outcomes(self, sent: Sequence[Sent] = (), failed: Sequence[Failed] = ()) -> None:
        """Several attempts' outcomes in one transaction, each with the semantics of
        `mark_sent` / `mark_failed` (a row already sent stays sent)."""

    async def dead_letters(self, receiver: str | None = None, since: datetime | None = None) -> list[Delivery]: ...

    async def replay_dead_letters(
        self, now: datetime, receiver: str | None = None, since: datetime | None = None
    ) -> int:
        """Dead rows back to pending, due now, attempts reset. Returns the count."""

    async def undelivered_count(self, receiver: str | None = None) -> int:
        """Pending rows (including those waiting for a retry), of one receiver or of all."""

    async def oldest_undelivered(self) -> dict[str, datetime]:
        """receiver -> creation time of its oldest pending notification, for metrics."""

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        """(receiver, status) -> rows, for metrics and self-alerts."""

    async def get_thread(self, receiver: str, key_id: str) -> str | None:
        """The external id (Slack channel:ts, email Message-ID) of the first message that told
        `receiver` about this obligation (since it last opened)."""

    async def set_thread(self, receiver: str, key_id: str, external_id: str, *, replace: bool = False) -> None:
        """Keep the first one: an existing thread is not overwritten, unless `replace` (an
        obligation opened again starts a new thread)."""

    async def set_receiver_disabled(self, receiver: str, reason: str | None, now: datetime) -> None:
        """reason=None re-enables."""

    async def disabled_receivers(self) -> dict[str, str]: ...


class LeadershipStore(Protocol):
    """Who polls (PostgreSQL: advisory lock + fencing token; SQLite: always leader)."""

    async def try_acquire_leadership(self, owner: str) -> int | None:
        """Become the poller if no one else is; returns the new fencing token or None."""

    async def still_leader(self) -> bool:
        """True while this instance still holds the lease it acquired."""

    async def release_leadership(self) -> None:
        """Give the lease up now (graceful shutdown) so another replica can take over at once.
        The fence is kept: a write after this fails once someone else leads."""

    def set_fence(self, token: int | None) -> None:
        """Fencing token checked by every poller write; None disables the check."""


class RetentionStore(Protocol):
    async def purge(self, before: datetime) -> dict[str, int]:
        """Fenced. Forget events, notifications and delivery rows older than `before` that are
        done with (see store/retention.py); returns rows removed per kind."""


class Store(ObligationStore, RoutingStore, SilenceStore, LedgerStore, LeadershipStore, RetentionStore, Protocol):
    """Every concern of the store, opened and closed: implemented by SqliteStore (embedded
    default) and PostgresStore. A part of the service that needs one concern takes its protocol."""

    url: str

    async def open(self) -> None:
        """Connect, apply migrations, and (SQLite) take the single-instance lock."""

    async def close(self) -> None: ...

    def abort(self) -> None:
        """Drops the store's connections at once, whatever waits on them (a stop whose `close`
        did not end in time: a server that accepts connections but answers nothing)."""
