"""The soak test's checks: what the service's state says it owes each receiver, what each receiver
got, what the simulator holds at the end, memory and descriptors over time, and the logs.

How the exactly-once check is made (three views, none trusting the service alone):

- Ledger against receivers (`deliveries`): the state store lists every notification, its
  receiver, its ledger status and the events it carries. Each receiver must have received each
  of those events exactly once: webhooks by event id in the body (and `webhook-id`), email by
  `Message-ID` (the notification id), Slack by the obligation id in each event section's
  `block_id` (Slack has no idempotency key, so a resend is a duplicate the channel shows).
  A second arrival under the same webhook-id or Message-ID is a *resend*, which the receiver's
  idempotency key absorbs; the same event under two notification ids is a *duplicate*.
- Receivers against the simulator (`end_state`): replaying what each receiver got (openings
  minus resolutions, per obligation) must give exactly the partner actions the simulator
  lists at the end, and the last deadline and description a webhook carried must be the
  simulator's. This catches a change the service never saw or never recorded.
- Operations against receivers (`implied`): each open, change and resolve the churn made in a
  calm window (no Leap outage, kill or database stop near it; the state lasted several polls)
  must have reached every receiver as its event. Operations near such faults may legitimately
  fold together (a change and a resolution seen in one poll are one resolution); they are
  counted, not checked.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from alerter.models import key_id
from alerter.store import rows
from bench.soak_churn import Op
from bench.soak_world import Receivers, Sample

SLACK_KINDS = {":red_circle:": "opened", ":large_orange_diamond:": "changed", ":alarm_clock:": "reminder",
               ":white_check_mark:": "resolved"}  # fmt: skip
"""The marker each event section of a Slack message starts with."""
RECEIVERS = ("slack", "email", "hook")


def epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime | bytes):  # PostgreSQL's, or SQLite's 8 bytes (`rows.instant`)
        at = rows.read_ts(value)
        assert at is not None
        return at.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# -- the state store -------------------------------------------------------------------------


class StateReader:
    """Read-only queries on the service's state (SQLite file or PostgreSQL schema)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:///"):
            return await asyncio.to_thread(self._sqlite, sql)
        base, _, query = self.url.partition("?schema=")
        conn = await asyncpg.connect(base, timeout=10, server_settings={"search_path": query or "public"})
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    def _sqlite(self, sql: str) -> list[tuple[Any, ...]]:
        path = self.url.removeprefix("sqlite:///")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql).fetchall())
        finally:
            conn.close()

    async def backlog(self) -> dict[str, Any]:
        """What is still on its way: unrouted events, grouped events, pending deliveries, last cycle."""
        [(unrouted,)] = await self.fetch("SELECT count(*) FROM events WHERE NOT routed")
        [(grouped,)] = await self.fetch("SELECT count(*) FROM group_members")
        pending = await self.fetch("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        last = await self.fetch("SELECT value FROM meta WHERE key = 'last_cycle_at'")
        return {
            "unrouted": int(unrouted),
            "grouped": int(grouped),
            "pending": int(pending[0][0]),
            "last_cycle_at": epoch(last[0][0]) if last else None,
        }


@dataclass
class Ledger:
    notifications: dict[str, dict[str, Any]]
    """id -> receiver, kind, created, status, attempts, sent, events (ids)."""
    events: dict[str, tuple[str, str]]
    """event id -> (kind, obligation id)."""

    @classmethod
    async def read(cls, state: StateReader) -> Ledger:
        rows = await state.fetch(
            "SELECT n.id, n.receiver, n.kind, n.created_at, d.status, d.attempts, d.sent_at"
            " FROM notifications n JOIN deliveries d ON d.notification_id = n.id AND d.receiver = n.receiver"
        )
        notes = {
            r[0]: {"receiver": r[1], "kind": r[2], "created": epoch(r[3]), "status": r[4], "attempts": int(r[5]),
                   "sent": epoch(r[6]), "events": []}
            for r in rows
        }  # fmt: skip
        for nid, eid in await state.fetch("SELECT notification_id, event_id FROM notification_events"):
            if nid in notes:
                notes[nid]["events"].append(eid)
        events = {r[0]: (str(r[1]), str(r[2])) for r in await state.fetch("SELECT id, kind, key_id FROM events")}
        return cls(notes, events)

    def of(self, receiver: str) -> dict[str, dict[str, Any]]:
        return {nid: n for nid, n in self.notifications.items() if n["receiver"] == receiver}


# -- what each receiver got ------------------------------------------------------------------


@dataclass
class Got:
    """One receiver's arrivals: (notification id or None, [(event id or None, kind, obligation id)])."""

    arrivals: list[tuple[str | None, list[tuple[str | None, str, str]]]] = field(default_factory=list)
    folded: int = 0
    unverified: int = 0
    values: dict[str, list[tuple[float, str, str, str]]] = field(default_factory=dict)
    """Webhook only: obligation id -> (occurred_at, kind, deadline, description) of each event."""


def got_webhook(receivers: Receivers, path: str) -> Got:
    got = Got()
    for r in receivers.hook.delivered():
        if r.path != path:
            continue
        got.unverified += 0 if r.verified else 1
        data = r.body.get("data", {})
        events: list[tuple[str | None, str, str]] = []
        for e in data.get("events", []):
            oid = str(e.get("obligation_id", ""))
            kind = str(e.get("type", "")).removeprefix("action.")
            events.append((str(e.get("id")), kind, oid))
            action = e.get("action", {})
            got.values.setdefault(oid, []).append(
                (epoch(e.get("occurred_at")) or 0.0, kind, action.get("enrollment_deadline_date_time") or "",
                 action.get("action_description") or "")
            )  # fmt: skip
        got.arrivals.append((r.headers.get("webhook-id"), events))
    return got


def got_email(receivers: Receivers, ledger: Ledger) -> Got:
    got = Got()
    for msg in receivers.smtp.handler.messages:
        nid = str(msg["Message-ID"] or "").strip("<>").removesuffix("@alerter")
        note = ledger.notifications.get(nid)
        events = [(eid, *ledger.events.get(eid, ("?", "?"))) for eid in (note["events"] if note else [])]
        got.arrivals.append((nid, events))
    return got


_MORE = re.compile(r"^\+(\d+) more")


def got_slack(receivers: Receivers) -> Got:
    got = Got()
    for call in receivers.slack.posted():
        events: list[tuple[str | None, str, str]] = []
        for block in call.args.get("blocks", []):
            block_id = str(block.get("block_id", ""))
            if block.get("type") == "section" and block_id.startswith("ob-"):
                marker = str(block["text"]["text"]).split(" ", 1)[0]
                events.append((None, SLACK_KINDS.get(marker, "?"), block_id[3:].rsplit("-", 1)[0]))
            for element in block.get("elements", []) if block.get("type") == "context" else []:
                if m := _MORE.match(str(element.get("text", ""))):
                    got.folded += int(m.group(1))
        got.arrivals.append((None, events))
    return got


# -- checks ----------------------------------------------------------------------------------


def deliveries(receiver: str, ledger: Ledger, got: Got) -> dict[str, Any]:
    """Ledger against what the receiver got; see the module docstring."""
    owed = ledger.of(receiver)
    status = Counter(n["status"] for n in owed.values())
    routed: dict[str, list[str]] = defaultdict(list)
    for nid, n in owed.items():
        for eid in n["events"]:
            routed[eid].append(nid)
    out: dict[str, Any] = {
        "notifications": len(owed),
        "ledger_status": dict(status),
        "events": len(routed),
        "routed_twice": sum(1 for nids in routed.values() if len(nids) > 1),
        "folded": got.folded,
        "unverified_signatures": got.unverified,
    }
    if receiver == "slack":  # no ids on the wire: count each obligation's event sections
        want = Counter(ledger.events[eid][1] for eid in routed if eid in ledger.events)
        have = Counter(oid for _, events in got.arrivals for _, _, oid in events)
        out |= {"missing": (want - have).total(), "duplicates": (have - want).total(), "resends": 0,
                "unexpected": 0, "messages": len(got.arrivals)}  # fmt: skip
        return out
    arrived = Counter(nid for nid, _ in got.arrivals)
    carriers: dict[str, set[str]] = defaultdict(set)
    for carrier, events in got.arrivals:
        for eid, _, _ in events:
            if eid is not None and carrier is not None:
                carriers[eid].add(carrier)
    out |= {
        "missing": sum(1 for eid in routed if eid not in carriers),
        "missing_notifications": sum(1 for nid in owed if nid not in arrived),
        "duplicates": sum(1 for nids in carriers.values() if len(nids) > 1),
        "resends": sum(n - 1 for n in arrived.values()),
        "unexpected": sum(1 for eid in carriers if eid not in routed) + sum(1 for nid in arrived if nid not in owed),
        "messages": len(got.arrivals),
    }
    return out


def _delivered_open(got: Got) -> dict[str, int]:
    balance: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for _, events in got.arrivals:
        for eid, kind, oid in events:
            if eid is not None and eid in seen:
                continue
            if eid is not None:
                seen.add(eid)
            balance[oid] += {"opened": 1, "resolved": -1}.get(kind, 0)
    return balance


def end_state(got: Got, truth: dict[str, tuple[str, str]], webhook: bool) -> dict[str, Any]:
    """Replaying the receiver's openings and resolutions gives the simulator's open actions."""
    balance = _delivered_open(got)
    told_open = {oid for oid, n in balance.items() if n > 0}
    out: dict[str, Any] = {
        "open_in_simulator": len(truth),
        "open_as_told": len(told_open),
        "never_told": sorted(set(truth) - told_open)[:20],
        "resolution_not_told": sorted(told_open - set(truth))[:20],
        "unbalanced": sum(1 for n in balance.values() if n not in (0, 1)),
    }
    out["mismatches"] = len(set(truth) ^ told_open) + out["unbalanced"]
    if webhook:
        stale = []
        for oid, (deadline, description) in truth.items():
            told = sorted(v for v in got.values.get(oid, []) if v[1] in ("opened", "changed"))
            if told and (epoch(told[-1][2]) != epoch(deadline) or told[-1][3] != description):
                stale.append(oid)
        out["stale_values"] = len(stale)
        out["mismatches"] += len(stale)
    return out


def implied(ops: list[Op], calm_ops: list[bool], gots: dict[str, Got]) -> dict[str, Any]:
    """Each calm op reached every receiver as its event (webhooks: with the op's values)."""
    want = {"open": "opened", "change": "changed", "resolve": "resolved"}
    seen = {name: {(kind, oid) for _, events in got.arrivals for _, kind, oid in events} for name, got in gots.items()}
    missing: dict[str, list[str]] = {name: [] for name in gots}
    for op, ok in zip(ops, calm_ops, strict=True):
        if not ok:
            continue
        oid = key_id(op.key)
        for name, got in gots.items():
            found = (want[op.kind], oid) in seen[name]
            if found and name == "hook" and op.kind == "change":
                found = any(
                    v[1] == "changed" and epoch(v[2]) == epoch(op.deadline) and v[3] == op.description
                    for v in got.values.get(oid, [])
                )
            if not found:
                missing[name].append(f"{op.kind} {'/'.join(op.key)}")
    return {
        "ops": dict(Counter(op.kind for op in ops)),
        "calm_ops": sum(calm_ops),
        "missing": {name: len(v) for name, v in missing.items()},
        "missing_examples": {name: v[:5] for name, v in missing.items() if v},
    }


def latency(ledger: Ledger, receiver: str, lease: float) -> dict[str, Any]:
    """Creation to delivery, from the ledger; how many waited about a lease or longer."""
    waits = sorted(n["sent"] - n["created"] for n in ledger.of(receiver).values() if n["sent"] and n["created"])
    if not waits:
        return {"sent": 0}
    attempts = Counter(n["attempts"] for n in ledger.of(receiver).values())
    return {
        "sent": len(waits),
        "p50_s": round(statistics.median(waits), 2),
        "p99_s": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 2),
        "max_s": round(waits[-1], 2),
        "over_lease": sum(1 for w in waits if w >= lease * 0.9),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
    }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per second."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def memory(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Flatness over the second half of the churn, within the last process that covers it."""
    lives: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        lives[s.life].append(s)
    per_life = {
        str(life): {"samples": len(ss), "rss_first_mb": round(ss[0].rss_mb, 1), "rss_last_mb": round(ss[-1].rss_mb, 1),
                    "rss_max_mb": round(max(s.rss_mb for s in ss), 1), "fds_max": max(s.fds for s in ss)}
        for life, ss in sorted(lives.items())
    }  # fmt: skip
    half = [s for s in samples if (start + end) / 2 <= s.at <= end]
    if half:
        half = [s for s in half if s.life == half[-1].life]
    step = max(1, len(samples) // 80)
    series = [[round(s.at - start), s.life, round(s.rss_mb, 1), s.fds] for s in samples[::step]]
    out: dict[str, Any] = {"lives": per_life, "window_s": 0, "samples": len(half), "series": series}
    if len(half) < 4:
        return out
    span = half[-1].at - half[0].at
    head, tail = half[: max(3, len(half) // 10)], half[-max(3, len(half) // 10) :]
    slope = _slope([(s.at, s.rss_mb) for s in half])
    out |= {
        "window_s": round(span),
        "rss_first_mb": round(statistics.median(s.rss_mb for s in head), 1),
        "rss_last_mb": round(statistics.median(s.rss_mb for s in tail), 1),
        "rss_slope_mb_per_hour": round(slope * 3600, 1),
        "rss_growth_fit_mb": round(slope * span, 1),
        "fds_first": int(statistics.median(s.fds for s in head)),
        "fds_last": int(statistics.median(s.fds for s in tail)),
        "fds_max": max(s.fds for s in half),
        "threads_max": max(s.threads for s in half),
    }
    return out


def scan_logs(paths: list[Path], secrets: dict[str, str]) -> dict[str, Any]:
    """Non-JSON lines, secrets, error lines and the commonest events across every life's log."""
    lines = non_json = errors = 0
    events: Counter[str] = Counter()
    found = dict.fromkeys(secrets, 0)
    examples: list[str] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            lines += 1
            for name, secret in secrets.items():
                found[name] += line.count(secret)
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                non_json += 1
                if len(examples) < 5:
                    examples.append(line[:200])
                continue
            events[str(entry.get("event"))] += 1
            errors += entry.get("level") in ("error", "critical")
    return {
        "lines": lines,
        "non_json_lines": non_json,
        "non_json_examples": examples,
        "error_lines": errors,
        "secrets_found": {k: v for k, v in found.items() if v},
        "top_events": dict(events.most_common(12)),
    }


def parse_metrics(text: str | None) -> dict[str, float]:
    """`alerter_*` samples of the last process's /metrics (counters restart with each process)."""
    out: dict[str, float] = {}
    for line in (text or "").splitlines():
        if line.startswith("alerter_") and not line.startswith(("alerter_cycle_duration", "alerter_source_request_d")):
            name, _, value = line.rpartition(" ")
            if name.endswith(("_created", "_bucket")) or "_created{" in name:
                continue
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
