"""Fault injection: the next N requests to the Leap API answer 429, 500, 503, slowly, or corrupted."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

KINDS = frozenset(
    {"429", "500", "502", "503", "504", "401", "403", "slow", "invalid_record", "disconnect", "not_found", "skipped"}
)
INVALID_MODES = frozenset(
    {
        "missing_meter_id",
        "bad_action_type",
        "not_an_object",
        "no_required_actions",
        "null_required_actions",
        "naive_deadline",
        "date_deadline",
        "naive_updated_at",
    }
)


@dataclass
class Fault:
    """One injected misbehaviour, used by the next `times` requests.

    kinds: `429` (with Retry-After), `500` (a bare JSON string body, as Leap documents), `502`,
    `503`, `504` (HTML bodies, as a load balancer sends), `401`, `403`, `slow` (answer normally after
    `delay` seconds), `invalid_record` (records of the page break the definition, see below),
    `disconnect` (close the connection without answering), `not_found` (a search naming `meter_id`
    among its `meter_ids` answers 404 "Meter not found" naming it, as Leap's definition of the
    search documents; one that does not name it is answered as usual), `skipped` (a search that
    does not name meters leaves `meter_id` out of its page, as a page shifting under a sweep does;
    one naming it by `meter_ids` lists it).

    `invalid_record` breaks `count` records from the page's `record`-th on, or, with `meter_id`,
    that meter's record wherever it is served (search pages and `GET`); `invalid` says how:
    - `missing_meter_id`: the record has no `meter_id`;
    - `not_an_object`: the record is a JSON string instead of an object (no meter id either);
    - `bad_action_type`: a partner action's `action_type` is a number (one is added when the
      meter lists none); the `meter_id` stays readable;
    - `no_required_actions`, `null_required_actions`: the record has no `required_actions`, or
      `null` there; the `meter_id` stays readable;
    - `naive_deadline`: every partner deadline loses its UTC offset (`2027-03-01T08:00:00.000`);
    - `date_deadline`: every partner deadline is a date (`2027-03-01`);
    - `naive_updated_at`: `audit.updated_at` loses its UTC offset.
    The last three break only the letter of the definition: alerter reads them as UTC.
    """

    kind: str
    times: int = 1
    retry_after: int = 1
    delay: float = 1.0
    invalid: str = "missing_meter_id"
    record: int = 0
    """For `invalid_record`: the first record of the page to break."""
    count: int = 1
    """For `invalid_record`: how many consecutive records to break."""
    meter_id: str | None = None
    """For `invalid_record`: break this meter's record (wherever served) instead; for
    `not_found`, the meter a search is answered 404 for; for `skipped`, the meter left out."""

    def breaks(self, index: int, meter: Any) -> bool:
        """Whether the `index`-th record of a page (the meter's JSON object) is to be broken."""
        if self.meter_id is not None:
            return isinstance(meter, dict) and meter.get("meter_id") == self.meter_id
        return self.record <= index < self.record + self.count


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
        count: int = 1,
        meter_id: str | None = None,
    ) -> Fault:
        kind = str(kind)
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(sorted(KINDS))}")
        if invalid not in INVALID_MODES:
            raise ValueError(f"unknown invalid mode {invalid!r}; one of {', '.join(sorted(INVALID_MODES))}")
        if times < 1 or count < 1:
            raise ValueError("times and count must be at least 1")
        fault = Fault(kind, times, retry_after, delay, invalid, record, count, meter_id)
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


def corrupt(meter: dict[str, Any], mode: str) -> Any:
    """A copy of a meter that fails the definition in the given way."""
    broken = dict(meter)
    if mode == "missing_meter_id":
        broken.pop("meter_id", None)
        return broken
    if mode == "not_an_object":
        return "this is not a meter"
    if mode == "no_required_actions":
        broken.pop("required_actions", None)
        return broken
    if mode == "null_required_actions":
        broken["required_actions"] = None
        return broken
    if mode == "naive_updated_at":
        broken["audit"] = {**meter["audit"], "updated_at": _naive(meter["audit"]["updated_at"])}
        return broken
    actions = meter["required_actions"]
    if mode in ("naive_deadline", "date_deadline"):
        shorten = _naive if mode == "naive_deadline" else _date
        partner = [_with_deadline(a, shorten) for a in actions["partner"]]
        broken["required_actions"] = {**actions, "partner": partner}
        return broken
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


def _with_deadline(action: dict[str, Any], shorten: Callable[[str], str]) -> dict[str, Any]:
    deadline = action.get("enrollment_deadline_date_time")
    return {**action, "enrollment_deadline_date_time": shorten(deadline)} if isinstance(deadline, str) else action


def _naive(text: str) -> str:
    """An RFC 3339 time without its offset (`Z` or `±hh:mm`)."""
    if text.endswith(("Z", "z")):
        return text[:-1]
    return text[:-6] if len(text) > 19 and text[-6] in "+-" and text[-3] == ":" else text


def _date(text: str) -> str:
    return text[:10]
