"""Slack notifier against the fake Slack Web API: posts, threads, resolution updates, pacing, faults."""

from __future__ import annotations

import pytest

from alerter.errors import DeliveryError
from alerter.notifiers import build_notifier
from alerter.notifiers.base import Deferred
from alerter.notifiers.slack import RATE_LIMIT_LONGEST, SlackNotifier
from alerter.pacing import Pacers
from alerter.receivers import SlackConfig
from alerter.templates import named
from tests.support.channels import FakeSlack, fake_slack
from tests.support.clock import FakeClock, on_fake_time
from tests.support.notifications import T0, event, notification


def make(
    slack: FakeSlack, channel: str = "#leap-actions", pacers: Pacers | None = None, **over: object
) -> SlackNotifier:
    args = {"token": slack.token, "channel": channel, "api_url": slack.api_url, "min_interval": "50ms"}
    cfg = SlackConfig.model_validate(args | over)
    notifier = build_notifier("ops-slack", slack=cfg, pacers=pacers)
    assert isinstance(notifier, SlackNotifier)
    return notifier


class Threads:
    def __init__(self) -> None:
        self.roots: dict[str, str] = {}

    async def __call__(self, key_id: str) -> str | None:
        return self.roots.get(key_id)


async def test_post_names_each_meter_and_records_thread_roots() -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        n = notification("n1", [event(1), event(2, partner_reference="")])
        result = await notifier.send(n, Threads(), T0)
        await notifier.close()
    [call] = slack.posted()
    assert "ACME-0001" in call.args["text"] and "meter-0002" in call.args["text"]
    assert call.args["blocks"][0]["type"] == "header"
    assert result.external_id is not None and result.external_id.startswith("CLEAPACTION:")
    assert set(result.threads) == {e.obligation.key_id for e in n.events}


async def test_the_text_names_every_meter_of_a_large_notification() -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        await notifier.send(notification("n1", [event(i) for i in range(1, 61)]), Threads(), T0)
        await notifier.close()
    [call] = slack.posted()
    assert all(f"ACME-{i:04}" in call.args["text"] for i in range(1, 61)) and "more" not in call.args["text"]


def test_names_run_up_to_a_limit_then_say_how_many_more() -> None:
    names = [f"m{i}" for i in range(10)]
    assert named(names) == ", ".join(names)
    assert named(names, limit=14) == "m0, m1, m2, m3 and 6 more"  # the first four are 14 characters


async def test_resolution_updates_original_and_replies_in_thread() -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        threads = Threads()
        opened = notification("n1", [event(1), event(2)])
        first = await notifier.send(opened, threads, T0)
        threads.roots.update(first.threads)
        resolved = notification("n2", [event(1, "resolved")])
        result = await notifier.send(resolved, threads, T0)
        await notifier.close()
    channel, ts = str(first.external_id).split(":")
    [update] = slack.updates()
    assert (update.args["channel"], update.args["ts"]) == (channel, ts)
    sections = [b for b in update.args["blocks"] if b.get("block_id", "").startswith("ob-")]
    ticked = [b for b in sections if b["text"]["text"].startswith(":white_check_mark:")]
    assert len(ticked) == 1 and "ACME-0001" in ticked[0]["text"]["text"]
    reply = slack.posted()[-1]
    assert reply.args["thread_ts"] == ts and "Resolved" in reply.args["text"]
    assert result.threads == {}


async def test_a_resolution_grouped_with_other_events_still_ticks_its_original_and_replies_in_its_thread() -> None:
    # a group holds every kind of event: an opening and resolutions flushed together
    async with fake_slack() as slack:
        notifier = make(slack)
        threads = Threads()
        first = await notifier.send(notification("n1", [event(1), event(2)]), threads, T0)
        threads.roots.update(first.threads)
        mixed = notification("n2", [event(3), event(1, "resolved"), event(4, "resolved"), event(2, "reminder")])
        result = await notifier.send(mixed, threads, T0)
        await notifier.close()
    channel, ts = str(first.external_id).split(":")
    [update] = slack.updates()
    assert (update.args["channel"], update.args["ts"]) == (channel, ts)
    ticked = [b for b in update.args["blocks"] if b.get("text", {}).get("text", "").startswith(":white_check_mark:")]
    assert len(ticked) == 1 and "ACME-0001" in ticked[0]["text"]["text"]
    _, reply, post = slack.posted()
    assert reply.args["thread_ts"] == ts
    assert "ACME-0001" in reply.args["text"] and "ACME-0002" in reply.args["text"]
    assert "ACME-0003" not in reply.args["text"] and "ACME-0004" not in reply.args["text"]
    assert "thread_ts" not in post.args
    assert "ACME-0003" in post.args["text"] and "ACME-0004" in post.args["text"]
    assert set(result.threads) == {event(3).obligation.key_id}  # a resolution starts no thread


