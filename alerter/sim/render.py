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

from collections.abc import Iterable
from datetime import datetime

import orjson

from alerter.sim import catalog as c
from alerter.sim import records as r
from alerter.sim.columns import Columns

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
_MIX32 = c.MIX32
_LOW32 = c.LOW32
_UUID4_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)
_UUID4_SET = 0x4000 << 64 | 0x8000 << 48
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
_END_TO_PROGRAMS = f'","end_time":"{c.END_OF_TIME}"}}],"program_enrollment":'
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
        return self.meters((index,))[0]

    def meters(self, indices: Iterable[int]) -> list[str]:
        """The JSON texts of these generated meters (one loop with everything it reads in locals)."""
        cols = self.columns
        region, classification, meter_type_col = cols.region, cols.classification, cols.meter_type
        load_lo, load_hi, group, tags, archived, status = (
            cols.load_lo,
            cols.load_hi,
            cols.customer_group,
            cols.tags,
            cols.archived,
            cols.status,
        )
        act_lo, act_hi, updated = cols.act_lo, cols.act_hi, cols.updated
        created_start, created_span, size = cols.created_start, cols.created_span, max(cols.size, 1)
        variants, salt, key, dates = self.variants, self.salt, self.key, c.DATES
        minutes, seconds = c.HOURS_MINUTES, c.SECONDS
        partner_tails, leap_tails, bits = r.PARTNER_TAILS, r.LEAP_TAILS, c.bits
        out = []
        for index in indices:
            # The meter's 64 hashed bits (c.meter_hash) and its id (c.make_meter_id), inlined.
            h = (index + salt) * 0x9E3779B97F4A7C15 & _M64
            h = (h ^ h >> 30) * 0xBF58476D1CE4E5B9 & _M64
            h = (h ^ h >> 27) * 0x94D049BB133111EB & _M64
            h ^= h >> 31
            head = (index ^ key) * _MIX32 & _M32
            x = f"{((head ^ head >> 16) << 96 | h << 32 | (h * _LOW32 & _M64) >> 32) & _UUID4_CLEAR | _UUID4_SET:032x}"
            heads = (variant := variants[region[index]][h & _VARIANT_MASK]).action_heads
            number = f"{index:07d}"
            second, fraction = divmod(created_start + index * created_span // size, 1_000_000)
            day, second = divmod(second, 86_400)
            created = f"{dates[day]}T{minutes[second // 60]}:{seconds[second % 60]}"
            created_us = f"{created}.{fraction:06d}Z"
            second, fraction = divmod(updated[index], 1_000_000)
            day, second = divmod(second, 86_400)
            meter_type = meter_type_col[index]
            partner = leap = ""
            mask = act_lo[index] | act_hi[index] << 8
            if mask:
                partner = ",".join(
                    heads[(h >> (20 + 4 * k)) % len(heads)] + partner_tails[bit] for k, bit in enumerate(bits(mask))
                )
            if (h >> 9) & 0x3FF < _LEAP_RATE:
                leap = heads[(h >> 40) % len(heads)] + leap_tails[(h >> 44) % len(leap_tails)]
            out.append(
                f'{{"meter_id":"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}","partner_reference":"site-{number}",'
                f"{_REGION[region[index]]}{_CLASSIFICATION[classification[index]]}"
                f"{_LOADS[load_lo[index] | load_hi[index] << 8]}{_METER_TYPE[meter_type]}"
                f'"connection_references":[{_CONNECTION % number if meter_type == _UTILITY_METER else ""}],'
                f"{_GROUP[group[index]]}{_TAGS[tags[index]]}{_ARCHIVED[archived[index]]}"
                f'"audit":{{"created_by":{_CREATED_BY[index % 3]},"created_at":"{created_us}",'
                f'"updated_at":"{dates[day]}T{minutes[second // 60]}:{seconds[second % 60]}.{fraction:06d}Z"}},'
                f"{_STATUS[status[index]]}"
                '"participation_preferences":[{"participation_preference":"PARTICIPATE",'
                f'"start_time":"{created}Z{_END_TO_PROGRAMS}{variant.json},"required_actions":{{"partner":[{partner}],"leap":[{leap}]}}}}'
            )
        return out
