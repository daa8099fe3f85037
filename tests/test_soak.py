"""The soak test's machinery keeps working: a short soak (Leap faults and a webhook outage) passes
its own checks, and its figures say what each receiver got."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


async def test_a_short_soak_delivers_everything_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--duration", "15s", "--faults", "leap,webhook", "--outage", "4s",
        "--leap-every", "4s", "--no-reminders", "--min-settle", "3s", "--quiet", "3s", "--settle", "3m",
        "--sample-every", "1s", "--output", str(out),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    text, _ = await asyncio.wait_for(proc.communicate(), 280)
    assert proc.returncode == 0, text.decode()[-3000:]
    res = json.loads(out.read_text())
    assert res["passed"] and res["settle"]["settled"]
    assert res["checks"]["exactly_once"] == {"ok": True, "fails_run": True, "problems": []}
    assert {f["scene"] for f in res["faults"]} == {"leap", "webhook"}
    assert res["receiver_refusals"]["hook"] > 0, "the webhook outage refused nothing: it did not happen"
    for name in ("slack", "email", "hook"):
        d = res["deliveries"][name]
        assert d["notifications"] > 0 and d["events"] > 0
        assert d["missing"] == d["duplicates"] == d["unexpected"] == 0
        assert d["ledger_status"] == {"sent": d["notifications"]}
        assert res["end_state"][name]["mismatches"] == 0
        assert res["end_state"][name]["open_as_told"] == res["end_state"][name]["open_in_simulator"] > 0
    assert sum(res["churn"]["ops"].values()) > 5
    assert res["logs"]["secrets_found"] == {}
    assert res["memory"]["lives"]["1"]["samples"] > 5
