"""The simulated portfolio's per-meter state: one byte per meter per column, plus `updated_at`.

Everything else about a generated meter follows from (seed, index); these columns are what
filters run over (query.py), what rendering reads (render.py) and what mutations change.
"""

from __future__ import annotations

import random
from array import array

from alerter.sim import catalog as c

_DAY_US = 86_400_000_000


class Columns:
    """Per-meter compact state: one byte per meter per column, plus `updated_at` in microseconds."""

    def __init__(self, size: int, action_rate: float, seed: int, anchor_us: int) -> None:
        rng = random.Random(seed)
        self.size = size
        pick = rng.choices

        def column(values: int, weights: tuple[int, ...]) -> bytearray:
            return bytearray(pick(range(values), weights, k=size))

        self.region = column(len(c.REGIONS), c.REGION_WEIGHTS)
        self.classification = column(len(c.CLASSIFICATIONS), c.CLASSIFICATION_WEIGHTS)
        self.meter_type = column(len(c.METER_TYPES), c.METER_TYPE_WEIGHTS)
        self.status = column(len(c.STATUSES), c.STATUS_WEIGHTS)
        self.customer_group = column(len(c.CUSTOMER_GROUPS), c.CUSTOMER_GROUP_WEIGHTS)
        self.tags = bytearray(pick(c.TAG_MASKS, c.TAG_MASK_WEIGHTS, k=size))
        # Load types: one primary, a second for about one meter in seven; a 16-bit mask in two bytes.
        first = pick(range(len(c.LOAD_TYPES)), c.LOAD_WEIGHTS, k=size)
        second = pick(range(len(c.LOAD_TYPES) * 7), k=size)
        loads = [1 << a | (1 << b if b < len(c.LOAD_TYPES) else 0) for a, b in zip(first, second, strict=True)]
        self.load_lo = bytearray(m & 0xFF for m in loads)
        self.load_hi = bytearray(m >> 8 for m in loads)
        rand = rng.random
        self.archived = bytearray(1 if rand() < 0.02 else 0 for _ in range(size))
        # Partner actions: action-type masks (two bytes) for a fraction `action_rate` of meters.
        self.act_lo = bytearray(size)
        self.act_hi = bytearray(size)
        self.has_partner = bytearray(size)
        weights = [a[3] for a in c.PARTNER_ACTIONS]
        type_bits = [c.ACTION_TYPES.index(a[0]) for a in c.PARTNER_ACTIONS]
        for i in range(size):
            if rand() < action_rate:
                n = 1 if rand() < 0.7 else 2
                mask = 0
                for k in pick(range(len(type_bits)), weights, k=n):
                    mask |= 1 << type_bits[k]
                self.set_actions(i, mask)
        # created_at rises with the index (enrolled over three years); updated_at lies between.
        self.created_start = anchor_us - 3 * 365 * _DAY_US
        self.created_span = 3 * 365 * _DAY_US - 30 * _DAY_US
        self.updated = array("q", (self.created_at(i) for i in range(size)))
        for i in range(size):
            self.updated[i] += int(rand() * (anchor_us - self.updated[i] - _DAY_US))
        order = sorted(range(size), key=self.updated.__getitem__)
        self.base_order = array("I", order)
        self.base_times = array("q", (self.updated[i] for i in order))
        self.touched: set[int] = set()

    def created_at(self, index: int) -> int:
        return self.created_start + index * self.created_span // max(self.size, 1)

    def created_index(self, us: int) -> int:
        """The first index created strictly after `us` (created_at is monotonic in the index)."""
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self.created_at(mid) <= us:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def set_actions(self, index: int, mask: int) -> None:
        self.act_lo[index] = mask & 0xFF
        self.act_hi[index] = mask >> 8
        self.has_partner[index] = 1 if mask else 0
