"""What the soak test does to the world while the service runs: churn through the simulator's
control API, and faults on a schedule (Leap errors and outages, receivers down, a SIGKILL, a
PostgreSQL stop).

How this works: `Churn` keeps its own model of every open partner action (seeded from the
simulator's portfolio) and, each step, opens a new action (a unique `SOAK_nnnnn` code), changes
the deadline and description of one, or resolves one, leaning towards opening while fewer are
open than at the start. An action is changed or resolved only when its last operation is at
least `spacing` old, so that each state stays visible for several polls. Every operation is
logged with its wall-clock time. `Scenes` runs the faults and logs when each was active, so the
checks know which operations happened in calm windows.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from alerter.models import ObligationKey
from alerter.sim import Portfolio
from alerter.sim import catalog as c
from bench.soak_world import PostgresControl, Receivers, ServiceProcess

PARTNER_TYPES = tuple(dict.fromkeys(a[0] for a in c.PARTNER_ACTIONS))


@dataclass(frozen=True)
class Op:
    """One change the churn made: `open`, `change` or `resolve`, and the action's values after it."""

    at: float
    kind: str
    key: ObligationKey
    description: str = ""
    deadline: str = ""


@dataclass
class Action:
    description: str
    deadline: str
    last_op: float


def _key(meter_id: str, a: dict[str, Any]) -> ObligationKey:
    return (meter_id, a["program_identifier"], a["delivery_period"], a["action_type"], a["action_code"])


def open_actions(portfolio: Portfolio) -> dict[ObligationKey, dict[str, Any]]:
    """Every partner action of an unarchived meter: what the service should hold open."""
    out: dict[ObligationKey, dict[str, Any]] = {}
    for i in range(portfolio.size):
        record = portfolio.record(i)
        if record["is_archived"]:
            continue
        for a in record["required_actions"]["partner"]:
            out.setdefault(_key(record["meter_id"], a), a)
    return out


