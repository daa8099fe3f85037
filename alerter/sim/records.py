"""How a simulated meter's program enrollments and required actions are drawn — as ready JSON text.

How this works: a meter's `program_enrollment` array is one of `VARIANTS` combinations drawn per
region from the seed (one to three of the region's programs, each with a delivery month near the
anchor month, an enrollment status and, half the time, a market group). Each combination is
serialized once, when the portfolio is built, by orjson: the array's JSON text, and for each of its
programs the opening of a required-action object naming that program (program, delivery period,
deadline). A meter then costs a table lookup, and a required action a string concatenation with the
action's closing (`ACTION_TAILS`). Market groups are shared: one id per (program prefix, group
number), as meters of one group are on Leap.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from alerter.sim import catalog as c

VARIANTS = 512
"""Enrollment combinations per region (a power of two: a meter picks one with a bit mask)."""


@dataclass(frozen=True)
class Enrollments:
    """One combination of program enrollments, serialized."""

    json: str
    """The `program_enrollment` array."""
    action_heads: tuple[str, ...]
    """Per program: `{"program_identifier":…,"delivery_period":…,"enrollment_deadline_date_time":…,`."""


def draw(seed: int, anchor: datetime) -> tuple[tuple[Enrollments, ...], ...]:
    """`VARIANTS` combinations for each region, in `c.REGIONS` order; a function of the seed and anchor."""
    groups: dict[tuple[str, int], str] = {}
    out = []
    for region in c.REGIONS:
        rng = random.Random(f"{seed}:{region}")
        out.append(tuple(_combination(rng, region, anchor, seed, groups) for _ in range(VARIANTS)))
    return tuple(out)


def _combination(
    rng: random.Random, region: str, anchor: datetime, seed: int, groups: dict[tuple[str, int], str]
) -> Enrollments:
    choices = c.REGION_PROGRAMS[region]
    picked = rng.sample(choices, min(len(choices), 1 + (rng.random() < 0.4) + (rng.random() < 0.15)))
    enrollments: list[dict[str, Any]] = []
    heads: list[str] = []
    for program, prefix in picked:
        start, end, deadline, activation, label = period(anchor, rng.randrange(0, 4))
        enrollment: dict[str, Any] = {
            "program_identifier": program,
            "delivery_period": f"{prefix}_{label}",
            "delivery_period_start_date_time": start,
            "delivery_period_end_date_time": end,
            "enrollment_status": rng.choice(c.STATUSES),
            "enrollment_deadlines": [{"enrollment_deadline_date_time": deadline, "activation_date_time": activation}],
        }
        if rng.random() < 0.5:
            number = rng.randrange(1, 40)
            group = groups.get((prefix, number))
            if group is None:
                group = groups[prefix, number] = uuid4(random.Random(f"{seed}:{prefix}:{number}"))
            enrollment["market_group_id"] = group
            enrollment["market_group_name"] = f"GRP{number}_{prefix.split('-')[0]}"
        enrollments.append(enrollment)
        head = {
            "program_identifier": program,
            "delivery_period": enrollment["delivery_period"],
            "enrollment_deadline_date_time": deadline,
        }
        heads.append(orjson.dumps(head)[:-1].decode() + ",")
    return Enrollments(orjson.dumps(enrollments).decode(), tuple(heads))


@functools.lru_cache(maxsize=64)
def period(anchor: datetime, offset: int) -> tuple[str, str, str, str, str]:
    """A monthly delivery period `offset` months after the anchor: start, end, deadline, activation, label."""
    month = anchor.month - 1 + offset
    start = anchor.replace(year=anchor.year + month // 12, month=month % 12 + 1, hour=8)
    end = (start + timedelta(days=32)).replace(day=1)
    deadline = start - timedelta(days=2)
    return (
        c.fmt_s(c.to_us(start)),
        c.fmt_s(c.to_us(end)),
        c.fmt_ms(c.to_us(deadline)),
        c.fmt_ms(c.to_us(start)),
        f"{start.year}_{c.MONTHS[start.month - 1]}",
    )


def uuid4(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _tail(kind: str, text: str, code: str) -> str:
    return orjson.dumps({"action_type": kind, "action_description": text, "action_code": code})[1:].decode()


PARTNER_TAILS: tuple[str, ...] = tuple(
    next((_tail(kind, text, code) for kind, code, text, _ in c.PARTNER_ACTIONS if kind == action_type), "")
    for action_type in c.ACTION_TYPES
)
"""Per action-type bit: the closing `"action_type":…,"action_description":…,"action_code":…}` of a
partner action ("" for the types partner actions are never drawn with)."""
LEAP_TAILS: tuple[str, ...] = tuple(_tail(kind, text, code) for kind, code, text in c.LEAP_ACTIONS)
