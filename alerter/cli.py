"""Thin command line: parse, call, set the exit code. Every user error is one stderr line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from alerter.errors import AlerterError, ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with one line
        self.exit(EXIT_USAGE, f"alerter: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="alerter", description=__doc__)
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("-c", "--config", required=True, help="config file (YAML)")
        return sp

    with_config("run", "run the service: polls, reminders, delivery, HTTP")
    once = with_config("once", "one cycle, then deliver what it produced")
    once.add_argument("--deadline", type=float, default=60.0, help="seconds to retry delivery")
    with_config("check", "validate config and rules, render every template")

    rules = sub.add_parser("rules", help="rule tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, parser_class=_Parser)
    rt = rules_sub.add_parser("test", help="events, rules and messages from snapshot A to B")
    rt.add_argument("-c", "--config", required=True)
    rt.add_argument("--before", required=True, help="JSON: a search response or a list of meters")
    rt.add_argument("--after", required=True)
    rt.add_argument("--now", help="ISO time to evaluate at (default: now)")

    sim = sub.add_parser("sim", help="a local Leap API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--meters", type=int, default=1000)
    sim.add_argument("--action-rate", type=float, default=0.05)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--api-key", default="sim-key")

    demo = sub.add_parser("demo", help="simulator + service + console receiver on loopback")
    demo.add_argument("--meters", type=int, default=3000)
    demo.add_argument("--port", type=int, default=0, help="simulator port (0: any free port)")
    demo.add_argument("--state", default=None, help="state URL (default: a temporary SQLite file)")

    sil = sub.add_parser("silence", help="silence events matching a matcher")
    sil_sub = sil.add_subparsers(dest="silence_command", required=True, parser_class=_Parser)
    sa = sil_sub.add_parser("add")
    sa.add_argument("-c", "--config", required=True)
    sa.add_argument("matchers", nargs="+", help="field=value, field=~regex, field!=value")
    sa.add_argument("--duration", default="24h")
    sa.add_argument("--reason", required=True)
    sa.add_argument("--author", default="")
    sl = sil_sub.add_parser("list")
    sl.add_argument("-c", "--config", required=True)
    sl.add_argument("--all", action="store_true", help="include expired silences")
    se = sil_sub.add_parser("expire")
    se.add_argument("-c", "--config", required=True)
    se.add_argument("id")

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    for name in ("list", "replay"):
        d = dlq_sub.add_parser(name)
        d.add_argument("-c", "--config", required=True)
        d.add_argument("--receiver")
        d.add_argument("--since", help="ISO time or a duration ago, e.g. 24h")

    rcv = sub.add_parser("receivers", help="receiver state")
    rcv_sub = rcv.add_subparsers(dest="receivers_command", required=True, parser_class=_Parser)
    rl = rcv_sub.add_parser("list")
    rl.add_argument("-c", "--config", required=True)
    ren = rcv_sub.add_parser("enable", help="re-enable a receiver disabled by a 410")
    ren.add_argument("-c", "--config", required=True)
    ren.add_argument("name")

    from alerter.leapwebhooks import add_parser as add_leap_webhooks

    add_leap_webhooks(sub, _Parser)

    hist = with_config("history", "a meter's transitions and where they went")
    hist.add_argument("--meter", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from alerter import commands

        return commands.dispatch(args)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except AlerterError as err:
        if args.verbose:
            raise
        print(f"alerter: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
