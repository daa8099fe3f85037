"""Versioned schema migrations for both backends, written once and rendered per dialect.

How this works: `MIGRATIONS` is an append-only list; step N (1-based) moves the schema
from version N-1 to N. `schema_version` holds the versions applied. A store applies the
missing steps at open, in one transaction (PostgreSQL takes an advisory transaction lock
first, so replicas starting together migrate once). Never edit a released step: add one.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_SQLITE_METER_COLUMNS = """
ALTER TABLE obligations ADD COLUMN partner_reference TEXT;
ALTER TABLE obligations ADD COLUMN transmission_region TEXT;
DROP INDEX IF EXISTS obligations_by_reference;
DROP INDEX IF EXISTS obligations_by_region;
CREATE INDEX obligations_by_reference ON obligations
    ((COALESCE(partner_reference, json_extract(meter, '$.partner_reference'))));
CREATE INDEX obligations_by_region ON obligations
    (status, (COALESCE(transmission_region, json_extract(meter, '$.transmission_region'))), deadline)
"""

_SQLITE_LINKS_WITHOUT_ROWID = """
CREATE TABLE notified_by_key (
    key_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    PRIMARY KEY (key_id, receiver)
) WITHOUT ROWID;
INSERT INTO notified_by_key (key_id, receiver) SELECT key_id, receiver FROM notified ORDER BY key_id, receiver;
DROP TABLE notified;
ALTER TABLE notified_by_key RENAME TO notified;
CREATE TABLE notification_events_by_key (
    event_id TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    position INTEGER,
    PRIMARY KEY (event_id, notification_id)
) WITHOUT ROWID;
INSERT INTO notification_events_by_key (event_id, notification_id, position)
    SELECT event_id, notification_id, position FROM notification_events ORDER BY event_id, notification_id;
DROP TABLE notification_events;
ALTER TABLE notification_events_by_key RENAME TO notification_events;
CREATE INDEX notification_events_by_notification ON notification_events (notification_id)
"""

_SQLITE_MEMBERS_BY_GROUP = """
CREATE TABLE group_members_by_group (
    group_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT,
    key_id TEXT,
    PRIMARY KEY (group_key, seq),
    UNIQUE (group_key, event_id)
) WITHOUT ROWID;
INSERT INTO group_members_by_group (group_key, seq, event_id, kind, key_id)
    SELECT group_key, seq, event_id, kind, key_id FROM group_members ORDER BY group_key, seq;
