"""README holds true: every command its tables list exists as written, the simulator's control
endpoints are documented, and durations behave as its Configuration section says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alerter.sim import Portfolio, build_app
from tests.support.proc import alerter

pytestmark = pytest.mark.timeout(180)

README = Path(__file__).resolve().parents[1] / "README.md"
WORD = re.compile(r"^[a-z][a-z-]*$")


def command_cells() -> list[str]:
    """The first cell of every row of README tables headed `| command |`, as written."""
    cells: list[str] = []
    in_table = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("| command |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            cells.append(line.split(" | ")[0].removeprefix("| "))
    return cells


def invocations(cell: str) -> list[tuple[list[str], str]]:
    """Each command of a cell (`alerter silence list -c CONFIG` / `silence expire -c CONFIG ID`) as
    (its subcommand words, the whole text as written)."""
    found = []
    for written in re.findall(r"`([^`]+)`", cell):
        tokens = written.split()
        if tokens[0] == "alerter":
            tokens = tokens[1:]
        words = []
        for token in tokens:
            if not WORD.match(token):
                break
            words.append(token)
        found.append((words, written))
    return found


COMMANDS = [inv for cell in command_cells() for inv in invocations(cell)]


def test_the_tables_were_read() -> None:
    words = {" ".join(w) for w, _ in COMMANDS}
    assert {"run", "once", "check", "rules test", "sim", "demo", "silence add", "silence list", "silence expire",
            "dlq list", "dlq replay", "receivers list", "receivers enable", "history"} <= words  # fmt: skip


@pytest.mark.parametrize(("words", "written"), COMMANDS, ids=[w for _, w in COMMANDS])
async def test_each_listed_command_exists_and_names_its_required_options(words: list[str], written: str) -> None:
    result = await alerter(*words, "--help")
    assert result.code == 0, result.stderr
    usage = " ".join(result.stdout.split("\n\n")[0].split())
    # A required option shows in the usage line without brackets; README must write it too.
    for option, metavar in re.findall(r"(?<!\[)(-[a-z]|--[a-z-]+) ([A-Z_]+)(?![^\[]*\])", usage):
        assert f"{option} {metavar}" in written or f"{option} " in written, f"{written!r} omits {option} {metavar}"


def test_every_simulator_control_endpoint_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    routes = {r.resource.canonical for r in build_app(Portfolio(1), api_key="k").router.routes() if r.resource}
    control = sorted(r for r in routes if r.startswith("/_sim/"))
    assert control, routes
    for route in control:
        if route.endswith("/{op}"):
            for op in ("open", "change", "resolve", "archive", "touch"):
                assert f"/_sim/meters/{{meter_id}}/{op}" in text or f".../{op}" in text, op
        else:
            assert route in text, route


@pytest.mark.parametrize(("value", "ok"), [("30", False), ("2.5", False), ("0", True), ("30s", True)])
async def test_a_duration_needs_a_unit(tmp_path: Path, value: str, ok: bool) -> None:
    (tmp_path / "rules.yaml").write_text("receivers: [{name: c, console: {}}]\nrules: [{name: a, receivers: [c]}]\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  api_key: k\npoll:\n  overlap: {value}\nrules: rules.yaml\n")
    result = await alerter("check", "-c", str(config))
    if ok:
        assert result.code == 0, result.stderr
        return
    assert result.code == 2 and "Traceback" not in result.stderr
    units = ", ".join(f"{value}{u}" for u in "smh")
    assert result.stderr.strip() == f"{config}:4:12: poll.overlap: {value} has no unit: write {units} or {value}d"
    assert "a number without a unit is an error" in " ".join(README.read_text(encoding="utf-8").split())


def test_readme_names_no_file_outside_the_project() -> None:
    text = README.read_text(encoding="utf-8")
    assert "INTERFACE.md" not in text and "DESIGN.md" not in text
