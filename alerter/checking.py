"""`alerter check` and `alerter rules test`: offline tools over exactly the loaders the service uses."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from msgspec.structs import replace
from pydantic import ValidationError

from alerter.config import Config, load_config
from alerter.diff import diff_records, resolve
from alerter.errors import ConfigError
from alerter.grouping import flush, plan
from alerter.models import Event, Notification, ObligationKey, Record
from alerter.render.console import summary
from alerter.render.email import render_email
from alerter.render.samples import check_templates, sample_notifications
from alerter.render.slack import render_slack
from alerter.render.webhook import webhook_body
from alerter.routes import Router
from alerter.rulefile import check_warnings
from alerter.store.memory import GroupBook

EXIT_OK, EXIT_USAGE = 0, 2


def check(config_path: str) -> int:
    """Validate config and rules, render every template against sample events."""
    config = load_config(config_path)  # ConfigError -> FILE:LINE:COL lines, exit 2 (cli.py)
    rs = config.ruleset
    problems: list[str] = []
    for name, receiver in rs.receivers.items():
        where = rs.where.get(f"receiver:{name}", str(config.path))
        problems += [f"{where}: {p}" for p in check_templates([(name, receiver)])]
    if config.operations_receiver and config.operations_receiver not in rs.receivers:
        problems.append(
            f"{config.path}:1:1: operations_receiver '{config.operations_receiver}' is not a receiver "
            f"of the rules files ({', '.join(sorted(rs.receivers)) or 'none defined'})"
        )
    for warning in check_warnings(rs):
        if config.operations_receiver and f"receiver '{config.operations_receiver}' is not used" in warning:
            continue
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{config.path}: ok ({len(rs.rules)} rule(s), {len(rs.receivers)} receiver(s), "
        f"templates rendered for {len(sample_notifications(datetime.now(UTC)))} samples)"
    )
    return EXIT_OK


def _snapshot(path: str) -> list[Record]:
    try:
        data: Any = orjson.loads(Path(path).read_bytes())
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from err
    except orjson.JSONDecodeError as err:
        raise ConfigError([f"{path}: not JSON: {err}"]) from err
    meters = data.get("meters") if isinstance(data, dict) else data
    if not isinstance(meters, list):
        raise ConfigError([f'{path}: expected a search response ({{"meters": [...]}}) or a list of meters'])
    records: list[Record] = []
    problems: list[str] = []
    for i, item in enumerate(meters):
        try:
            records.append(Record.model_validate(item))
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            problems.append(f"{path}: meters[{i}].{loc}: {first['msg']}")
    if problems:
        raise ConfigError(problems)
    return records


def snapshot_events(before: list[Record], after: list[Record], now: datetime) -> list[Event]:
    """The events going from snapshot A to B; a meter absent from B has no partner actions."""
    baseline = diff_records(before, {}, now)
    prior: dict[ObligationKey, Any] = {ob.key: ob for ob in baseline.obligations}
    result = diff_records(after, prior, now)
    listed = {r.meter_id for r in after}
    gone = [resolve(ob, "reconcile", now) for ob in prior.values() if ob.meter_id not in listed]
    return [*result.events, *gone]


def render(n: Notification, config: Config, now: datetime) -> str:
    receiver = config.ruleset.receivers.get(n.receiver)
    channel = receiver.channel if receiver else "console"
    if receiver is not None and receiver.slack is not None:
        msg = render_slack(n, receiver.slack, now)
        failed = f"template failed ({msg.template_error}); the built-in message:\n" if msg.template_error else ""
        return f"{failed}text: {msg.text}\nblocks: {orjson.dumps(msg.blocks).decode()}"
    if receiver is not None and receiver.email is not None:
        mail = render_email(n, receiver.email, now)
        failed = f"template failed ({mail.template_error}); the built-in mail:\n" if mail.template_error else ""
        return f"{failed}Subject: {mail.subject}\n\n{mail.text}"
    if channel == "webhook":
        return orjson.dumps(webhook_body(n, now), option=orjson.OPT_INDENT_2).decode()
    return summary(n, now)


def _as_opened(ev: Event) -> Event:
    """The opening of an event's obligation, as it was routed when it opened."""
    if ev.kind == "opened":
        return ev
    ob = replace(ev.obligation, status="open", resolution=None, resolved_at=None)
    return Event(id=f"{ev.id}-opening", kind="opened", occurred_at=ob.opened_at, obligation=ob)


def rules_test(config_path: str, before: str, after: str, at: datetime | None) -> int:
    config = load_config(config_path)
    now = at or datetime.now(UTC)
    events = snapshot_events(_snapshot(before), _snapshot(after), now)
    router = Router(config.ruleset)
    # Resolutions go only to receivers told of the opening, as the service sends them: here,
    # those the opening would have been routed to (the service's record of it is not at hand)
    told = {ev.obligation.key_id: {t.receiver for t in router.route(_as_opened(ev), now)} for ev in events}
    print(f"{len(events)} event(s)")
    for ev in events:
        ob = ev.obligation
        matched = router.route(ev, now)
        # a resolution goes out only where the rule says send_resolved, to a receiver told of the opening
        targets = (
            [t for t in matched if t.rule.send_resolved and t.receiver in told[ob.key_id]]
            if ev.kind == "resolved"
            else matched
        )
        detail = f" ({ev.detail})" if ev.detail else ""
        label = ob.meter.partner_reference or ob.meter_id
        print(
            f"- {ev.kind}{detail}: meter {label}"
            f" {ob.action_type}/{ob.action_code} {ob.program_identifier} {ob.delivery_period}"
        )
        if not targets:
            print(
                "    no rule with send_resolved matches a receiver told of the opening: not notified"
                if matched
                else "    no rule matches: not notified"
            )
        for t in targets:
            print(f"    rule {t.rule.name} -> receiver {t.receiver}")
    write = plan(events, router, {}, told, (), now)
    book = GroupBook()
    book.apply(write)
    by_id = {e.id: e for e in events}
    notes = [*write.notifications, *flush(book.groups(), by_id, now, ruleset=config.ruleset, force=True).notifications]
    print(f"\n{len(notes)} notification(s)")
    for n in notes:
        print(f"\n=== {n.receiver} (rule {n.rule}, {len(n.events)} event(s)) ===")
        print(render(n, config, now))
    return EXIT_OK
