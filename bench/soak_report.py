"""The soak test's report: a run's figures, the verdict of each check, and a short summary."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench import soak_checks as checks
from bench.soak_churn import Churn, Scenes, calm
from bench.soak_world import Receivers, ServiceProcess

LEASE_S = 300.0
"""How long a delivery claimed by a killed process stays leased before another claim can take it."""


@dataclass
class Run:
    """Everything a soak run leaves for the checks."""

    started: float
    t0: float
    outage: float
    keys: dict[str, str]
    receivers: Receivers
    service: ServiceProcess
    churn: Churn
    scenes: Scenes
    settle: dict[str, Any]
    final_backlog: dict[str, Any]
    ledger: checks.Ledger
    truth: dict[str, tuple[str, str]]
    metrics_text: str | None
    sigterm_exit: int | None


def figures(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    r, ledger, churn, scenes, service = run.receivers, run.ledger, run.churn, run.scenes, run.service
    gots = {"slack": checks.got_slack(r), "email": checks.got_email(r, ledger), "hook": checks.got_webhook(r, "/hook")}
    ops_got = checks.got_webhook(r, "/ops")
    calm_ops = [calm(op, scenes.windows, before=2 * args.poll, after=args.spacing + 2 * args.poll) for op in churn.ops]
    receivers_of: dict[str, set[str]] = defaultdict(set)
    for n in ledger.notifications.values():
        for eid in n["events"]:
            receivers_of[eid].add(n["receiver"])
    not_routed = Counter(kind for eid, (kind, _) in ledger.events.items() if receivers_of[eid] != set(checks.RECEIVERS))
    result: dict[str, Any] = {
        "started_at": datetime.fromtimestamp(run.started, UTC).isoformat(timespec="seconds"),
        "store": args.store,
        "duration_s": args.duration,
        "setup": {"meters": args.meters, "action_rate": args.action_rate, "churn_per_s": args.rate,
                  "poll_interval_s": args.poll, "spacing_s": args.spacing, "outage_s": round(run.outage, 1),
                  "faults": args.faults, "reminders": not args.no_reminders, "seed": args.seed},
        "churn": {"ops": dict(Counter(op.kind for op in churn.ops)), "errors": len(churn.errors),
                  "error_examples": churn.errors[:3], "open_at_start": churn.target, "open_at_end": len(run.truth)},
        "faults": [{"scene": w.scene, "at_s": round(w.start - run.t0, 1), "for_s": round(w.end - w.start, 1),
                    "detail": w.detail} for w in scenes.windows],
        "skipped": scenes.skipped,
        "settle": run.settle | {"final_backlog": run.final_backlog},
        "events": dict(Counter(kind for kind, _ in ledger.events.values())),
        "events_not_routed_to_every_receiver": dict(not_routed),
        "deliveries": {name: checks.deliveries(name, ledger, got) for name, got in gots.items()},
        "operations_alerts": checks.deliveries("ops", ledger, ops_got),
        "end_state": {name: checks.end_state(got, run.truth, name == "hook") for name, got in gots.items()},
        "implied": checks.implied(churn.ops, calm_ops, gots),
        "latency": {name: checks.latency(ledger, name, LEASE_S) for name in (*checks.RECEIVERS, "ops")},
        "receiver_refusals": {"slack": r.slack.refused, "hook": r.hook.refused},
        "memory": checks.memory(service.samples, run.t0, run.t0 + args.duration),
        "logs": checks.scan_logs([life.log for life in service.lives], run.keys),
        "metrics_last_process": checks.parse_metrics(run.metrics_text),
        "service": {"lives": len(service.lives), "exit_codes": [life.exit_code for life in service.lives],
                    "sigterm_exit": run.sigterm_exit},
    }  # fmt: skip
    result["checks"] = _verdict(args, result)
    result["passed"] = all(c["ok"] is not False for c in result["checks"].values() if c["fails_run"])
    return result


def _verdict(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    bad: list[str] = []
    if not res["settle"]["settled"]:
        bad.append("the service did not settle")
    for name, d in [*res["deliveries"].items(), ("ops", res["operations_alerts"])]:
        for k in ("missing", "missing_notifications", "duplicates", "unexpected", "routed_twice", "folded"):
            if d.get(k):
                bad.append(f"{name}: {k} {d[k]}")
        other = {s: n for s, n in d["ledger_status"].items() if s != "sent"}
        if other:
            bad.append(f"{name}: ledger {other}")
    for name, e in res["end_state"].items():
        if e["mismatches"]:
            bad.append(f"{name}: end state differs from the simulator in {e['mismatches']} actions")
    for name, n in res["implied"]["missing"].items():
        if n:
            bad.append(f"{name}: {n} calm operations never arrived")
    if res["events_not_routed_to_every_receiver"]:
        bad.append(f"events not routed to every receiver: {res['events_not_routed_to_every_receiver']}")
    mem = res["memory"]
    mem_bad: list[str] = []
    judged = mem.get("window_s", 0) > 0
    if judged and mem["rss_growth_fit_mb"] > args.max_rss_growth:
        mem_bad.append(f"RSS grew {mem['rss_growth_fit_mb']} MB over {mem['window_s']} s")
    if judged and mem["fds_last"] - mem["fds_first"] > args.max_fd_growth:
        mem_bad.append(f"descriptors {mem['fds_first']} -> {mem['fds_last']}")
    logs = res["logs"]
    return {
        "exactly_once": {"ok": not bad, "fails_run": True, "problems": bad},
        "flat_memory": {"ok": (not mem_bad) if judged else None, "fails_run": True, "problems": mem_bad},
        "no_secrets_in_logs": {"ok": not logs["secrets_found"], "fails_run": True,
                               "problems": [f"{k} x{n}" for k, n in logs["secrets_found"].items()]},
        "json_logs": {"ok": logs["non_json_lines"] == 0, "fails_run": args.require_json_logs,
                      "problems": [f"{logs['non_json_lines']} of {logs['lines']} lines are not JSON"]
                      if logs["non_json_lines"] else []},
    }  # fmt: skip


def summary(res: dict[str, Any]) -> str:
    lines = [f"soak: {res['duration_s']:g} s on {res['store']}, churn {res['churn']['ops']}, "
             f"{len(res['faults'])} faults, settled after {res['settle']['seconds']} s"]  # fmt: skip
    for name, d in [*res["deliveries"].items(), ("ops", res["operations_alerts"])]:
        lines.append(
            f"  {name:6} {d['notifications']:5} notifications {d['events']:5} events  missing {d['missing']}"
            f"  duplicates {d['duplicates']}  resends {d['resends']}  ledger {d['ledger_status']}"
        )
    for name, e in res["end_state"].items():
        lines.append(f"  {name:6} end state: {e['open_as_told']} told open / {e['open_in_simulator']} in the "
                     f"simulator, mismatches {e['mismatches']}")  # fmt: skip
    imp = res["implied"]
    lines.append(f"  calm ops {imp['calm_ops']}/{sum(imp['ops'].values())}, missing {imp['missing']}")
    for name, lat in res["latency"].items():
        if lat.get("sent"):
            lines.append(f"  {name:6} latency p50 {lat['p50_s']} s  p99 {lat['p99_s']} s  max {lat['max_s']} s"
                         f"  waited a lease: {lat['over_lease']}")  # fmt: skip
    m = res["memory"]
    if m.get("window_s"):
        lines.append(f"  RSS {m['rss_first_mb']} -> {m['rss_last_mb']} MB over the last {m['window_s']} s "
                     f"({m['rss_slope_mb_per_hour']} MB/h), fds {m['fds_first']} -> {m['fds_last']}")  # fmt: skip
    for life, f in m["lives"].items():
        lines.append(f"  process {life}: RSS {f['rss_first_mb']} -> {f['rss_last_mb']} MB (max {f['rss_max_mb']}), "
                     f"fds max {f['fds_max']}, {f['samples']} samples")  # fmt: skip
    lg = res["logs"]
    lines.append(f"  logs: {lg['lines']} lines, {lg['non_json_lines']} not JSON, {lg['error_lines']} errors, "
                 f"secrets found: {lg['secrets_found'] or 'none'}")  # fmt: skip
    for name, c in res["checks"].items():
        verdict = "n/a" if c["ok"] is None else "ok" if c["ok"] else "FAIL"
        lines.append(f"  {name}: {verdict}" + (f" ({'; '.join(c['problems'])})" if c["problems"] else ""))
    lines.append("PASSED" if res["passed"] else "FAILED")
    return "\n".join(lines)
