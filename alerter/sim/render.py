"""A generated meter's JSON text, from the columns and precomputed fragments, at a few microseconds a meter.

How this works: every field of a generated meter is a column value, an index-derived string
(`meter_id`, `site-…`, `conn-…`, the audit times) or a pick from precomputed JSON fragments: the
`program_enrollment` array is one of the region's serialized variants (records.py) chosen by a
64-bit hash of (seed, index), and required actions are a variant program's action opening joined to
an action's closing. One f-string assembles the object; no dict is built and nothing per meter is
kept. The text is exactly what `orjson.dumps` gives for the meter's dict (tests hold it to that), so
`Portfolio.record(index)` is its `orjson.loads`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import orjson

from alerter.sim import catalog as c
from alerter.sim import records as r

if TYPE_CHECKING:
    from alerter.sim.portfolio import Columns

_M64 = (1 << 64) - 1
_VARIANT_MASK = r.VARIANTS - 1
_LEAP_RATE = 82  # of 1024: about 8% of meters carry a Leap action


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _field(name: str, value: object) -> str:
    return f"{_dumps(name)}:{_dumps(value)},"


_REGION = tuple(_field("transmission_region", v) for v in c.REGIONS)
_CLASSIFICATION = tuple(_field("customer_classification", v) for v in c.CLASSIFICATIONS)
_LOADS = tuple(_field("load_types", [c.LOAD_TYPES[b] for b in c.bits(m)]) for m in range(1 << len(c.LOAD_TYPES)))
_METER_TYPE = tuple(_field("meter_type", v) for v in c.METER_TYPES)
_UTILITY_METER = c.METER_TYPES.index("UTILITY_METER")
_CONNECTION = '"conn-%s"'
_GROUP = tuple(_field("customer_group", v) for v in c.CUSTOMER_GROUPS)
_TAGS = tuple(_field("tags", [c.TAGS[b] for b in c.bits(m)]) for m in range(256))
_ARCHIVED = (_field("is_archived", False), _field("is_archived", True))
_CREATED_BY = tuple(_dumps(v) for v in c.CREATED_BY)
_STATUS = tuple(_field("global_enrollment_status", v) for v in c.STATUSES)


class Renderer:
    """Renders generated meters of one portfolio (overridden meters are the portfolio's business)."""

    def __init__(self, columns: Columns, seed: int, key: int, salt: int, anchor: datetime) -> None:
        self.columns = columns
        self.key = key
        self.salt = salt
        self.variants = r.draw(seed, anchor)

    def meter(self, index: int) -> str:
        """The JSON text of generated meter `index`."""
        cols = self.columns
        fmt_us = c.fmt_us
        h = c.meter_hash(index, self.salt)
        heads = (variant := self.variants[cols.region[index]][h & _VARIANT_MASK]).action_heads
        number = f"{index:07d}"
        created = fmt_us(cols.created_start + index * cols.created_span // cols.size)
        meter_type = cols.meter_type[index]
        partner = leap = ""
        mask = cols.act_lo[index] | cols.act_hi[index] << 8
        if mask:
            partner = ",".join(
                heads[(h >> (20 + 4 * k)) % len(heads)] + r.PARTNER_TAILS[bit] for k, bit in enumerate(c.bits(mask))
            )
        if (h >> 9) & 0x3FF < _LEAP_RATE:
            leap = heads[(h >> 40) % len(heads)] + r.LEAP_TAILS[(h >> 44) % len(r.LEAP_TAILS)]
        return (
            f'{{"meter_id":"{c.make_meter_id(index, self.key, h)}","partner_reference":"site-{number}",'
            f"{_REGION[cols.region[index]]}{_CLASSIFICATION[cols.classification[index]]}"
            f"{_LOADS[cols.load_lo[index] | cols.load_hi[index] << 8]}{_METER_TYPE[meter_type]}"
            f'"connection_references":[{_CONNECTION % number if meter_type == _UTILITY_METER else ""}],'
            f"{_GROUP[cols.customer_group[index]]}{_TAGS[cols.tags[index]]}{_ARCHIVED[cols.archived[index]]}"
            f'"audit":{{"created_by":{_CREATED_BY[index % 3]},"created_at":"{created}",'
            f'"updated_at":"{fmt_us(cols.updated[index])}"}},{_STATUS[cols.status[index]]}'
            '"participation_preferences":[{"participation_preference":"PARTICIPATE",'
            f'"start_time":"{created[:19]}Z","end_time":"{c.END_OF_TIME}"}}],'
            f'"program_enrollment":{variant.json},"required_actions":{{"partner":[{partner}],"leap":[{leap}]}}}}'
        )