class Churn:
    def __init__(self, portfolio: Portfolio, sim_url: str, rng: random.Random, spacing: float) -> None:
        self.sim_url, self.rng, self.spacing = sim_url, rng, spacing
        self.meters = [portfolio.meter_id(i) for i in range(portfolio.size) if not portfolio.record(i)["is_archived"]]
        self.open = {
            k: Action(a["action_description"], a["enrollment_deadline_date_time"], 0.0)
            for k, a in open_actions(portfolio).items()
        }
        self.target = max(20, len(self.open))
        self.ops: list[Op] = []
        self.errors: list[str] = []
        self._n = 0

    async def _post(self, session: aiohttp.ClientSession, meter_id: str, op: str, body: dict[str, Any]) -> Any:
        async with session.post(f"{self.sim_url}/_sim/meters/{meter_id}/{op}", json=body) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{op} {meter_id}: HTTP {r.status} {data}")
            return data["result"]

    async def step(self, session: aiohttp.ClientSession) -> None:
        now = time.time()
        ready = [k for k, a in self.open.items() if now - a.last_op >= self.spacing]
        lean = (self.target - len(self.open)) / self.target
        p_open = min(0.9, max(0.1, 0.34 + 0.5 * lean))
        roll = self.rng.random()
        self._n += 1
        try:
            if roll < p_open or not ready:
                await self._open(session, now)
            elif roll < p_open + (1 - p_open) / 2:
                await self._change(session, self.rng.choice(ready), now)
            else:
                await self._resolve(session, self.rng.choice(ready), now)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as err:
            self.errors.append(str(err))

    async def _open(self, session: aiohttp.ClientSession, now: float) -> None:
        meter_id = self.rng.choice(self.meters)
        body = {"action_type": self.rng.choice(PARTNER_TYPES), "action_code": f"SOAK_{self._n:05d}"}
        a = await self._post(session, meter_id, "open", body)
        key = _key(meter_id, a)
        self.open[key] = Action(a["action_description"], a["enrollment_deadline_date_time"], now)
        self.ops.append(Op(now, "open", key, a["action_description"], a["enrollment_deadline_date_time"]))

    @staticmethod
    def _narrow(key: ObligationKey) -> dict[str, str]:
        return {"program_identifier": key[1], "delivery_period": key[2], "action_type": key[3], "action_code": key[4]}

    async def _change(self, session: aiohttp.ClientSession, key: ObligationKey, now: float) -> None:
        old = self.open[key]
        deadline = datetime.fromisoformat(old.deadline.replace("Z", "+00:00"))
        deadline += timedelta(days=self.rng.choice((-7, -2, 3, 7, 14)))
        body = {
            **self._narrow(key),
            "description": f"Soak change {self._n}: the partner must act.",
            "deadline": deadline.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        a = await self._post(session, key[0], "change", body)
        self.open[key] = Action(a["action_description"], a["enrollment_deadline_date_time"], now)
        self.ops.append(Op(now, "change", key, a["action_description"], a["enrollment_deadline_date_time"]))

    async def _resolve(self, session: aiohttp.ClientSession, key: ObligationKey, now: float) -> None:
        await self._post(session, key[0], "resolve", self._narrow(key))
        del self.open[key]
        self.ops.append(Op(now, "resolve", key))


# -- faults ----------------------------------------------------------------------------------

LEAP_FAULTS: tuple[dict[str, Any], ...] = (
    {"kind": "500", "times": 2},
    {"kind": "429", "times": 2, "retry_after": 1},
    {"kind": "slow", "times": 2, "delay": 3},
    {"kind": "invalid_record", "invalid": "missing_meter_id"},
    {"kind": "503", "times": 2},
    {"kind": "invalid_record", "invalid": "bad_action_type"},
    {"kind": "disconnect"},
    {"kind": "502"},
)
OUTAGE_WAIT = 60.0
"""How much longer a receiver outage may last waiting for a delivery to run into it."""
SCENES = ("kill", "slack", "webhook", "smtp", "leap-outage", "receivers", "postgres")
"""Scenes in the order they start, evenly spread over the churn; `leap` runs throughout. The kill
comes first, so that the process after it lives through the second half, where memory is judged."""
LEAP_SIDE = frozenset({"leap-outage", "kill", "postgres"})
"""Scenes that can hide a change from the poller: the service does not read Leap for a while, so
a state that lasts less than that is never seen. Receiver outages only delay deliveries, and the
small Leap faults are retried within a cycle or (an invalid record) read again on the next one:
a change they hide is a finding."""


@dataclass
class Window:
    scene: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Scenes:
    sim_url: str
    receivers: Receivers
    service: ServiceProcess
    postgres: PostgresControl | None
    outage: float
    pg_outage: float
    leap_every: float
    windows: list[Window] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    async def _sim_faults(self, method: str, body: dict[str, Any] | None = None) -> None:
        async with aiohttp.ClientSession() as s, s.request(method, f"{self.sim_url}/_sim/faults", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"/_sim/faults: HTTP {r.status} {await r.text()}")

    async def _window(self, scene: str, down: Callable[[], Awaitable[Any]], up: Callable[[], Awaitable[Any]],
                      seconds: float, detail: str = "", refusing: Any = None) -> None:  # fmt: skip
        """`down` for `seconds`; given the receiver (`refusing`, which counts what it `refused`),
        also until it has refused a request, at most `OUTAGE_WAIT` longer: an outage no delivery
        ran into tested nothing."""
        start = time.time()
        before = refusing.refused if refusing is not None else 0
        try:
            await down()
            await asyncio.sleep(seconds)
            for _ in range(int(OUTAGE_WAIT / 0.2)):
                if refusing is None or refusing.refused > before:
                    break
                await asyncio.sleep(0.2)
        finally:
            await up()
            self.windows.append(Window(scene, start, time.time(), detail))

    async def leap_faults(self, until: float) -> None:
        """A small Leap fault every `leap_every` seconds, in rotation, until `until`."""
        i = 0
        while time.time() + self.leap_every < until:
            await asyncio.sleep(self.leap_every)
            fault = LEAP_FAULTS[i % len(LEAP_FAULTS)]
            i += 1
            await self._sim_faults("POST", fault)
            now = time.time()
            self.windows.append(Window("leap", now, now + 10, ",".join(f"{k}={v}" for k, v in fault.items())))

    async def run(self, scene: str) -> None:
        r = self.receivers
        if scene == "slack":
            await self._window(scene, _set(r.slack, True), _set(r.slack, False), self.outage, "HTTP 500", r.slack)
        elif scene == "webhook":
            await self._window(scene, _set(r.hook, True), _set(r.hook, False), self.outage, "HTTP 503", r.hook)
        elif scene == "smtp":
            await self._window(scene, r.smtp.stop, r.smtp.start, self.outage, "server stopped")
        elif scene == "receivers":

            async def all_down() -> None:
                r.slack.down = r.hook.down = True
                await r.smtp.stop()

            async def all_up() -> None:
                r.slack.down = r.hook.down = False
                await r.smtp.start()

            await self._window(scene, all_down, all_up, self.outage, "Slack 500, webhooks 503, SMTP stopped")
        elif scene == "leap-outage":
            await self._window(
                scene,
                lambda: self._sim_faults("POST", {"kind": "503", "times": 1_000_000}),
                lambda: self._sim_faults("DELETE"),
                self.outage,
                "every Leap request 503",
            )
        elif scene == "kill":
            start = time.time()
            await self.service.kill()
            await self.service.start()
            self.windows.append(Window(scene, start, time.time(), "SIGKILL, then a new process"))
        elif scene == "postgres":
            if self.postgres is None:
                self.skipped[scene] = "no PostgreSQL cluster this process can stop"
                return
            await self._window(scene, self.postgres.stop, self.postgres.start, self.pg_outage, "pg_ctl stop -m fast")


def _set(receiver: Any, down: bool) -> Callable[[], Awaitable[None]]:
    async def switch() -> None:
        receiver.down = down

    return switch


def calm(op: Op, windows: list[Window], before: float, after: float) -> bool:
    """No fault that can hide a change from the poller was active from `before` seconds before the
    op to `after` seconds after it (the op's state lasts at least the churn's spacing)."""
    return not any(w.scene in LEAP_SIDE and w.start - after <= op.at <= w.end + before for w in windows)