DROP TABLE group_members;
ALTER TABLE group_members_by_group RENAME TO group_members
"""

INSTANT_COLUMNS = {
    "leader": ("acquired_at",),
    "obligations": ("deadline", "opened_at", "first_seen", "last_seen", "resolved_at", "remind_at"),
    "events": ("occurred_at",),
    "groups": ("flush_at", "last_flush_at"),
    "notifications": ("created_at",),
    "deliveries": ("next_attempt_at", "sent_at", "lease_until", "updated_at"),
    "silences": ("starts_at", "ends_at", "created_at"),
    "receivers_state": ("at",),
    "instances": ("started_at", "last_seen"),
    "console_audit": ("at",),
    "console_sessions": ("created_at", "expires_at"),
    "webhook_inbox": ("received_at", "next_attempt_at", "processed_at"),
}
"""Every column that held an instant when schema step 13 packed SQLite's (columns added since,
such as `deliveries.retry_from`, are written packed from the start)."""

_SQLITE_PACKED_TIMES = ";\n".join(
    f"UPDATE {table} SET " + ", ".join(f"{c} = alerter_instant({c})" for c in columns)
    for table, columns in INSTANT_COLUMNS.items()
)

_SQLITE_NUMBERED_LINKS = """
CREATE TABLE notifications_numbered (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    receiver TEXT NOT NULL,
    created_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
INSERT INTO notifications_numbered (id, kind, rule, receiver, created_at, payload)
    SELECT id, kind, rule, receiver, created_at, payload FROM notifications ORDER BY created_at, id;
DROP TABLE notifications;
ALTER TABLE notifications_numbered RENAME TO notifications;
CREATE TABLE notification_links (
    notification_seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    PRIMARY KEY (notification_seq, position)
) WITHOUT ROWID;
INSERT OR IGNORE INTO notification_links (notification_seq, position, event_seq)
    SELECT n.seq, COALESCE(l.position, -ROW_NUMBER() OVER (PARTITION BY l.notification_id ORDER BY l.event_id)), e.seq
    FROM notification_events l JOIN notifications n ON n.id = l.notification_id JOIN events e ON e.id = l.event_id
    ORDER BY 1, 2;
CREATE INDEX notification_links_by_event ON notification_links (event_seq);
DROP TABLE notification_events;
CREATE VIEW notification_events (event_id, notification_id, position) AS
    SELECT e.id, n.id, l.position FROM notification_links l
    JOIN events e ON e.seq = l.event_seq JOIN notifications n ON n.seq = l.notification_seq
"""

_SQLITE_KEYED_BY_ID = """
CREATE TABLE obligations_by_key_id (
    meter_id TEXT NOT NULL,
    program_identifier TEXT NOT NULL,
    delivery_period TEXT NOT NULL,
    action_type TEXT NOT NULL,
    action_code TEXT NOT NULL,
    key_id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL,
    action_description NOT NULL,
    deadline TEXT,
    meter TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    first_seen TEXT,
    last_seen TEXT,
    resolved_at TEXT,
    resolution TEXT,
    version INTEGER NOT NULL,
    remind_at TEXT,
    partner_reference TEXT,
    transmission_region TEXT
);
INSERT INTO obligations_by_key_id SELECT meter_id, program_identifier, delivery_period, action_type, action_code,
    key_id, status, action_description, deadline, meter, opened_at, first_seen, last_seen, resolved_at, resolution,
    version, remind_at, partner_reference, transmission_region FROM obligations ORDER BY key_id;
DROP TABLE obligations;
ALTER TABLE obligations_by_key_id RENAME TO obligations;
CREATE INDEX obligations_meters ON obligations (meter_id, status);
CREATE INDEX obligations_by_deadline ON obligations (status, deadline, key_id);
CREATE INDEX obligations_by_reference ON obligations
    ((COALESCE(partner_reference, json_extract(meter, '$.partner_reference'))));
CREATE INDEX obligations_by_region ON obligations
    (status, (COALESCE(transmission_region, json_extract(meter, '$.transmission_region'))), deadline);
CREATE INDEX obligations_by_type ON obligations (status, action_type, deadline);
CREATE INDEX obligations_remind_at ON obligations (remind_at);
CREATE TABLE IF NOT EXISTS descriptions (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)
"""

_POSTGRES_KEYED_BY_ID = """
ALTER TABLE obligations DROP CONSTRAINT obligations_pkey;
ALTER TABLE obligations ADD PRIMARY KEY (key_id);
CREATE INDEX obligations_meters ON obligations (meter_id, status);
DROP INDEX obligations_open_meters
"""

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "key": "TEXT",
        "ts": "TEXT",
        "json": "TEXT",
        "bool": "INTEGER",
        "seq": "INTEGER PRIMARY KEY",
        # not types: the dialect's spelling of a group's stored `pending` ids, one row each
        "pending_ids": "json_each(g.pending) AS j",
        "pending_id": "j.value",
        "pending_ord": "j.key",
        # a meter attribute kept in the obligation's JSON, as an expression (console filters)
        "meter_ref": "json_extract(meter, '$.partner_reference')",
        "meter_region": "json_extract(meter, '$.transmission_region')",
        # since `_METER_COLUMNS`: the console's meter attributes, as its indexes spell them
        "ref": "COALESCE(partner_reference, json_extract(meter, '$.partner_reference'))",
        "region": "COALESCE(transmission_region, json_extract(meter, '$.transmission_region'))",
        "meter_columns": _SQLITE_METER_COLUMNS,
        "links_without_rowid": _SQLITE_LINKS_WITHOUT_ROWID,
        "members_by_group": _SQLITE_MEMBERS_BY_GROUP,
        "packed_times": _SQLITE_PACKED_TIMES,
        "packed_payloads": "",
        "numbered_links": _SQLITE_NUMBERED_LINKS,
        "keyed_by_id": _SQLITE_KEYED_BY_ID,
        # an obligation's meter's tags as a JSON array (a function the store's connection defines)
        "meter_tags": "alerter_tags(meter)",
    },
    "postgres": {
        # Byte-order collation: keyset pagination and indexes behave like Python's sort.
        "key": 'TEXT COLLATE "C"',
        "ts": "TIMESTAMPTZ",
        "json": "JSON",  # kept as written: cheaper to insert than JSONB, and only read whole
        "bool": "BOOLEAN",
        "seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "pending_ids": "json_array_elements_text(g.pending) WITH ORDINALITY AS j(id, ord)",
        "pending_id": "j.id",
        "pending_ord": "j.ord",
        "meter_ref": "(meter->>'partner_reference')",
        "meter_region": "(meter->>'transmission_region')",
        "ref": "(meter->>'partner_reference')",
        "region": "(meter->>'transmission_region')",
        "meter_columns": "",
        "links_without_rowid": "",
        "members_by_group": "",
        "packed_times": "",
        "packed_payloads": "ALTER TABLE events ALTER COLUMN payload TYPE BYTEA USING convert_to(payload::text, 'UTF8')",
        "meter_tags": "(meter->'tags')",
        "numbered_links": "",
        "keyed_by_id": _POSTGRES_KEYED_BY_ID,
    },
}

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL,
    owner TEXT NOT NULL,
    acquired_at {ts} NOT NULL
);

CREATE TABLE obligations (
    meter_id {key} NOT NULL,
    program_identifier {key} NOT NULL,
    delivery_period {key} NOT NULL,
    action_type {key} NOT NULL,
    action_code {key} NOT NULL,
    key_id TEXT NOT NULL,
    status TEXT NOT NULL,
    action_description TEXT NOT NULL,
    deadline {ts},
    meter {json} NOT NULL,
    opened_at {ts} NOT NULL,
    first_seen {ts} NOT NULL,
    last_seen {ts} NOT NULL,
    resolved_at {ts},
    resolution TEXT,
    version INTEGER NOT NULL,
    PRIMARY KEY (meter_id, program_identifier, delivery_period, action_type, action_code)
);
CREATE INDEX obligations_open ON obligations
    (meter_id, program_identifier, delivery_period, action_type, action_code)
    WHERE status = 'open';

CREATE TABLE events (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    meter_id {key} NOT NULL,
    kind TEXT NOT NULL,
    occurred_at {ts} NOT NULL,
    initial {bool} NOT NULL,
    routed {bool} NOT NULL DEFAULT FALSE,
    payload {json} NOT NULL
);
CREATE INDEX events_pending ON events (seq) WHERE NOT routed;
CREATE INDEX events_meter ON events (meter_id, seq);

CREATE TABLE groups (
    key TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    receiver TEXT NOT NULL,
    group_values {json} NOT NULL,
    flush_at {ts} NOT NULL,
    last_flush_at {ts},
    pending {json} NOT NULL
);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    receiver TEXT NOT NULL,
    created_at {ts} NOT NULL,
    payload {json} NOT NULL
);

CREATE TABLE notification_events (
    event_id TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    PRIMARY KEY (event_id, notification_id)
);

CREATE TABLE notified (
    key_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    PRIMARY KEY (key_id, receiver)
);

CREATE TABLE deliveries (
    notification_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {ts},
    last_error TEXT,
    sent_at {ts},
    external_id TEXT,
    lease_owner TEXT,
    lease_until {ts},
    updated_at {ts} NOT NULL,
    PRIMARY KEY (notification_id, receiver)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries (status, receiver);

CREATE TABLE threads (
    receiver TEXT NOT NULL,
    key_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    PRIMARY KEY (receiver, key_id)
);

CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    matchers {json} NOT NULL,
    starts_at {ts} NOT NULL,
    ends_at {ts} NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at {ts}
);
CREATE INDEX silences_ends ON silences (ends_at);

CREATE TABLE silenced (
    event_id TEXT NOT NULL,
    silence_id TEXT NOT NULL,
    PRIMARY KEY (event_id, silence_id)
);

CREATE TABLE receivers_state (
    name TEXT PRIMARY KEY,
    disabled_reason TEXT NOT NULL,
    at {ts} NOT NULL
)
"""

_V2 = """
CREATE TABLE group_members (
    seq {seq},
    group_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    UNIQUE (group_key, event_id)
);
CREATE INDEX group_members_order ON group_members (group_key, seq);

INSERT INTO group_members (group_key, event_id)
    SELECT g.key, {pending_id} FROM groups AS g, {pending_ids}
    ORDER BY g.key, {pending_ord}
    ON CONFLICT DO NOTHING;
UPDATE groups SET pending = '[]'
"""
"""Group membership as rows, appended per event (`groups.pending` stays, always `[]`)."""

_V3 = """
ALTER TABLE deliveries ADD COLUMN steps {json};
CREATE INDEX deliveries_receiver_due ON deliveries (receiver, next_attempt_at) WHERE status = 'pending';

CREATE TABLE instances (
    owner TEXT PRIMARY KEY,
    started_at {ts} NOT NULL,
    last_seen {ts} NOT NULL
)
"""
"""Delivery isolation and recovery: the messages a notification already posted (`steps`), a
per-receiver due index (one worker per receiver), and the instances' heartbeats."""


_CONSOLE = """
CREATE TABLE console_audit (
    seq {seq},
    at {ts} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX console_audit_target ON console_audit (target, seq);

CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

CREATE INDEX obligations_by_deadline ON obligations
    (status, deadline, meter_id, program_identifier, delivery_period, action_type, action_code);
CREATE INDEX obligations_by_reference ON obligations (({meter_ref}));
CREATE INDEX obligations_by_region ON obligations (status, ({meter_region}), deadline);
CREATE INDEX obligations_by_type ON obligations (status, action_type, deadline);
CREATE INDEX deliveries_by_update ON deliveries (status, updated_at, notification_id);
CREATE INDEX notification_events_by_notification ON notification_events (notification_id)
"""
"""The web console: who did what (audit), browser sessions, and indexes for its filters and pages."""


_WEBHOOK_INBOX = """
CREATE TABLE webhook_inbox (
    event_id TEXT PRIMARY KEY,
    meter_id {key} NOT NULL,
    event_type TEXT NOT NULL,
    received_at {ts} NOT NULL,
    payload {json} NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {ts} NOT NULL,
    last_error TEXT,
    processed_at {ts}
);
CREATE INDEX webhook_inbox_due ON webhook_inbox (next_attempt_at) WHERE processed_at IS NULL;
CREATE INDEX webhook_inbox_meter ON webhook_inbox (meter_id, received_at)
"""
"""Leap's webhook events, stored before they are acknowledged, keyed by `webhook_event_id`."""


_EVENTS_BY_REFERENCE = """
ALTER TABLE notification_events ADD COLUMN position INTEGER
"""
"""A notification's events in order: new notifications link their events instead of copying them."""


_REMIND_AT = """
ALTER TABLE obligations ADD COLUMN remind_at {ts};
UPDATE obligations SET remind_at = last_seen WHERE status = 'open';
CREATE INDEX obligations_remind_at ON obligations (remind_at)
"""
"""When the reminders step next looks at an open obligation (NULL: not until it changes)."""


_OPEN_METERS = """
CREATE INDEX obligations_open_meters ON obligations (meter_id) WHERE status = 'open';
DROP INDEX obligations_open
"""
"""The open obligations' meters only (what a sweep and an incremental re-read list): the open
keys' index copied the primary key's five columns, and every index costs each write."""


_MEMBER_REFS = """
ALTER TABLE group_members ADD COLUMN kind TEXT;
ALTER TABLE group_members ADD COLUMN key_id TEXT
"""
"""What a flush needs of a member's event (its kind and obligation key id), kept in the member
row as routing appends it: a flush reads its members in order rather than each event at random
(NULL for members appended before: their events are read)."""


_METER_COLUMNS = """
{meter_columns}
"""
"""SQLite keeps an obligation's meter as an array without its keys (`rows.meter_row`), so the two
meter attributes the console's indexes read are columns; a row written before keeps its meter as
a JSON object and NULL in both, which the indexes read through (`COALESCE`). No row is rewritten: each moves on when
the poll next writes it. PostgreSQL keeps the meter as JSON and its indexes as they are."""


_LINKS_WITHOUT_ROWID = """
{links_without_rowid}
"""
"""On SQLite, the "told" rows and a notification's event links are tables clustered on their
key (`WITHOUT ROWID`): a row is kept once, in its key's B-tree, rather than in a row table and
again in its key's index (~100 B less per notified obligation, one B-tree less per write).
The rows are copied over in key order, once. PostgreSQL's tables stay as they are."""

_MEMBERS_BY_GROUP = """
{members_by_group}
"""
"""On SQLite, group members are clustered on (group key, arrival), as a flush reads them: a
member is kept in two B-trees rather than three (its row, its key, its group's order), and
its arrival number is the store's own (`SqliteStore._append_members`). PostgreSQL's stay."""

_PACKED_TIMES = """
{packed_times}
"""
"""On SQLite, an instant is 8 bytes that compare as the instants do (`rows.instant`) instead of
33 bytes of ISO text, in its row and the four indexes that hold its deadline or next look
(`bench.bench_cost.one(100_000, 1.0, "notify")`: 1,522 B per open obligation, 1,756 before).
Every stored instant is rewritten once, in place (the columns' declared type stays: SQLite
keeps a blob as it is given). PostgreSQL's are `TIMESTAMPTZ`."""

_LINKS_IN_ORDER = """
DROP INDEX notification_events_by_notification;
CREATE INDEX notification_events_by_notification ON notification_events (notification_id, position)
"""
"""A notification's event links in their order: a drain reads a claimed batch's links through
this index alone, in order (`sqlledger.LINKED_EVENTS`), where it looked up each link's row for
its position and sorted them."""

_PACKED_PAYLOADS = """
{packed_payloads}
"""
"""On PostgreSQL, an event's payload is bytes: its JSON packed whole (`packing.pack_whole`,
format 1), 311 B on average (`payload_bytes` of `bench.bench_cost.one(20_000, 1.0, "notify",
postgres=URL)`) where its JSON kept as written took ~1 KB; each event's row is written twice
(its insert, and the update that marks it routed). Payloads written before stay their JSON
text, as UTF-8 bytes, and read as they are. SQLite keeps any value in the column as it is given."""

_RETRY_FROM = """
ALTER TABLE deliveries ADD COLUMN retry_from {ts}
"""
"""When a delivery's retry budget starts, once a replay has started it again (NULL: when its
notification was created): a dead letter replayed gets its channel's whole budget."""

_NUMBERED_LINKS = """
{numbered_links}
"""
"""On SQLite, a notification's event links are three integers: the notification's number (a
column its table gains: an implicit row id may change at `VACUUM`), the event's position in it,
and the event's `seq`, clustered on the first two, indexed by the third; `notification_events`
is a view of them with the ids, which every read goes through. A link took ~170 B in its two
B-trees as two hex ids, and takes ~28 (`dbstat` over a `bench.bench_cost` `notify` state).
Links whose notification
or event is gone are dropped (no read could join them), as is a second link at the same place in
a notification; the few written before schema step 6, without a position, are numbered by event
id below zero. PostgreSQL's stay as they are."""

_DEADLINE_THEN_KEY_ID = """
DROP INDEX obligations_by_deadline;
CREATE INDEX obligations_by_deadline ON obligations (status, deadline, key_id)
"""
"""The console lists obligations by deadline, then by key id, where it listed them by their key's
five columns: its index keeps one 24-character id in place of the five (~115 B an obligation on
SQLite, ~47 now: `dbstat` over a `bench.bench_cost` `notify` state). A cursor given out before
is refused as any other it did not give out (the API answers 400, a page starts over)."""

_KEYED_BY_ID = """
{keyed_by_id}
"""
"""An obligation is found by its key id (a hash of its key), where its key's five columns were
its primary key, and its meter's obligations by `(meter_id, status)` (with the status: the open
ones' meters are listed from this index alone). On SQLite the table is rebuilt, once: its key's
index took ~103 B an obligation and its key id's takes ~35, and a row took ~372 B and takes
~220 (`dbstat` over the state of `bench.bench_cost`'s `notify` at 20,000 meters): a row holds
less (`rows`, `sqlite.obligation_row`): its description as the number of a row of `descriptions` (a few
texts, each kept once, where each obligation kept its own), its meter's array without the two
attributes its columns hold, and no `first_seen` or `last_seen` equal to `opened_at`. Rows
written before are read as they are and move on when the poll next writes them."""

MIGRATIONS: tuple[str, ...] = (
    _V1,
    _V2,
    _V3,
    _CONSOLE,
    _WEBHOOK_INBOX,
    _EVENTS_BY_REFERENCE,
    _REMIND_AT,
    _OPEN_METERS,
    _MEMBER_REFS,
    _METER_COLUMNS,
    _LINKS_WITHOUT_ROWID,
    _MEMBERS_BY_GROUP,
    _PACKED_TIMES,
    _LINKS_IN_ORDER,
    _PACKED_PAYLOADS,
    _RETRY_FROM,
    _NUMBERED_LINKS,
    _DEADLINE_THEN_KEY_ID,
    _KEYED_BY_ID,
)
"""Append-only. Each step is `;`-separated DDL with `{type}` placeholders."""

CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version) VALUES ($1)"


def expression(dialect: Dialect, name: str) -> str:
    """The dialect's SQL for `name`: an obligation's meter attribute as its index spells it
    (`ref`, `region`), or its meter's tags as a JSON array (`meter_tags`)."""
    return _TYPES[dialect][name]


def statements(step: int, dialect: Dialect) -> list[str]:
    """The DDL statements of migration `step` (1-based) for `dialect`."""
    sql = MIGRATIONS[step - 1].format(**_TYPES[dialect])
    return [s.strip() for s in sql.split(";") if s.strip()]


def too_old(found: int) -> str:
    return (
        f"the state store has schema version {found} and this alerter upgrades it to {len(MIGRATIONS)}: start "
        "`alerter run` (or `alerter once`) of this version first; a state command does not upgrade it "
        "beside a service of an earlier version"
    )


def too_new(found: int) -> str:
    return (
        f"the state store has schema version {found} but this alerter knows only up to "
        f"{len(MIGRATIONS)}; upgrade alerter"
    )