@pytest.mark.parametrize("refusal", ["cant_update_message", "edit_window_closed", "msg_too_long"])
async def test_an_original_slack_will_not_let_be_edited_still_gets_its_reply_and_the_rest_is_posted(
    refusal: str,
) -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        threads = Threads()
        first = await notifier.send(notification("n1", [event(1)]), threads, T0)
        threads.roots.update(first.threads)
        slack.fail(refusal, method="chat.update")
        result = await notifier.send(notification("n2", [event(1, "resolved"), event(3)]), threads, T0)
        await notifier.close()
    _, reply, post = slack.posted()
    assert reply.args["thread_ts"] == str(first.external_id).split(":")[1] and "ACME-0001" in reply.args["text"]
    assert "thread_ts" not in post.args and "ACME-0003" in post.args["text"]
    assert set(result.threads) == {event(3).obligation.key_id}


async def test_reminder_replies_in_thread_or_starts_one() -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        threads = Threads()
        first = await notifier.send(notification("n1", [event(1)]), threads, T0)
        threads.roots.update(first.threads)
        await notifier.send(notification("n2", [event(1, "reminder", detail="before:2d")]), threads, T0)
        loose = await notifier.send(notification("n3", [event(7, "reminder")]), threads, T0)
        await notifier.close()
    posts = slack.posted()
    assert posts[1].args["thread_ts"] == str(first.external_id).split(":")[1]
    assert "thread_ts" not in posts[2].args
    assert set(loose.threads) == {event(7).obligation.key_id}


async def test_rate_limit_with_retry_after_loses_nothing() -> None:
    clock = FakeClock()
    pacers = Pacers(clock, clock.sleep)
    async with fake_slack() as slack:
        slack.clock = clock
        notifier = make(slack, min_interval="50ms", pacers=pacers)
        slack.fail("ratelimited", times=2, retry_after=0.3)
        start = clock()
        await on_fake_time(
            clock, pacers, *(notifier.send(notification(f"n{i}", [event(i)]), Threads(), T0) for i in range(3))
        )
        await notifier.close()
    refused = [c.at - start for c in slack.calls if c.method == "chat.postMessage!ratelimited"]
    posted = [c.at - start for c in slack.posted()]
    # each 429 blocks the channel for its Retry-After, and the sends waiting meanwhile keep their pace
    assert refused == pytest.approx([0, 0.3]) and posted == pytest.approx([0.6, 0.65, 0.7])


async def test_long_retry_after_hands_back_to_delivery() -> None:
    async with fake_slack() as slack:
        notifier = make(slack, max_wait="1s")
        slack.fail("ratelimited", retry_after=30)
        with pytest.raises(Deferred) as err:
            await notifier.send(notification("n1", [event(1)]), Threads(), T0)
        await notifier.close()
    assert err.value.retryable and err.value.retry_after == 30


async def test_an_absurd_retry_after_holds_the_channel_back_an_hour_at_most() -> None:
    # a week (the most any Retry-After is read as) would dead-letter every message to the channel
    async with fake_slack() as slack:
        notifier = make(slack, max_wait="1s")
        slack.fail("ratelimited", retry_after=100000000000000)
        with pytest.raises(Deferred) as err:
            await notifier.send(notification("n1", [event(1)]), Threads(), T0)
        with pytest.raises(Deferred) as busy:  # the next message waits for the same turn
            await notifier.send(notification("n2", [event(2)]), Threads(), T0)
        await notifier.close()
    assert err.value.retry_after == RATE_LIMIT_LONGEST and 0 < (busy.value.retry_after or 0) <= RATE_LIMIT_LONGEST


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [("invalid_auth", False), ("channel_not_found", False), ("not_in_channel", False), ("is_archived", False),
     ("account_inactive", False), ("500", True), ("internal_error", True)],
)  # fmt: skip
async def test_error_classes(fault: str, retryable: bool) -> None:
    async with fake_slack() as slack:
        notifier = make(slack)
        slack.fail(fault)
        with pytest.raises(DeliveryError) as err:
            await notifier.send(notification("n1", [event(1)]), Threads(), T0)
        await notifier.close()
    assert err.value.retryable is retryable
    assert slack.token not in str(err.value)


