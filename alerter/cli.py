"""The `alerter` command line: arguments are parsed and checked here, commands.py does the work.

Every user error is one line on stderr: bad usage or input exits 2, a failure to run (a busy
port, an unreachable source) exits 1; `--verbose` (before or after the subcommand) shows more.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

from alerter import earlystop
from alerter.errors import AlerterError, ConfigError, NoStateError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DESCRIPTION = """\
alerter watches Leap's partner API for meters that need the partner to act and tells the right
people (Slack, email, webhooks) exactly once per change: when an action opens, changes, comes
due or is resolved.

Start with `alerter demo` (a simulated Leap API and a console receiver, nothing to configure);
`alerter check -c CONFIG` validates a config and its rules; `alerter run -c CONFIG` runs the
service."""


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return metadata.version("alerter")
    except metadata.PackageNotFoundError:
        from alerter import __version__

        return __version__


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == "" or default == argparse.SUPPRESS or action.required:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # usage errors exit 2 with one line
        self.exit(EXIT_USAGE, f"alerter: {message}\n")


class _SubParser(_Parser):
    """A subcommand's parser: also takes `--verbose` after the subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
        )


# -- argument types: a bad value is a usage error naming the option (exit 2) --


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _number_in(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _positive_duration(text: str) -> timedelta:
    from alerter.durations import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return value


def _instant(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} (e.g. 2026-11-28T10:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _since(text: str) -> datetime:
    """An ISO time, or a duration ago (`24h`)."""
    from alerter.durations import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        return _instant(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not an ISO time or a duration: {text!r} (e.g. 24h, 7d or 2026-11-28T10:00:00Z)"
        ) from None


def _state_url(text: str) -> str:
    from pydantic import ValidationError

    from alerter.config import StateConfig

    try:
        StateConfig(url=text)
    except ValidationError as err:
        raise argparse.ArgumentTypeError(str(err.errors()[0]["msg"]).removeprefix("Value error, ")) from None
    return text


PORT = _int_in(0, 65535)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="alerter", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"alerter {version()}", help="print the version and exit")
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubParser, metavar="COMMAND")

    def config_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", required=True, help="config file (YAML)")

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        config_option(sp)
        return sp

    with_config("run", "run the service: polls, reminders, delivery, HTTP")
    once = with_config("once", "one cycle, then deliver what it produced")
    once.add_argument(
        "--deadline", type=_number_in(0), default=60.0, help="seconds to retry transient delivery failures"
    )
    with_config("check", "validate config and rules, render every template")

    rules = sub.add_parser("rules", help="rule tools", description="rule tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, parser_class=_SubParser, metavar="COMMAND")
    rt_help = "offline: the events from snapshot A to B, the rules they hit and the messages; sends nothing"
    rt = rules_sub.add_parser("test", help=rt_help, description=rt_help)
    config_option(rt)
    rt.add_argument("--before", required=True, help="snapshot A, JSON: a search response or a list of meters")
    rt.add_argument("--after", required=True, help="snapshot B, same format as --before")
    rt.add_argument("--now", type=_instant, help="ISO time to evaluate at (default: the current time)")

    sim_help = "a local Leap API simulator (search and get enrollment)"
    sim = sub.add_parser("sim", help=sim_help, description=sim_help)
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=PORT, default=8099, help="port to listen on (0: any free port)")
    sim.add_argument("--meters", type=_int_in(1), default=1000, help="meters in the simulated portfolio")
    sim.add_argument(
        "--action-rate", type=_number_in(0, 1), default=0.05, help="share of meters needing partner action, 0 to 1"
    )
    sim.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same portfolio")
    sim.add_argument("--api-key", default="sim-key", help="the API key the simulator accepts (as a Bearer token)")
    sim.add_argument("--churn", type=_number_in(0), default=0.0, help="partner changes a second (0: static)")

    demo_help = "simulator + service + console receiver on loopback: nothing to configure"
    demo = sub.add_parser("demo", help=demo_help, description=demo_help)
    demo.add_argument("--meters", type=_int_in(1), default=3000, help="meters in the simulated portfolio")
    demo.add_argument("--port", type=PORT, default=0, help="simulator port (0: any free port)")
    demo.add_argument("--state", type=_state_url, default=None, help="state URL (default: a temporary SQLite file)")

    sil = sub.add_parser("silence", help="silence events matching a matcher", description="silences")
    sil_sub = sil.add_subparsers(dest="silence_command", required=True, parser_class=_SubParser, metavar="COMMAND")
    sa = sil_sub.add_parser("add", help="silence matching events for a while", description="add a silence")
    config_option(sa)
    sa.add_argument("matchers", nargs="+", help="field=value, field=~regex, field!=value (all must match)")
    sa.add_argument("--duration", type=_positive_duration, default="24h", help="how long, e.g. 2h, 7d")
    sa.add_argument("--reason", required=True, help="why (shown in `silence list` and history)")
    sa.add_argument("--author", default="", help="who added it")
    sl = sil_sub.add_parser("list", help="active silences", description="list silences")
    config_option(sl)
    sl.add_argument("--all", action="store_true", help="include expired silences")
    se = sil_sub.add_parser("expire", help="end a silence now", description="end a silence now")
    config_option(se)
    se.add_argument("id", help="the silence id (from `silence list`)")

    dlq = sub.add_parser("dlq", help="dead letters", description="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_SubParser, metavar="COMMAND")
    dlq_help = {"list": "list dead letters", "replay": "queue dead letters again for the running service"}
    for name, help_ in dlq_help.items():
        d = dlq_sub.add_parser(name, help=help_, description=help_)
        config_option(d)
        d.add_argument("--receiver", help="only this receiver's (default: every receiver's)")
        d.add_argument("--since", type=_since, help="ISO time or a duration ago, e.g. 24h (default: all)")

    rcv = sub.add_parser("receivers", help="receiver state", description="receiver state")
    rcv_sub = rcv.add_subparsers(dest="receivers_command", required=True, parser_class=_SubParser, metavar="COMMAND")
    rl = rcv_sub.add_parser("list", help="each receiver, enabled or disabled", description="list receivers")
    config_option(rl)
    ren_help = "re-enable a receiver disabled by a 410"
    ren = rcv_sub.add_parser("enable", help=ren_help, description=ren_help)
    config_option(ren)
    ren.add_argument("name", help="the receiver's name in the rules")

    from alerter.leapwebhooks import add_parser as add_leap_webhooks

    add_leap_webhooks(sub, _SubParser)

    hist = with_config("history", "a meter's transitions and where they went")
    hist.add_argument("--meter", required=True, help="the meter id or its partner_reference")

    hp_help = "read a console password on stdin, print its hash for http.auth"
    sub.add_parser("hash-password", help=hp_help, description=hp_help)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if next((a for a in given if not a.startswith("-")), None) == "run":  # the command, not a value
        # a reload asked for while the service starts (imports, migrations) must not kill it, as
        # SIGHUP's default action would: ignored until the service's own handler replaces this
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        earlystop.note_stops()  # and a stop meanwhile is honoured once it can be, not fatal
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        from alerter.console.auth import hash_password_command

        return hash_password_command()
    try:
        from alerter import commands

        return commands.dispatch(args)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except NoStateError as err:
        print(f"alerter: {err}", file=sys.stderr)
        return EXIT_USAGE
    except AlerterError as err:
        if args.verbose:
            raise
        print(f"alerter: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        from alerter import logs

        if args.verbose or not logs.json_mode():
            raise
        import structlog

        # the log stream stays JSON: the traceback is the `exception` field of one line
        structlog.get_logger("alerter.cli").exception("command_crashed", command=args.command)
        return EXIT_FAILURE
