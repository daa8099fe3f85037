"""Rendering: Slack Block Kit limits and folding, email parts, the webhook body, digests, `check_templates`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from msgspec.structs import replace

from alerter import templates
from alerter.models import Notification
from alerter.receivers import EmailConfig, SlackConfig
from alerter.render import slack_blocks
from alerter.render.email import render_email
from alerter.render.samples import check_templates, sample_notifications
from alerter.render.slack import render_slack
from alerter.render.webhook import webhook_body
from alerter.store import packing, rows
from tests.support.notifications import T0, event, notification

DAY = timedelta(days=1)


def slack_cfg(**over: Any) -> SlackConfig:
    return SlackConfig.model_validate({"token": "t", "channel": "#c"} | over)


def email_cfg(**over: Any) -> EmailConfig:
    return EmailConfig.model_validate({"to": ["a@x"], "from": "b@x", "smtp": {"host": "h"}} | over)


@pytest.mark.parametrize(
    ("offset", "text"),
    [(3 * DAY, "in 3 days"), (-2 * DAY, "overdue by 2 days"), (timedelta(hours=5), "in 5 hours"),
     (timedelta(minutes=-30), "overdue by 30 minutes"), (DAY, "in 24 hours"), (None, "no deadline")],
)  # fmt: skip
def test_relative_deadline(offset: timedelta | None, text: str) -> None:
    assert templates.relative(None if offset is None else T0 + offset, T0) == text


def test_slack_message_names_meters_and_links_to_the_portal() -> None:
    n = notification("n", [event(1), event(2, partner_reference=""), event(3, deadline=T0 - 2 * DAY)])
    msg = render_slack(n, slack_cfg(portal_url="https://portal.example/"), T0)
    assert msg.text.startswith("3 meters need IS_AUTHORIZED: ACME-0001, meter-0002, ACME-0003")
    header, ctx, *sections = msg.blocks
    assert header["text"]["text"] == "3 meters need IS_AUTHORIZED" and ctx["type"] == "context"
    assert sections[0]["accessory"]["url"] == "https://portal.example/meters/meter-0001"
    assert "in 3 days" in sections[0]["text"]["text"] and "overdue by 2 days" in sections[2]["text"]["text"]
    assert "`AUTH_0001`" in sections[0]["text"]["text"] and "CAISO_DRAM" in sections[0]["text"]["text"]


def test_slack_folds_beyond_fifty_blocks_and_caps_section_text() -> None:
    long = replace(event(0).obligation, action_description="x" * 5000)
    events = [replace(event(0), obligation=long), *[event(i) for i in range(1, 120)]]
    msg = render_slack(notification("n", events), None, T0)
    assert len(msg.blocks) == 50 and slack_blocks.limit_problems(msg.text, msg.blocks) == []
    assert msg.blocks[-1]["elements"][0]["text"].startswith("+73 more: ACME-0047")
    long_text = msg.blocks[2]["text"]["text"]  # the description is cut, the lines after it stay
    assert len(long_text) <= 3000 and "x" * 1800 in long_text
    assert long_text.endswith("Deadline 2026-12-01 10:00 UTC (in 3 days)"), long_text[-200:]
    assert msg.text.endswith(", ACME-0119") and "more" not in msg.text  # the text names each meter


def test_a_description_of_control_characters_is_cut_between_entities() -> None:
    long = replace(event(0).obligation, action_description="a&b<" * 2000)
    text = render_slack(notification("n", [replace(event(0), obligation=long)]), None, T0).blocks[2]["text"]["text"]
    description = text.splitlines()[1]
    assert description.endswith(("&amp;b&lt;…", "a&amp;b…", "a&amp;…", "a…")), description[-30:]
    assert "Deadline" in text and len(text) <= 3000


def test_the_text_names_every_meter_escaped_within_its_limit() -> None:
    events = [event(i, partner_reference=f"AT&T & Sons <site {i}> & Co") for i in range(1000)]
    text = render_slack(notification("n", events), None, T0).text
    assert len(text) <= 40_000 and text.endswith("more"), text[-80:]
    assert "<" not in text.split(":", 1)[1] and "&lt;site 0&gt;" in text


def test_slack_escapes_control_characters() -> None:
    msg = render_slack(notification("n", [event(1, partner_reference="<!channel> & co")]), None, T0)
    assert "&lt;!channel&gt; &amp; co" in msg.blocks[2]["text"]["text"]


def test_resolved_marking_is_idempotent_and_falls_back_to_a_note() -> None:
    n = notification("n", [event(1), event(2)])
    blocks = render_slack(n, None, T0).blocks
    kid = event(1).obligation.key_id
    once = slack_blocks.mark_resolved(blocks, {kid: "ACME-0001"}, "now")
    assert once[2]["text"]["text"].startswith(":white_check_mark: ~")
    assert "_Resolved now_" in once[2]["text"]["text"]
    noted = slack_blocks.mark_resolved(once, {"unknown": "ACME-9"}, "now")
    assert noted[-1]["block_id"] == slack_blocks.RESOLVED_BLOCK and "ACME-9" in noted[-1]["elements"][0]["text"]


def test_a_resolution_noted_on_a_full_message_keeps_its_more_list() -> None:
    blocks = render_slack(notification("n", [event(i) for i in range(120)]), None, T0).blocks
    assert len(blocks) == 50 and blocks[-1]["elements"][0]["text"].startswith("+73 more")
    folded = event(100).obligation.key_id  # one of the "+73 more"
    once = slack_blocks.mark_resolved(blocks, {folded: "ACME-0100"}, "now")
    twice = slack_blocks.mark_resolved(once, {event(101).obligation.key_id: "ACME-0101"}, "later")
    for marked in (once, twice):
        assert len(marked) == 50 and slack_blocks.limit_problems("", marked) == []
        texts = [e["text"] for e in marked[-1]["elements"]]
        assert texts[0].startswith("+73 more") and texts[-1].startswith(":white_check_mark: Resolved: ACME-0100")
    assert [e["text"] for e in twice[-1]["elements"]][-1].endswith("ACME-0100, ACME-0101")


def test_email_subject_text_and_escaped_html() -> None:
    n = notification("n", [event(1), event(2, partner_reference="<script>x</script>"), event(3)])
    mail = render_email(n, None, T0)
    assert mail.subject == "[alerter] 3 meters need IS_AUTHORIZED"
    assert "ACME-0001" in mail.text and "<script>x</script>" in mail.text
    assert "&lt;script&gt;" in mail.html and "<script>" not in mail.html


@pytest.mark.parametrize(
    ("kind", "title"),
    [("resolved", "Resolved: IS_AUTHORIZED on 1 meter"), ("reminder", "Reminder: 1 meter needs IS_AUTHORIZED"),
     ("changed", "Changed: 1 meter needs IS_AUTHORIZED"), ("opened", "1 meter needs IS_AUTHORIZED")],
)  # fmt: skip
def test_titles(kind: Any, title: str) -> None:
    assert templates.title(notification("n", [event(1, kind)])) == title


def test_digest_counts_by_type_region_and_deadline() -> None:
    events = [event(i, initial=True, deadline=T0 + (i - 1) * 5 * DAY) for i in range(4)]
    events.append(event(9, initial=True, action_type="MISSING_FIELDS"))
    n = notification("d", events, kind="digest")
    counts = templates.digest_counts(n.events, T0)
    assert counts["by_action_type"] == {"IS_AUTHORIZED": 4, "MISSING_FIELDS": 1}
    assert counts["by_region"] == {"CAISO": 3, "NYISO": 2}
    assert counts["by_deadline"] == {"overdue": 1, "within 7 days": 3, "within 30 days": 1}
    msg = render_slack(n, None, T0)
    assert msg.text.startswith(  # the text names each meter, the most urgent first
        "Initial sync: 5 open actions on 5 meters: ACME-0000, ACME-0001, ACME-0002, ACME-0003, ACME-0009. "
        "By action type: IS_AUTHORIZED 4"
    )
    mail = render_email(n, None, T0)
    assert "By deadline:" in mail.text and "overdue: 1" in mail.text


def test_a_digest_of_one_says_one_action_on_one_meter() -> None:
    n = notification("d", [event(1, initial=True)], kind="digest")
    assert render_slack(n, None, T0).text.startswith(
        "Initial sync: 1 open action on 1 meter: ACME-0001. By action type"
    )
    mail = render_email(n, None, T0)
    assert mail.subject.endswith("Initial sync: 1 open action on 1 meter")
    assert "1 open action on 1 meter." in mail.text and "1 open action on 1 meter." in mail.html


def test_slack_text_cannot_mention_or_link_from_meter_data() -> None:
    # the blocks escape what Leap sends; so must the text Slack shows in notifications
    n = notification("n", [event(1, partner_reference="<!channel> & <@U123>")])
    text = render_slack(n, None, T0).text
    assert "<!channel>" not in text and "<@U123>" not in text
    assert text.endswith("&lt;!channel&gt; &amp; &lt;@U123&gt;")


def test_an_alert_of_no_event_has_no_dangling_colon_in_slack_text() -> None:
    group = {"alert": "invalid_records", "status": "firing", "message": "invalid records skipped: site-2"}
    alert = Notification(id="a", kind="alert", rule="alerter-self", receiver="r", group=group, events=(), created_at=T0)
    text = render_slack(alert, None, T0).text
    assert "invalid records skipped: site-2" in text and not text.endswith(":")


def test_webhook_body_is_exactly_the_interface() -> None:
    changed = event(1, "changed", previous={"deadline": T0}, detail="")
    body = webhook_body(notification("n-1", [changed]))
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "alerter.notification" and body["timestamp"] == "2026-11-28T10:00:00Z"
    assert list(body["data"]) == ["id", "rule", "receiver", "group", "part", "events"]
    assert body["data"]["part"] == {"index": 1, "count": 1}
    [ev] = body["data"]["events"]
    assert ev["type"] == "action.changed" and ev["id"] == changed.id and ev["occurred_at"] == "2026-11-28T10:00:00Z"
    assert set(ev["action"]) == {"action_type", "action_code", "action_description", "program_identifier",
                                 "delivery_period", "enrollment_deadline_date_time"}  # fmt: skip
    assert ev["meter"]["partner_reference"] == "ACME-0001" and ev["previous"] == {"deadline": "2026-11-28T10:00:00Z"}
    digest = webhook_body(notification("d", [event(1, initial=True)], kind="digest"))
    assert digest["type"] == "alerter.digest" and digest["data"]["counts"]["total"] == 1


def test_samples_cover_every_kind_and_render_cleanly() -> None:
    samples = sample_notifications(T0)
    assert {e.kind for n in samples for e in n.events} == {"opened", "changed", "reminder", "resolved"}
    assert any(n.kind == "digest" for n in samples)
    assert check_templates([("ops", slack_cfg()), ("mail", SimpleNamespace(email=email_cfg(), slack=None))]) == []


def test_check_templates_reports_each_problem() -> None:
    problems = check_templates(
        [
            ("a", slack_cfg(template="{{ nope }}")),
            ("b", email_cfg(subject_template="{{ notification.missing }}")),
            ("c", slack_cfg(template="{% for i in range(20) %}{{ 'x' * 3000 }}{% endfor %}")),
            ("d", email_cfg(html_template="{{ ''.__class__.__mro__ }}")),
        ],
        now=T0,
    )
    joined = "\n".join(problems)
    assert "receiver a: slack template: 'nope' is undefined" in joined
    assert "receiver b: email template:" in joined and "missing" in joined
    assert "receiver c: slack message for sample" in joined and "text of 60000 characters" in joined
    assert "receiver d: email template:" in joined


def test_a_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="line 1"):
        email_cfg(text_template="{{ oops ")


def test_digest_counts() -> None:
    """The one place digest counts come from (Slack, email, console and the webhook `counts`)."""
    from tests.test_rules import NOW, make_event

    evs = [
        make_event(meter_id="M-1", deadline=NOW - timedelta(hours=1)),
        make_event(meter_id="M-1", action_code="X", deadline=NOW + timedelta(hours=12)),
        make_event(meter_id="M-2", action_type="DOCS", transmission_region="PJM", deadline=NOW + timedelta(days=3)),
        make_event(meter_id="M-3", transmission_region="", deadline=None),
        make_event(meter_id="M-4", deadline=NOW + timedelta(days=90)),
    ]
    s = templates.digest_counts(evs, NOW)
    assert s["total"] == 5 and s["meters"] == 4
    assert s["by_action_type"] == {"IS_AUTHORIZED": 4, "DOCS": 1}
    assert s["by_region"] == {"CAISO": 3, "PJM": 1, "(none)": 1}
    assert s["by_deadline"] == {"overdue": 1, "within 7 days": 2, "later": 1, "no deadline": 1}
    assert templates.digest_counts([], NOW)["total"] == 0


@pytest.mark.parametrize(
    ("kinds", "title"),
    [(["opened", "opened", "opened", "resolved"], "3 meters need IS_AUTHORIZED, 1 resolved"),
     (["opened", "changed"], "2 meters need IS_AUTHORIZED (1 new, 1 changed)"),
     (["changed", "resolved"], "Changed: 1 meter needs IS_AUTHORIZED, 1 resolved"),
     (["opened", "reminder", "resolved", "resolved"], "2 meters need IS_AUTHORIZED (1 new, 1 reminder), 2 resolved")],
)  # fmt: skip
def test_mixed_group_titles_count_what_they_hold(kinds: list[Any], title: str) -> None:
    events = [event(i, kind) for i, kind in enumerate(kinds, 1)]
    assert templates.title(notification("n", events)) == title


@pytest.mark.parametrize("old", [T0 - 7 * DAY, "2026-11-21T10:00:00+00:00", "2026-11-21T10:00:00Z"])
def test_a_change_reads_old_to_new_in_every_form_it_is_kept(old: Any) -> None:
    changed = event(1, "changed", previous={"deadline": old, "action_description": "Old text"})
    text, refs = rows.encode(changed), rows.event_refs(changed)
    row = dict(zip(("id", "meter_id", "key_id", "occurred_at"), refs, strict=True))
    stored = [rows.event_from_row(row | {"payload": p}) for p in (text, packing.pack(text.encode(), refs))]
    for e in (changed, *stored):  # fresh, and as each backend stores it
        assert templates.changes(e) == [
            "deadline 2026-11-21 10:00 UTC → 2026-12-01 10:00 UTC",
            "description “Old text” → “Customer must re-authorize”",
        ]
        [sent] = webhook_body(notification("n", [e]))["data"]["events"]
        assert sent["previous"] == {"deadline": "2026-11-21T10:00:00Z", "action_description": "Old text"}
    midnight = event(2, "changed", deadline=datetime(2027, 3, 8, tzinfo=UTC), previous={"deadline": None})
    assert templates.changes(midnight) == ["deadline none → 2027-03-08"]
    assert templates.changes(event(3, "opened")) == []
