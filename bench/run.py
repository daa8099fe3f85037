"""`make bench`: every benchmark in its own process, then bench/results/SUMMARY.md from their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BENCHES = (
    "bench_source",
    "bench_cycle",
    "bench_routing",
    "bench_delivery",
    "bench_latency",
    "bench_console",
    "bench_push",
    "bench_cost",
    "bench_insert",
    "bench_purge",
    "bench_upgrade",
)


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> str:
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, got: str, target: str, ok: bool | None) -> None:
        rows.append((what, got, target, "—" if ok is None else ("yes" if ok else "**no**")))

    source = _load("source")
    if source:
        for n, r in sorted(source.items(), key=lambda kv: int(kv[0])):
            s = r["sweep"]
            add(
                f"source client decode+validate, {int(n):,} meters",
                f"{s['records_per_s_decode']:,.0f} rec/s",
                "≥ 100,000 rec/s",
                s["records_per_s_decode"] >= 100_000,
            )
            add(f"source client peak RSS, {int(n):,} meters", f"{s['client_peak_rss_mb']:.0f} MB", "flat", None)
    cycle = _load("cycle")
    if cycle:
        for s in cycle["sizes"]:
            sw = s["sweep"]
            add(
                f"full unfiltered sweep end to end, {s['meters']:,} meters",
                f"{sw['records_per_s']:,.0f} rec/s",
                "≥ 50,000 rec/s",
                sw["records_per_s"] >= 50_000,
            )
            add(
                f"sweep / bare fetch+decode, {s['meters']:,} meters",
                f"{s['ratio_to_fetch']:.2f}",
                "≥ 0.6",
                s["ratio_to_fetch"] >= 0.6,
            )
            add(
                f"sweep peak RSS, {s['meters']:,} meters",
                f"{sw['rss_mb']:.0f} MB",
                "≤ 150 MB, flat",
                sw["rss_mb"] <= 150,
            )
            for check in ("meter_ids", "unfiltered"):
                inc = s.get(f"incremental_{check}")
                if inc:
                    add(
                        f"incremental cycle, 1,000 changed of {s['meters']:,} ({check})",
                        f"{inc['seconds']:.2f} s ({inc['requests']} requests)",
                        "≤ 2 s",
                        inc["seconds"] <= 2,
                    )
    routing = _load("routing")
    if routing:
        add("routing alone, 100,000 events / 50 rules", f"{routing['route_events_per_s']:,.0f} ev/s", "—", None)
        add(
            "routing + grouping, 100,000 events / 50 rules",
            f"{routing['plan_events_per_s']:,.0f} ev/s",
            "≥ 150,000 ev/s",
            routing["plan_events_per_s"] >= 150_000,
        )
    delivery = _load("delivery")
    if delivery:
        w = delivery["webhook"]
        add(
            "webhooks to a local collector",
            f"{w['per_second']:,.0f}/s ({w['received_unique']:,} unique)",
            "≥ 1,000/s",
            w["per_second"] >= 1000,
        )
        sl = delivery["slack"]
        add(
            f"Slack pacing, {sl['channels']} channels, {sl['window_s']:.0f} s",
            f"max {sl['max_per_second']:.2f} msg/s",
            "≤ 1.2 msg/s per channel",
            sl["max_per_second"] <= 1.2,
        )
    latency = _load("latency")
    if latency:
        add(
            f"action → webhook, {latency['actions']} actions, poll 2 s",
            f"p50 {latency['p50_s']:.2f} s, p99 {latency['p99_s']:.2f} s",
            "p99 ≤ 3 s",
            latency["p99_s"] <= 3,
        )
    console = _load("console")
    if console:
        for backend, b in console["backends"].items():
            worst = max(r["median_ms"] for r in b["requests"].values())
            add(
                f"console /obligations and /api/v1/obligations, {console['obligations']:,} open, any page ({backend})",
                f"median ≤ {worst:.0f} ms",
                "≤ 300 ms",
                worst <= console["target_ms"],
            )
    push = _load("push")
    if push:
        add(
            f"change → webhook with push, {push['changes']:,} changes, poll 5 min",
            f"p50 {push['p50_s']:.2f} s, p99 {push['p99_s']:.2f} s",
            "p50 ≤ 0.5 s, p99 ≤ 2 s",
            push["p50_s"] <= 0.5 and push["p99_s"] <= 2,
        )
        add(
            "push endpoint, durable SQLite inbox",
            f"{push['accepted_per_s']:,.0f} ev/s (answer p99 {push['answer_p99_ms']:.0f} ms)",
            "≥ 2,000 ev/s, p99 ≤ 100 ms",
            push["accepted_per_s"] >= 2000 and push["answer_p99_ms"] <= 100,
        )
        add(
            f"burst of {push['burst']:,} events for {push['burst_meters']:,} meters, re-read as it arrives",
            f"{push['live_meter_rereads']:,} meter re-reads",
            "≤ 1,000",
            push["live_meter_rereads"] <= 1000,
        )
        add(
            f"burst of {push['burst']:,} events for {push['burst_meters']:,} meters, held while Leap fails",
            f"{push['burst_meter_rereads']:,} meter re-reads",
            "≤ 1,000",
            push["burst_meter_rereads"] <= 1000,
        )
    for r in _load("cost") or []:
        on_pg = r.get("store") == "postgres"
        shape = (
            f"`alerter once` {r['mode']}, {r['meters']:,} meters × {r['action_rate']:.0%} ({r['obligations']:,} open)"
            + (", state on PostgreSQL" if on_pg else "")
        )
        rss_target = 250 if r["action_rate"] < 1 else 200
        add(f"{shape}: peak RSS", f"{r['peak_rss_mb']} MB", f"≤ {rss_target} MB", r["peak_rss_mb"] <= rss_target)
        if r["mode"] == "notify":
            target = 14 if r["meters"] >= 100_000 else 1.6
            runs = ", ".join(str(t) for t in r.get("runs_seconds", [r["seconds"]]))
            add(
                f"{shape}: wall (median run)",
                f"{r['seconds']} s (runs: {runs})",
                "—" if on_pg else f"≤ {target} s",  # the bar is for the default store
                None if on_pg else r["seconds"] <= target,
            )
        if r["mode"] == "silent":
            ok = r["ratio_to_fetch"] >= 0.6 and r["records_per_s"] >= 30_000
            add(
                f"{shape}: ingest",
                f"{r['records_per_s']:,} rec/s = {r['ratio_to_fetch']} of bare fetch+decode",
                "≥ 0.6 and ≥ 30,000 rec/s",
                ok,
            )
        if on_pg:
            add(f"{shape}: tables and indexes per open obligation", f"{r['bytes_per_obligation']:,} B", "—", None)
        else:
            add(f"{shape}: SQLite per open obligation", f"{r['bytes_per_obligation']:,} B", "≤ 1,024 B",
                r["bytes_per_obligation"] <= 1024)  # fmt: skip
    lines = ["| measure | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    only = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in only if n not in BENCHES]
    if unknown:
        print(f"usage: python -m bench.run [{' '.join(BENCHES)}]", file=sys.stderr)
        return 2
    failed = []
    for name in only:
        print(f"== {name}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    text = summary()
    (RESULTS / "SUMMARY.md").write_text(text)
    print(text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
