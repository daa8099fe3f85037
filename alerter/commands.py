"""What each command does, in terms of the composition root; cli.py only parses."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from alerter.config import parse_duration
from alerter.errors import AlerterError

EXIT_OK, EXIT_USAGE = 0, 2


def _now() -> datetime:
    return datetime.now(UTC)


def dispatch(args: argparse.Namespace) -> int:
    from alerter import logs

    logs.configure("console", "debug" if args.verbose else "warning")
    command = args.command
    if command == "sim":
        from alerter import sim

        sim.serve(
            host=args.host,
            port=args.port,
            meters=args.meters,
            action_rate=args.action_rate,
            seed=args.seed,
            api_key=args.api_key,
            churn=args.churn,
        )
        return EXIT_OK
    if command == "demo":
        from alerter import demo

        return demo.main(meters=args.meters, port=args.port, state=args.state)
    if command == "check":
        from alerter import checking

        return checking.check(args.config)
    if command == "rules":
        from alerter import checking

        return checking.rules_test(args.config, args.before, args.after, args.now)
    if command == "leap-webhooks":
        from alerter import leapwebhooks

        return leapwebhooks.main(args)
    if command == "run":
        from alerter.runtime import run_service

        return run_service(args.config, verbose=args.verbose)
    if command == "once":
        from alerter.oneshot import once

        return once(args.config, deadline=args.deadline, verbose=args.verbose)
    handler = _STATE_COMMANDS.get(command)
    if handler is None:
        raise AlerterError(f"unknown command: {command}")
    return asyncio.run(_with_store(args.config, lambda store, cfg: handler(store, cfg, args)))


async def _with_store(config_path: str, fn: Callable[[Any, Any], Awaitable[int]]) -> int:
    from alerter.config import load_config
    from alerter.store import open_store

    loaded = load_config(config_path)
    store = open_store(loaded.state.url, shared=True)
    await store.open()
    try:
        return await fn(store, loaded)
    finally:
        await store.close()


def _fmt(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if dt else "-"


async def _silence(store: Any, loaded: Any, args: argparse.Namespace) -> int:
    from alerter.matchers import parse_silence_matchers
    from alerter.models import Silence

    now = _now()
    if args.silence_command == "add":
        try:
            matchers = parse_silence_matchers(args.matchers)
            ends = now + parse_duration(args.duration)
        except ValueError as err:
            print(f"alerter: {err}", file=sys.stderr)
            return EXIT_USAGE
        silence = Silence(
            id=uuid.uuid4().hex[:12],
            matchers=matchers,
            starts_at=now,
            ends_at=ends,
            reason=args.reason,
            created_by=args.author,
            created_at=now,
        )
        await store.add_silence(silence)
        print(f"{silence.id}  until {_fmt(ends)}  {args.reason}")
        return EXIT_OK
    if args.silence_command == "list":
        silences = await store.list_silences(now, include_expired=args.all)
        if not silences:
            print("no silences")
        for s in silences:
            status = "pending" if now < s.starts_at else "active" if now < s.ends_at else "expired"
            shown = " ".join(matcher_args(s.matchers))
            print(f"{s.id}  {status:7}  until {_fmt(s.ends_at)}  {shown}  # {s.reason}")
        return EXIT_OK
    if await store.expire_silence(args.id, now):
        print(f"expired {args.id}")
        return EXIT_OK
    print(f"alerter: no active silence {args.id!r}", file=sys.stderr)
    return EXIT_USAGE


async def _dlq(store: Any, loaded: Any, args: argparse.Namespace) -> int:
    since = args.since
    if args.dlq_command == "list":
        rows = await store.dead_letters(args.receiver, since)
        if not rows:
            print("no dead letters")
        for d in rows:
            print(
                f"{d.notification.id}  {d.receiver}  attempts={d.attempts}  "
                f"events={len(d.notification.events)}  {d.last_error or ''}"
            )
        return EXIT_OK
    count = await store.replay_dead_letters(_now(), args.receiver, since)
    print(f"replayed {count} dead letter(s); the running service delivers them")
    return EXIT_OK


async def _receivers(store: Any, loaded: Any, args: argparse.Namespace) -> int:
    disabled = await store.disabled_receivers()
    if args.receivers_command == "list":
        for name in loaded.ruleset.receivers:
            reason = disabled.get(name)
            print(f"{name}  {'disabled: ' + reason if reason else 'enabled'}")
        return EXIT_OK
    if args.name not in loaded.ruleset.receivers:
        print(f"alerter: no receiver named {args.name!r} in the rules", file=sys.stderr)
        return EXIT_USAGE
    await store.set_receiver_disabled(args.name, None, _now())
    print(f"enabled {args.name}" + (" (was disabled)" if args.name in disabled else ""))
    return EXIT_OK


async def _history(store: Any, loaded: Any, args: argparse.Namespace) -> int:
    """A meter's transitions, by meter id or by the `partner_reference` notifications show."""
    from alerter.templates import changes

    by_id = await store.history(args.meter)
    found = [(args.meter, by_id)] if by_id else []
    if not found:
        found = [(m, await store.history(m)) for m in await store.meters_by_reference(args.meter)]
    if not found:
        print(f"no history for meter {args.meter} (neither a meter id nor a partner_reference seen here)")
        return EXIT_OK
    for meter_id, entries in found:
        if meter_id != args.meter or len(found) > 1:
            print(f"meter {meter_id} ({args.meter})")
        for entry in entries:
            ob = entry.event.obligation
            detail = f" ({entry.event.detail})" if entry.event.detail else ""
            what = "".join(f"  {c}" for c in changes(entry.event))
            print(
                f"{_fmt(entry.at)}  {entry.event.kind}{detail}  {ob.action_type}/{ob.action_code}  "
                f"{ob.program_identifier} {ob.delivery_period}{what}"
            )
            for outcome in entry.outcomes:
                print(f"    {outcome}")
    return EXIT_OK


def matcher_args(matchers: dict[str, Any]) -> list[str]:
    """A silence's matchers as the arguments `silence add` takes (`tags=~vip`), quoted for a shell."""
    out = []
    for name, spec in matchers.items():
        if isinstance(spec, dict) and len(spec) == 1 and "regex" in spec:
            arg = f"{name}=~{spec['regex']}"
        elif isinstance(spec, dict) and len(spec) == 1 and "not" in spec and not isinstance(spec["not"], list | dict):
            arg = f"{name}!={spec['not']}"
        elif isinstance(spec, str):
            arg = f"{name}={spec}"
        else:  # a form `silence add` does not write (e.g. made through the API): its value as JSON
            arg = f"{name}={orjson.dumps(spec).decode()}"
        out.append(shlex.quote(arg) if _SHELL_SPECIAL.search(arg) else arg)
    return out


_SHELL_SPECIAL = re.compile(r"[\s'\"`$\\;&|<>()*?\[\]{}#]")


_STATE_COMMANDS: dict[str, Callable[[Any, Any, argparse.Namespace], Awaitable[int]]] = {
    "silence": _silence,
    "dlq": _dlq,
    "receivers": _receivers,
    "history": _history,
}
