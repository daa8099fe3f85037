"""A seeded portfolio of simulated meters: compact columns, lazy records, a clock and mutations.

How this works: every meter is a pure function of (seed, index) — `json(index)` renders its JSON
text on demand from a few byte columns and precomputed fragments (render.py), and `record(index)`
is that text parsed. The columns (region, type, status, tags, archived, partner action types,
...) and `updated_at` are the only per-meter state kept for all N meters, so filters can run over
them without materializing a meter (see query.py). A mutated meter is materialized once into
`overrides` (a dict, served through orjson), its columns updated, and its `audit.updated_at` set to
the simulator clock; `version` counts mutations so cached query results go stale.
"""

from __future__ import annotations

import copy
import random
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from alerter.sim import catalog as c
from alerter.sim import churn
from alerter.sim.churn import Change
from alerter.sim.columns import Columns
from alerter.sim.render import Renderer

Meter = dict[str, Any]
_DAY_US = 86_400_000_000


class Portfolio:
    """N simulated meters, a clock (real UTC time plus an offset) and the mutations tests drive."""

    def __init__(
        self,
        meters: int = 1000,
        *,
        action_rate: float = 0.05,
        seed: int = 1,
        anchor: datetime | None = None,
    ) -> None:
        if not 0 <= meters < 1 << 32:
            raise ValueError("meters must be between 0 and 2**32")
        self.size = meters
        self.seed = seed
        self.action_rate = action_rate
        self.offset = timedelta()
        anchor = (anchor or datetime.now(UTC)).astimezone(UTC)
        self.anchor = anchor.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self._key = c.seed_key(seed)
        self._salt = c.seed_salt(seed)
        self.columns = Columns(meters, action_rate, seed, c.to_us(anchor))
        self._renderer = Renderer(self.columns, seed, self._key, self._salt, self.anchor)
        self.overrides: dict[int, Meter] = {}
        self.version = 0
        self.changed = array("I")
        """The meter index of each mutation, in order: `changed[v:]` are the meters changed since version v."""
        self._churn = random.Random(seed ^ 0x5EED)
        self._partner_churn = random.Random(seed ^ 0xAC7)
        self._turn = 0

    # --- clock ---------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> datetime:
        self.offset += timedelta(seconds=seconds)
        return self.now()

    # --- reading ---------------------------------------------------------------------------------

    def meter_id(self, index: int) -> str:
        return c.make_meter_id(index, self._key, c.meter_hash(index, self._salt))

    def index_of(self, meter_id: str) -> int | None:
        return c.meter_index(meter_id, self._key, self._salt, self.size)

    def record(self, index: int) -> Meter:
        """The meter's JSON object as Leap would serve it (do not mutate the result)."""
        meter = self.overrides.get(index)
        return meter if meter is not None else orjson.loads(self._renderer.meter(index))

    def json(self, index: int) -> str:
        """The meter's JSON text as served: rendered from fragments, or an overridden meter's dict dumped."""
        meter = self.overrides.get(index)
        return self._renderer.meter(index) if meter is None else orjson.dumps(meter).decode()

    def json_array(self, indices: Sequence[int]) -> str:
        """The JSON array of these meters, as served in a page."""
        overrides = self.overrides
        if not overrides or not any(map(overrides.__contains__, indices)):
            return f"[{','.join(self._renderer.meters(indices))}]"
        texts = self._renderer.meters([i for i in indices if i not in overrides])
        texts.reverse()
        merged = [texts.pop() if (m := overrides.get(i)) is None else orjson.dumps(m).decode() for i in indices]
        return f"[{','.join(merged)}]"

    def meter(self, meter_id: str) -> Meter:
        index = self._require(meter_id)
        return self.record(index)

    def with_partner_actions(self) -> Iterator[str]:
        """Meter ids that currently have partner actions, in index order."""
        has = self.columns.has_partner
        return (self.meter_id(i) for i in range(self.size) if has[i])

    # --- mutations -------------------------------------------------------------------------------

    def open_action(
        self,
        meter_id: str,
        *,
        action_type: str = "IS_AUTHORIZED",
        action_code: str | None = None,
        action_description: str | None = None,
        program_identifier: str | None = None,
        delivery_period: str | None = None,
        enrollment_deadline_date_time: str | datetime | None = None,
    ) -> dict[str, Any]:
        """Adds a partner action (defaults: the catalog's code and text, the meter's first program)."""
        index = self._require(meter_id)
        meter = self._materialize(index)
        known = next((a for a in c.PARTNER_ACTIONS if a[0] == action_type), None)
        program = meter["program_enrollment"][0]
        deadline = enrollment_deadline_date_time or program["enrollment_deadlines"][0]["enrollment_deadline_date_time"]
        action = {
            "program_identifier": program_identifier or program["program_identifier"],
            "delivery_period": delivery_period or program["delivery_period"],
            "enrollment_deadline_date_time": _wire_time(deadline),
            "action_type": action_type,
            "action_description": action_description or (known[2] if known else action_type),
            "action_code": action_code or (known[1] if known else "PART_0001"),
        }
        meter["required_actions"]["partner"].append(action)
        self._commit(index, meter)
        return dict(action)

    def change_action(
        self,
        meter_id: str,
        action_code: str | None = None,
        *,
        action_type: str | None = None,
        program_identifier: str | None = None,
        delivery_period: str | None = None,
        description: str | None = None,
        deadline: str | datetime | None = None,
    ) -> dict[str, Any]:
        """Changes the description and/or deadline of the first matching partner action."""
        index = self._require(meter_id)
        meter = self._materialize(index)
        match = _select(meter, action_code, action_type, program_identifier, delivery_period)
        if not match:
            raise KeyError(f"no matching partner action on meter {meter_id}")
        action = match[0]
        if description is not None:
            action["action_description"] = description
        if deadline is not None:
            action["enrollment_deadline_date_time"] = _wire_time(deadline)
        self._commit(index, meter)
        return dict(action)

    def resolve_action(
        self,
        meter_id: str,
        action_code: str | None = None,
        *,
        action_type: str | None = None,
        program_identifier: str | None = None,
        delivery_period: str | None = None,
    ) -> list[dict[str, Any]]:
        """Removes the matching partner actions (all of them when nothing narrows the match)."""
        index = self._require(meter_id)
        meter = self._materialize(index)
        match = _select(meter, action_code, action_type, program_identifier, delivery_period)
        if not match:
            raise KeyError(f"no matching partner action on meter {meter_id}")
        partner = meter["required_actions"]["partner"]
        meter["required_actions"]["partner"] = [a for a in partner if all(a is not m for m in match)]
        self._commit(index, meter)
        return [dict(a) for a in match]

    def archive(self, meter_id: str, archived: bool = True) -> None:
        index = self._require(meter_id)
        meter = self._materialize(index)
        meter["is_archived"] = archived
        self._commit(index, meter)

    def touch(self, meter_id: str) -> None:
        """Bumps `audit.updated_at` without any other change."""
        index = self._require(meter_id)
        self._commit(index, self._materialize(index))

    def random_churn(self, n: int) -> list[Change]:
        """Opens, changes and resolves partner actions of random meters (and now and then archives one).

        Deadlines it opens or moves to lie days to weeks ahead. Most meters have no action, so most
        of these changes open one: `partner_churn` is the lively kind.
        """
        rng = self._churn
        changes: list[Change] = []
        if self.size == 0:
            return changes
        for _ in range(n):
            index = rng.randrange(self.size)
            meter_id = self.meter_id(index)
            partner = self.record(index)["required_actions"]["partner"]
            roll = rng.random()
            if partner and roll < 0.45:
                gone = self.resolve_action(meter_id, partner[0]["action_code"])
                changes.append(Change("resolved", meter_id, gone[0]["action_type"], gone[0]["action_code"]))
            elif partner and roll < 0.7:
                a = partner[0]
                now_us = c.to_us(self.now())
                deadline = churn.moved_deadline(a.get("enrollment_deadline_date_time"), now_us, rng)
                self.change_action(meter_id, a["action_code"], deadline=deadline)
                changes.append(Change("changed", meter_id, a["action_type"], a["action_code"]))
            elif roll < 0.97:
                kind, code, _, _ = rng.choices(c.PARTNER_ACTIONS, [a[3] for a in c.PARTNER_ACTIONS])[0]
                if any(a["action_type"] == kind and a["action_code"] == code for a in partner):
                    self.touch(meter_id)
                    changes.append(Change("touched", meter_id))
                    continue
                deadline = churn.future_deadline(c.to_us(self.now()), rng)
                self.open_action(meter_id, action_type=kind, enrollment_deadline_date_time=deadline)
                changes.append(Change("opened", meter_id, kind, code))
            else:
                self.archive(meter_id)
                changes.append(Change("archived", meter_id))
        return changes

    def partner_churn(self, n: int) -> list[Change]:
        """`n` changes a partner would see, in turn: open a new action (deadline days to weeks ahead),
        move an open action's deadline, resolve an open action (see churn.py)."""
        rng = self._partner_churn
        changes: list[Change] = []
        for _ in range(n if self.size else 0):
            kind = churn.KINDS[self._turn % len(churn.KINDS)]
            self._turn += 1
            index = None if kind == "opened" else churn.meter_with_actions(self, rng)
            if index is None:
                changes.append(self._open_somewhere(rng))
                continue
            meter_id = self.meter_id(index)
            a = rng.choice(self.record(index)["required_actions"]["partner"])
            which = {k: a[k] for k in ("action_type", "program_identifier", "delivery_period")}
            if kind == "changed":
                deadline = churn.moved_deadline(a.get("enrollment_deadline_date_time"), c.to_us(self.now()), rng)
                self.change_action(meter_id, a["action_code"], deadline=deadline, **which)
            else:
                self.resolve_action(meter_id, a["action_code"], **which)
            changes.append(Change(kind, meter_id, a["action_type"], a["action_code"]))
        return changes

    def _open_somewhere(self, rng: random.Random) -> Change:
        """Opens a catalog action on a random unarchived meter that does not list it yet."""
        weights = [a[3] for a in c.PARTNER_ACTIONS]
        for _ in range(1000):
            index = rng.randrange(self.size)
            kind, code, _, _ = rng.choices(c.PARTNER_ACTIONS, weights)[0]
            partner = self.record(index)["required_actions"]["partner"]
            if self.columns.archived[index] or any(a["action_type"] == kind for a in partner):
                continue
            meter_id = self.meter_id(index)
            deadline = churn.future_deadline(c.to_us(self.now()), rng)
            self.open_action(meter_id, action_type=kind, enrollment_deadline_date_time=deadline)
            return Change("opened", meter_id, kind, code)
        meter_id = self.meter_id(rng.randrange(self.size))
        self.touch(meter_id)
        return Change("touched", meter_id)

    # --- internals -------------------------------------------------------------------------------

    def _require(self, meter_id: str) -> int:
        index = self.index_of(meter_id)
        if index is None:
            raise KeyError(f"unknown meter {meter_id}")
        return index

    def _materialize(self, index: int) -> Meter:
        return copy.deepcopy(self.record(index))

    def _commit(self, index: int, meter: Meter) -> None:
        cols = self.columns
        now_us = max(c.to_us(self.now()), cols.updated[index] + 1)
        meter["audit"]["updated_at"] = c.fmt_us(now_us)
        mask = 0
        for action in meter["required_actions"]["partner"]:
            if action.get("action_type") in c.ACTION_TYPES:
                mask |= 1 << c.ACTION_TYPES.index(action["action_type"])
        cols.set_actions(index, mask)
        if meter["required_actions"]["partner"] and not mask:
            cols.has_partner[index] = 1  # only unknown action types: still needs the partner
        cols.archived[index] = 1 if meter["is_archived"] else 0
        cols.updated[index] = now_us
        cols.touched.add(index)
        self.overrides[index] = meter
        self.version += 1
        self.changed.append(index)


def _select(
    meter: Meter,
    action_code: str | None,
    action_type: str | None,
    program_identifier: str | None,
    delivery_period: str | None,
) -> list[dict[str, Any]]:
    wanted = {
        "action_code": action_code,
        "action_type": action_type,
        "program_identifier": program_identifier,
        "delivery_period": delivery_period,
    }
    return [
        a for a in meter["required_actions"]["partner"] if all(v is None or a.get(k) == v for k, v in wanted.items())
    ]


def _wire_time(value: str | datetime) -> str:
    return c.fmt_ms(c.to_us(value)) if isinstance(value, datetime) else value
