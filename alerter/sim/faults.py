"""Fault injection: the next N requests to the Leap API answer 429, 500, 503, slowly, or corrupted."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

KINDS = frozenset({"429", "500", "502", "503", "504", "401", "403", "slow", "invalid_record", "disconnect"})
INVALID_MODES = frozenset({"missing_meter_id", "bad_action_type"})


@dataclass
class Fault:
    """One injected misbehaviour, used by the next `times` requests.

    kinds: `429` (with Retry-After), `500` (a bare JSON string body, as Leap documents), `502`,
    `503`, `504` (HTML bodies, as a load balancer sends), `401`, `403`, `slow` (answer normally after
    `delay` seconds), `invalid_record` (one record of the page breaks the definition: `invalid` is
    `missing_meter_id` or `bad_action_type`), `disconnect` (close the connection without answering).
    """

    kind: str
    times: int = 1
    retry_after: int = 1
    delay: float = 1.0
    invalid: str = "missing_meter_id"
    record: int = 0
    """For `invalid_record`: which record of the page to break."""


class Faults:
    """A queue of faults; each Leap API request consumes one use of the head fault."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def add(
        self,
        kind: str | int,
        times: int = 1,
        *,
        retry_after: int = 1,
        delay: float = 1.0,
        invalid: str = "missing_meter_id",
        record: int = 0,
    ) -> Fault:
        kind = str(kind)
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(sorted(KINDS))}")
        if invalid not in INVALID_MODES:
            raise ValueError(f"unknown invalid mode {invalid!r}; one of {', '.join(sorted(INVALID_MODES))}")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = Fault(kind, times, retry_after, delay, invalid, record)
        self._queue.append(fault)
        return fault

    def take(self) -> Fault | None:
        if not self._queue:
            return None
        head = self._queue[0]
        head.times -= 1
        if head.times <= 0:
            self._queue.popleft()
        return head

    def clear(self) -> None:
        self._queue.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self._queue]


def corrupt(meter: dict[str, Any], mode: str) -> dict[str, Any]:
    """A copy of a meter that fails the definition in the given way."""
    broken = dict(meter)
    if mode == "missing_meter_id":
        broken.pop("meter_id", None)
        return broken
    actions = meter["required_actions"]
    partner = [dict(a) for a in actions["partner"]] or [
        {
            "program_identifier": "CCA",
            "delivery_period": "CAISO-CCA_2026_DEC",
            "enrollment_deadline_date_time": "2026-11-29T08:00:00.000Z",
            "action_description": "End customer must re-authorize meter.",
            "action_code": "AUTH_0001",
        }
    ]
    partner[0]["action_type"] = 42
    broken["required_actions"] = {**actions, "partner": partner}
    return broken