async def test_connection_refused_is_retryable() -> None:
    async with fake_slack() as slack:
        url = slack.api_url
    cfg = SlackConfig.model_validate({"token": "xoxb-x", "channel": "#c", "api_url": url})
    notifier = SlackNotifier("s", cfg)
    with pytest.raises(DeliveryError) as err:
        await notifier.send(notification("n1", [event(1)]), Threads(), T0)
    await notifier.close()
    assert err.value.retryable


async def test_pacing_is_per_channel_and_a_hot_channel_does_not_stall_others() -> None:
    clock = FakeClock()
    pacers = Pacers(clock, clock.sleep)
    async with fake_slack() as slack:
        slack.clock = clock
        hot, cold = (make(slack, c, min_interval="200ms", pacers=pacers) for c in ("#hot", "#cold"))
        twin = make(slack, "#hot", min_interval="200ms", pacers=pacers)  # shares the #hot pacer
        start = clock()
        await on_fake_time(
            clock,
            pacers,
            *(hot.send(notification(f"h{i}", [event(i)]), Threads(), T0) for i in range(3)),
            *(twin.send(notification(f"t{i}", [event(i)]), Threads(), T0) for i in range(2)),
            cold.send(notification("c0", [event(9)]), Threads(), T0),
        )
        for n in (hot, cold, twin):
            await n.close()
    assert [c.at - start for c in slack.posted("#hot")] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert [c.at - start for c in slack.posted("#cold")] == [0]


async def test_custom_template_renders_text_and_blocks() -> None:
    async with fake_slack() as slack:
        notifier = make(slack, template="{{ count }} for {{ notification.rule }}: {{ meters | join(' ') }}")
        await notifier.send(notification("n1", [event(1), event(2)]), Threads(), T0)
        await notifier.close()
    [call] = slack.posted()
    assert call.args["text"] == "2 for rule-1: ACME-0001 ACME-0002"
    assert call.args["blocks"][1]["text"]["text"].startswith("2 for rule-1")


def test_config_rejects_a_broken_template() -> None:
    with pytest.raises(ValueError, match="template syntax error"):
        SlackConfig.model_validate({"token": "t", "channel": "#c", "template": "{% if %}"})


async def test_a_rate_limited_history_read_waits_its_retry_after() -> None:
    async with fake_slack() as slack:
        notifier = make(slack, max_wait="10s")
        threads = Threads()
        threads.roots.update((await notifier.send(notification("n1", [event(1)]), threads, T0)).threads)
        slack.fail("ratelimited", method="conversations.history", times=2, retry_after=0.3)
        await notifier.send(notification("n2", [event(1, "resolved")]), threads, T0)
        await notifier.close()
    reads = [c.at for c in slack.calls if c.method.startswith("conversations.history")]
    assert len(reads) == 3 and reads[1] - reads[0] >= 0.29 and reads[2] - reads[1] >= 0.29, reads
    assert len(slack.updates()) == 1


async def test_a_custom_template_failing_on_one_meter_falls_back_to_the_built_in_message() -> None:
    from structlog.testing import capture_logs

    # fine on the samples `alerter check` renders it on; a reference of 8 characters divides by zero
    template = "{{ 100 // (events[0].label | length - 8) }} {{ events[0].label }}"
    async with fake_slack() as slack:
        notifier = make(slack, template=template)
        with capture_logs() as logs:
            await notifier.send(notification("n1", [event(1, partner_reference="ACME0001")]), Threads(), T0)
        await notifier.close()
    [call] = slack.posted()
    assert "ACME0001" in call.args["text"] and call.args["blocks"][0]["type"] == "header"
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["template_failed"]
    # rendered on the samples, `alerter check` takes it; one that fails there is refused
    from alerter.render.samples import check_templates

    assert check_templates([("ops", notifier.config)]) == []
    broken = make(slack, template="{{ 100 // (events[0].label | length - 9) }}")
    assert check_templates([("ops", broken.config)]) != []
