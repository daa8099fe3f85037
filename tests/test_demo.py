"""A newcomer's first minutes: `alerter demo` and `alerter sim --churn`, run as processes."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.support.proc import alerter

pytestmark = pytest.mark.timeout(240)

NOTE = re.compile(r"^── (?P<title>.+?)  \[")
LINE = re.compile(r"^   (?P<verb>New|Changed|Reminder|Resolved) +(?P<ref>site-\d+): (?P<rest>.*)$")
DAY = r"\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2} UTC)?"
MOVED = re.compile(rf"deadline (?P<old>{DAY}) → (?P<new>{DAY}) \((?:in|overdue by) ")


@dataclass
class Output:
    """A demo's stdout as it arrives: its lines, and the notification lines below each title."""

    lines: list[str] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[tuple[str, re.Match[str]]] = field(default_factory=list)
    """(the title of the notification, the event line) for every event line printed."""

    def add(self, text: str) -> None:
        self.lines.append(text)
        title = next((m["title"] for line in reversed(self.lines) if (m := NOTE.match(line))), "")
        if (m := LINE.match(text)) is not None:
            self.events.append((title, m))
        self.grew.set()

    def after_digest(self, verb: str) -> list[re.Match[str]]:
        return [m for title, m in self.events if m["verb"] == verb and not title.startswith("Initial sync")]

    def banner(self, prefix: str) -> str:
        line = next(line for line in self.lines if line.startswith(prefix))
        return line.removeprefix(prefix).split(" ")[0]


def _is_file(path: str) -> bool:
    return Path(path).is_file()


async def _read(stream: asyncio.StreamReader, out: Output) -> None:
    async for raw in stream:
        out.add(raw.decode().rstrip("\n"))


async def test_demo_shows_digest_new_changed_and_resolved_then_stops(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alerter", "demo", "--meters", "400",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    out = Output()
    reader = asyncio.create_task(_read(proc.stdout, out))
    try:
        async with asyncio.timeout(120):  # README: within a minute; generous for a loaded machine
            while not (
                any(line.startswith("── Initial sync:") for line in out.lines)
                and out.after_digest("New")
                and any(MOVED.search(m["rest"]) for m in out.after_digest("Changed"))
                and out.after_digest("Resolved")
            ):
                assert not reader.done(), "the demo ended early:\n" + "\n".join(out.lines)
                out.grew.clear()
                await asyncio.wait({reader, asyncio.create_task(out.grew.wait())}, return_when="FIRST_COMPLETED")
        moved = next(m for m in out.after_digest("Changed") if MOVED.search(m["rest"]))
        old, new = MOVED.search(moved["rest"]).group("old", "new")  # type: ignore[union-attr]
        assert old != new

        # Where everything is, printed first: the service's HTTP server, the config and the state.
        config = out.banner("  config: ")
        assert _is_file(config) and _is_file(out.banner("  state: "))
        service = out.banner("  service: ").removesuffix("/metrics")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{service}/metrics") as r:
                assert r.status == 200 and "alerter_cycles_total" in await r.text()
            async with http.get(f"{service}/healthz") as r:
                assert r.status == 200
        # The console, with the login the banner printed.
        console_line = next(line for line in out.lines if line.startswith("  console: "))
        password = re.search(r"password (\S+)\)", console_line)[1]  # type: ignore[index]
        assert out.banner("  console: ") == f"{service}/"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies of an IP host
            async with http.get(f"{service}/obligations", allow_redirects=False) as r:
                assert r.status in (302, 303, 401)  # no credential: the login, not the page
            async with http.get(f"{service}/login") as r:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]  # type: ignore[index]
            form = {"username": "demo", "password": password, "csrf": csrf, "next": "/obligations"}
            async with http.post(f"{service}/login", data=form) as r:
                assert r.status == 200 and str(r.url).endswith("/obligations"), r.status
        # ... and `alerter history` beside it, by the partner reference the notification showed.
        history = await alerter("history", "-c", str(config), "--meter", moved["ref"])
        assert history.code == 0, history.stderr
        assert "changed" in history.stdout and f"{old} → {new}" in history.stdout, history.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        await reader
    assert code == 0, (await proc.stderr.read()).decode()
    assert out.lines[-1].startswith("alerter demo stopped")
    assert not _is_file(config)  # the temporary directory went with it


async def _first_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()


async def _changed_since(http: aiohttp.ClientSession, url: str, since: str) -> list[str]:
    body = {"last_modified_date_time": since, "page_size": 500}
    headers = {"Authorization": "Bearer sim-key"}
    async with http.post(f"{url}/v2/meters/enrollments/search", json=body, headers=headers) as r:
        assert r.status == 200
        return [m["meter_id"] for m in (await r.json())["meters"]]


async def test_sim_churn_changes_partner_actions_and_zero_stays_static() -> None:
    pipe = asyncio.subprocess.PIPE
    sim = (sys.executable, "-m", "alerter", "sim", "--port", "0", "--meters", "300")
    procs = [
        await asyncio.create_subprocess_exec(*sim, *churn, stdout=pipe, stderr=pipe) for churn in (["--churn", "4"], [])
    ]
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    try:
        lines = [await _first_line(proc) for proc in procs]
        assert "4 partner changes a second" in lines[0] and "static" in lines[1], lines
        lively, static = (re.search(r" at (http://\S+) ", line)[1] for line in lines)  # type: ignore[index]
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while len(await _changed_since(http, lively, since)) < 6:  # noqa: ASYNC110 (polling a server)
                    await asyncio.sleep(0.2)
            assert await _changed_since(http, static, since) == []
            # The control API makes the same changes on demand, each kind in turn.
            async with http.post(f"{static}/_sim/churn", json={"n": 3, "partner": True}) as r:
                changes = (await r.json())["changes"]
            assert [c["kind"] for c in changes] == ["opened", "changed", "resolved"]
            assert len(await _changed_since(http, static, since)) == len({c["meter_id"] for c in changes})
            async with http.get(f"{static}/_sim/meters/{changes[0]['meter_id']}") as r:
                meter = await r.json()
            [opened] = [
                a for a in meter["required_actions"]["partner"] if a["action_code"] == changes[0]["action_code"]
            ]
            deadline = datetime.fromisoformat(opened["enrollment_deadline_date_time"].replace("Z", "+00:00"))
            assert timedelta(days=2) < deadline - datetime.now(UTC) < timedelta(days=43)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0, 0]


async def test_sim_rejects_a_negative_churn() -> None:
    result = await alerter("sim", "--port", "0", "--churn", "-1")
    assert (
        result.code == 2 and result.stderr.startswith("alerter: argument --churn:") and "Traceback" not in result.stderr
    )
