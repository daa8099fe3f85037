"""The command line as a user meets it: help, version, bad input, busy ports, and the log stream."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from alerter.cli import build_parser
from alerter.sim import Portfolio, SimServer
from tests.support.channels import webhook_collector
from tests.support.proc import Service, alerter
from tests.support.service import API_KEY, WEBHOOK_SECRET, config_yaml, rules_yaml, write_config

pytestmark = pytest.mark.timeout(180)


def offline_config(tmp_path: Path, *, listen: str = "127.0.0.1:0", rules: str | None = None) -> str:
    """A valid config whose source and receiver are never reached (ports 1 and 2), and its state
    file (empty: the state commands make the schema of a file that has none)."""
    (tmp_path / "s.db").touch()
    config = config_yaml("http://127.0.0.1:1", f"sqlite:///{tmp_path}/s.db", listen=listen, log_format="json")
    return str(write_config(tmp_path, config, rules or rules_yaml("http://127.0.0.1:2/h")))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- help and version --


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, deeper in subparsers(sub):
                    yield f"{name} {inner}", deeper


def test_every_option_of_every_command_says_what_it_is_for() -> None:
    parser = build_parser()
    commands = dict(subparsers(parser))
    assert {"run", "once", "check", "sim", "demo", "rules test", "silence add", "dlq list"} <= set(commands)
    for name, sub in [("alerter", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest} has no help text"


async def test_help_says_what_the_product_is_and_shows_defaults() -> None:
    top = await alerter("--help")
    assert top.code == 0
    assert "Leap" in top.stdout and "exactly once" in top.stdout
    assert "Thin command line" not in top.stdout
    sim = await alerter("sim", "--help")
    assert "(default: 8099)" in sim.stdout and "(default: 0.05)" in sim.stdout
    silence = await alerter("silence", "add", "--help")
    assert "(default: 24h)" in silence.stdout


async def test_version_prints_the_package_version() -> None:
    result = await alerter("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"alerter {metadata.version('alerter')}"


@pytest.mark.parametrize("where", ["before", "after"])
async def test_verbose_is_taken_before_or_after_the_subcommand(where: str, busy_port: int) -> None:
    args = ["sim", "--port", str(busy_port), "--meters", "5"]
    result = await alerter(*(["-v", *args] if where == "before" else [*args, "-v"]), timeout=30)
    assert result.code == 1
    assert "Traceback" in result.stderr  # --verbose shows what an error came from


def test_every_command_takes_verbose_after_it() -> None:
    commands = dict(subparsers(build_parser()))
    assert {"leap-webhooks list", "rules test", "silence add", "receivers enable"} <= set(commands)
    for name, sub in commands.items():
        if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):  # a command, not a group
            assert "--verbose" in sub._option_string_actions, f"alerter {name} ... --verbose is refused"


async def test_leap_webhooks_takes_verbose_after_its_subcommand(tmp_path: Path) -> None:
    result = await alerter("leap-webhooks", "list", "-c", str(tmp_path / "missing.yaml"), "--verbose")
    assert result.code == 2 and "unrecognized arguments" not in result.stderr
    assert "missing.yaml" in result.stderr


# -- bad input: one line, exit 2 --

BAD_ARGUMENTS = [
    (["sim", "--meters", "-5"], "--meters"),
    (["sim", "--meters", "0"], "--meters"),
    (["sim", "--meters", "many"], "--meters"),
    (["sim", "--action-rate", "2"], "--action-rate"),
    (["sim", "--action-rate", "-0.1"], "--action-rate"),
    (["sim", "--action-rate", "nan"], "--action-rate"),
    (["sim", "--port", "70000"], "--port"),
    (["demo", "--meters", "0"], "--meters"),
    (["demo", "--port", "-1"], "--port"),
    (["demo", "--state", "mysql://db/alerter"], "--state"),
    (["rules", "test", "-c", "c.yaml", "--before", "a.json", "--after", "b.json", "--now", "yesterday"], "--now"),
    (["dlq", "list", "-c", "c.yaml", "--since", "lastweek"], "--since"),
    (["dlq", "replay", "-c", "c.yaml", "--since", "2026-13-45"], "--since"),
    (["silence", "add", "-c", "c.yaml", "meter_id=M-1", "--reason", "r", "--duration", "0s"], "--duration"),
    (["silence", "add", "-c", "c.yaml", "meter_id=M-1", "--reason", "r", "--duration", "soon"], "--duration"),
    (["once", "-c", "c.yaml", "--deadline", "-1"], "--deadline"),
    (["frobnicate"], "frobnicate"),
    ([], "required"),
]


@pytest.mark.parametrize(("args", "named"), BAD_ARGUMENTS, ids=[" ".join(a) or "nothing" for a, _ in BAD_ARGUMENTS])
async def test_a_bad_argument_is_one_line_and_exit_2(args: list[str], named: str) -> None:
    result = await alerter(*args, timeout=30)
    assert result.code == 2, result
    line = one_line(result.stderr)
    assert line.startswith("alerter: ") and named in line


async def test_good_times_and_durations_are_taken(tmp_path: Path) -> None:
    cfg = offline_config(tmp_path)
    snapshot = tmp_path / "empty.json"
    snapshot.write_text('{"meters": []}')
    at = await alerter(
        "rules", "test", "-c", cfg, "--before", str(snapshot), "--after", str(snapshot), "--now", "2026-11-28T10:00:00Z"
    )
    assert at.code == 0, at.stderr
    for since in ("24h", "2026-11-28T10:00:00Z", "2026-11-28"):
        listed = await alerter("dlq", "list", "-c", cfg, "--since", since)
        assert listed.code == 0 and "no dead letters" in listed.stdout, listed


# -- a busy port: one line, exit 1, and the process ends --


async def test_run_on_a_busy_port_is_one_line_and_exit_1(tmp_path: Path, busy_port: int) -> None:
    cfg = offline_config(tmp_path, listen=f"127.0.0.1:{busy_port}")
    result = await alerter("run", "-c", cfg, timeout=30)
    assert result.code == 1
    assert one_line(result.stderr) == f"alerter: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    # nothing was left holding the state: the same config runs once the port is free
    assert (await alerter("silence", "list", "-c", cfg)).code == 0


@pytest.mark.parametrize("command", ["sim", "demo"])
async def test_sim_and_demo_on_a_busy_port_are_one_line_and_exit_1(command: str, busy_port: int) -> None:
    result = await alerter(command, "--port", str(busy_port), "--meters", "5", timeout=30)
    assert result.code == 1
    assert one_line(result.stderr) == f"alerter: cannot listen on 127.0.0.1:{busy_port}: address already in use"


# -- what commands print --


async def test_silence_list_prints_matchers_as_silence_add_takes_them(tmp_path: Path) -> None:
    cfg = offline_config(tmp_path)
    matchers = ["tags=~vip", "meter_id!=M-1", "action_type=IS_AUTHORIZED", "partner_reference=~^site (1|2)$"]
    added = await alerter("silence", "add", "-c", cfg, *matchers, "--reason", "migration")
    assert added.code == 0, added.stderr
    listed = await alerter("silence", "list", "-c", cfg)
    shown = "tags=~vip meter_id!=M-1 action_type=IS_AUTHORIZED 'partner_reference=~^site (1|2)$'"
    assert shown in listed.stdout, listed.stdout
    # what the list shows can be pasted back into `silence add`
    again = await alerter("silence", "add", "-c", cfg, *shlex.split(shown), "--reason", "again")
    assert again.code == 0, again.stderr
    assert (await alerter("silence", "list", "-c", cfg)).stdout.count(shown) == 2


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_once_says_a_refused_key_once(tmp_path: Path, log_format: str) -> None:
    async with SimServer(Portfolio(5), api_key=API_KEY) as sim:
        config = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", api_key="revoked-key-1", log_format=log_format)
        cfg = write_config(tmp_path, config, rules_yaml("http://127.0.0.1:2/h"))
        result = await alerter("once", "-c", str(cfg))
    assert result.code == 1
    assert result.stderr.count("refused the API key") == 1, result.stderr
    assert "Traceback" not in result.stderr and "revoked-key-1" not in result.stderr


@pytest.mark.parametrize("secret", ["whsec_!!!notbase64", "whsec_!!!c2VjcmV0LWtleQ==", "whsec_not base64 at all"])
async def test_check_rejects_a_webhook_secret_that_is_not_base64_at_its_position(tmp_path: Path, secret: str) -> None:
    rules = rules_yaml("http://127.0.0.1:2/h").replace(WEBHOOK_SECRET, secret)
    cfg = offline_config(tmp_path, rules=rules)
    result = await alerter("check", "-c", cfg)
    assert result.code == 2
    line = one_line(result.stderr)
    assert line.startswith(
        f"{tmp_path}/rules.yaml:5:15: receivers[0].webhook.secret: webhook secret must be whsec_ followed by base64"
    )
    assert secret.removeprefix("whsec_") not in line


# -- the log stream: every line one JSON object --


async def test_run_logs_only_json_lines_including_the_libraries(tmp_path: Path) -> None:
    p = Portfolio(20, action_rate=0.0, seed=3)
    async with SimServer(p, api_key=API_KEY) as sim, webhook_collector([WEBHOOK_SECRET]) as hook:
        meter = next(p.meter_id(i) for i in range(p.size) if not p.record(i)["is_archived"])
        p.open_action(meter, action_type="IS_AUTHORIZED", action_code="AUTH_0001")
        # a slow first poll holds the routing step: APScheduler skips runs of the 1-second jobs meanwhile
        sim.faults.add("slow", delay=3.0)
        config = config_yaml(sim.url, f"sqlite:///{tmp_path}/s.db", log_format="json")
        svc = await Service.start(str(write_config(tmp_path, config, rules_yaml(hook.url()))))
        try:
            await svc.wait_for_log("notification_sent", timeout=60)
            # a malformed request: aiohttp logs an error with a traceback
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
            await writer.drain()
            assert (await reader.read()).startswith(b"HTTP/1.")
            writer.close()
            library = await svc.wait_for_log("Error handling request from 127.0.0.1")
        finally:
            assert await svc.stop() == 0
    assert [e for e in svc.logs if e.get("event") == "raw"] == []
    for entry in svc.logs:
        assert {"event", "level", "logger", "timestamp"} <= set(entry), entry
    assert library["logger"] == "aiohttp.server" and library["level"] == "error"
    assert "Traceback (most recent call last)" in library["exception"]
    # APScheduler's per-run chatter is quieted (a job cancelled by the shutdown may still log an error line)
    chatter = [e for e in svc.logs if str(e["logger"]).startswith("apscheduler") and e["level"] in ("debug", "info")]
    assert not chatter, chatter


LIBRARY_LINES = """
import logging, threading, warnings
from alerter import logs
logs.configure("json", "info")
try:
    raise ConnectionResetError("connection was closed in the middle of operation")
