"""How one simulated meter's program enrollments and required actions are drawn from its random stream."""

from __future__ import annotations

import functools
import random
from datetime import datetime, timedelta
from typing import Any

from alerter.sim import catalog as c


def programs(rng: random.Random, region: str, anchor: datetime) -> list[dict[str, Any]]:
    """One to three program enrollments with monthly delivery periods near the anchor month."""
    choices = c.REGION_PROGRAMS[region]
    picked = rng.sample(choices, min(len(choices), 1 + (rng.random() < 0.4) + (rng.random() < 0.15)))
    out = []
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
            enrollment["market_group_id"] = uuid4(rng)
            enrollment["market_group_name"] = f"GRP{rng.randrange(1, 40)}_{prefix.split('-')[0]}"
        out.append({"enrollment": enrollment, "deadline": deadline})
    return out


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


def action(program: dict[str, Any], kind: str, code: str, text: str) -> dict[str, Any]:
    enrollment = program["enrollment"]
    return {
        "program_identifier": enrollment["program_identifier"],
        "delivery_period": enrollment["delivery_period"],
        "enrollment_deadline_date_time": program["deadline"],
        "action_type": kind,
        "action_description": text,
        "action_code": code,
    }