except ConnectionResetError:
    logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection", exc_info=True)
logging.getLogger("apscheduler.executors.default").info('Job "poll" executed successfully')
skipped = 'Execution of job "route" skipped: maximum number of running instances reached (1)'
logging.getLogger("apscheduler.scheduler").warning(skipped)
logging.getLogger("apscheduler.scheduler").error("Job %s raised an exception", "poll")
logging.getLogger("aiosqlite").debug("executing a statement")
warnings.warn("a library warning", UserWarning, stacklevel=1)
def boom():
    raise RuntimeError("in a thread")
t = threading.Thread(target=boom, name="worker")
t.start()
t.join()
"""


async def test_library_log_records_become_one_json_line_each() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LIBRARY_LINES, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    by_logger = {e["logger"]: e for e in lines}
    assert set(by_logger) == {"asyncpg.pool", "apscheduler.scheduler", "py.warnings", "alerter.threads"}, lines
    pool = by_logger["asyncpg.pool"]
    assert pool["level"] == "warning" and pool["event"] == "Failed to restore the pool connection"
    assert "ConnectionResetError: connection was closed" in pool["exception"]
    assert by_logger["apscheduler.scheduler"]["event"] == "Job poll raised an exception"
    assert "a library warning" in by_logger["py.warnings"]["event"]
    thread = by_logger["alerter.threads"]
    assert thread["event"] == "thread_crashed" and thread["thread"] == "worker"
    assert "RuntimeError: in a thread" in thread["exception"]


SECRET_IN_A_FRAME = """
import structlog
from alerter import logs
logs.configure({fmt!r}, "info")
def call(api_key):
    headers = {{"Authorization": f"Bearer {{api_key}}"}}
    raise RuntimeError("the call failed")
try:
    call("sk-live-hunter2")
except RuntimeError:
    structlog.get_logger("alerter.test").error("job_crashed", exc_info=True)
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_a_logged_traceback_shows_no_local_values(fmt: str) -> None:
    # a frame's locals may hold a key, a token or a password: the trace says where, not what
    code = SECRET_IN_A_FRAME.format(fmt=fmt)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "RuntimeError: the call failed" in text and "job_crashed" in text
    assert "hunter2" not in text


def test_only_the_run_command_holds_signals_while_it_starts(tmp_path: Path) -> None:
    """`alerter run` notes a SIGTERM (and ignores SIGHUP) until the service's handlers are in
    place; another command naming `run` as a value (a meter, a reason) keeps their defaults."""
    import signal

    from alerter import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("source: {api_key: k}\nrules: r.yaml\n")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    try:
        assert cli.main(["history", "-c", str(cfg), "--meter", "run"]) == 2  # the config lacks its rules
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before
        assert cli.main(["-v", "run", "-c", str(cfg)]) == 2
        assert signal.getsignal(signal.SIGTERM) is not before[0]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])
