"""The outbox worker on a real SQLite ledger: send, back off, dead-letter, disable, lease expiry, replay."""

from __future__ import annotations

import asyncio
import functools
import random
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import cast

import pytest
from msgspec.structs import replace

from alerter.delivery import DEFAULT_POLICIES, Deliverer, RetryPolicy
from alerter.errors import DeliveryError, StoreError
from alerter.models import Event, EventKind, Notification, RoutingWrite, event_id
from alerter.notifiers.base import Deferred, Notifier, ReceiverGone, SendResult, Steps
from alerter.notifiers.email import EmailNotifier
from alerter.notifiers.slack import SlackNotifier
from alerter.notifiers.webhook import WebhookNotifier
from alerter.pacing import Pacers
from alerter.receivers import EmailConfig, SlackConfig, WebhookConfig
from alerter.store import open_store
from alerter.store.base import Delivery, Failed, Sent, Store
from tests.support.channels import WebhookCollector, fake_slack, smtp_server, webhook_collector
from tests.support.clock import FakeClock
from tests.support.notifications import T0, event, notification

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store("sqlite://:memory:")
    await s.open()
    yield s
    await s.close()


async def enqueue(store: Store, *notes: Notification) -> None:
    await store.commit_routing(RoutingWrite(consumed=[], notifications=list(notes)))


def webhook(hook: WebhookCollector, name: str = "crm") -> WebhookNotifier:
    return WebhookNotifier(name, WebhookConfig.model_validate({"url": hook.url(), "secret": SECRET}))


async def test_sent_and_recorded(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        stats = await Deliverer(store, {"crm": n}, "w1").run_once(T0)
        await n.close()
    assert stats.sent == {"crm": 1} and stats.claimed == 1
    assert await store.delivery_counts() == {("crm", "sent"): 1}
    assert hook.delivered()[0].verified


async def test_retryable_failure_backs_off_and_honours_retry_after(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([429, 200])
        hook.retry_after = "120"
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        worker = Deliverer(store, {"crm": n}, "w1")
        stats = await worker.run_once(T0)
        assert stats.failed == {"crm": 1}
        assert (await worker.run_once(T0 + timedelta(seconds=119))).claimed == 0
        assert (await worker.run_once(T0 + timedelta(seconds=121))).sent == {"crm": 1}
        await n.close()
    assert [r.headers["webhook-id"] for r in hook.received] == ["n1", "n1"]


async def test_a_retry_after_of_centuries_ends_in_a_dead_letter_and_the_worker_goes_on(store: Store) -> None:
    # delta-seconds past what a datetime holds: read as a week, past the budget, so a dead letter
    async with webhook_collector([SECRET]) as hook:
        hook.script.append(429)
        hook.retry_after = "100000000000000"
        n = webhook(hook)
        worker = Deliverer(store, {"crm": n}, "w1")
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        assert (await worker.run_once(T0)).dead == {"crm": 1}
        await enqueue(store, notification("n2", [event(2)], receiver="crm"))
        assert (await worker.run_once(T0 + timedelta(seconds=1))).sent == {"crm": 1}
        await n.close()
    [dead] = await store.dead_letters()
    assert dead.notification.id == "n1" and dead.last_error is not None and "429" in dead.last_error
    assert [r.headers["webhook-id"] for r in hook.received] == ["n1", "n2"]


async def test_an_obligation_opened_again_is_answered_in_its_new_thread(store: Store) -> None:
    # opened, resolved, opened again, resolved again: the second resolution ticks the second
    # opening's message and replies in its thread, not in the first one's
    async with fake_slack() as slack:
        args = {"token": slack.token, "channel": "#c", "api_url": slack.api_url, "min_interval": "0s"}
        n = SlackNotifier("ops", SlackConfig.model_validate(args))
        worker = Deliverer(store, {"ops": n}, "w1")
        ob = event(1).obligation
        kinds: list[EventKind] = ["opened", "resolved", "opened", "resolved"]
        for version, kind in enumerate(kinds, 1):
            o = replace(ob, version=version, status="resolved" if kind == "resolved" else "open")
            e = Event(id=event_id(o.key, kind, version), kind=kind, occurred_at=T0, obligation=o)
            await enqueue(store, notification(f"n{version}", [e], receiver="ops"))
            assert (await worker.run_once(T0 + timedelta(minutes=version))).sent == {"ops": 1}
        await n.close()
    first, reply1, second, reply2 = [m for _, m in sorted(slack.messages.items(), key=lambda kv: kv[0][1])]
    assert "thread_ts" not in first and "thread_ts" not in second
    assert reply1["thread_ts"] == first["ts"] and reply2["thread_ts"] == second["ts"]
    assert [u.args["ts"] for u in slack.updates()] == [first["ts"], second["ts"]]
    assert await store.get_thread("ops", ob.key_id) == f"{second['channel']}:{second['ts']}"


async def test_an_address_refused_for_now_is_sent_the_mail_alone_on_the_retry(store: Store) -> None:
    async with smtp_server() as smtp:
        to = ["ops@example.com", "Full <full@example.com>", "gone@example.com"]
        smtp.refuse = {"full@example.com": deque(["452 4.2.2 mailbox full"])}
        cfg = EmailConfig.model_validate({"to": to, "from": "b@x", "smtp": {"host": smtp.host, "port": smtp.port}})
        mail = EmailNotifier("mail", cfg)
        worker = Deliverer(store, {"mail": mail}, "w1")
        await enqueue(store, notification("n1", [event(1)], receiver="mail"))
        assert (await worker.run_once(T0)).failed == {"mail": 1}
        [row] = await store.claim_deliveries(T0 + timedelta(hours=1), "peek", 10, 0.001)
        assert row.last_error is not None and "recipients refused ([452]), 1 of 3 for now; 2 took it" in row.last_error
        assert (await worker.run_once(T0 + timedelta(hours=2))).sent == {"mail": 1}
        # refused for good and for now at once: the one refused for now is sent it on the retry,
        # and the notification then becomes a dead letter that names the refusal for good
        smtp.refuse = {
            "gone@example.com": deque(["550 5.1.1 no such user"] * 2),
            "full@example.com": deque(["452 4.2.2 mailbox full"]),
        }
        await enqueue(store, notification("n2", [event(2)], receiver="mail"))
        assert (await worker.run_once(T0 + timedelta(hours=3))).failed == {"mail": 1}
        assert (await worker.run_once(T0 + timedelta(hours=4))).dead == {"mail": 1}
    assert [sorted(e.rcpt_tos) for e in smtp.envelopes] == [
        ["gone@example.com", "ops@example.com"],
        ["full@example.com"],
        ["ops@example.com"],
        ["full@example.com"],
    ]
    [dead] = await store.dead_letters()
    assert dead.last_error is not None and "recipients refused (550), 1 of 3 for good; 2 took it" in dead.last_error


async def test_a_mail_some_addresses_took_is_the_thread_of_its_replies_though_it_failed(store: Store) -> None:
    from email import message_from_bytes

    async with smtp_server() as smtp:
        smtp.refuse = {"gone@example.com": deque(["550 5.1.1 no such user"])}
        to = ["ops@example.com", "gone@example.com"]
        cfg = EmailConfig.model_validate({"to": to, "from": "b@x", "smtp": {"host": smtp.host, "port": smtp.port}})
        worker = Deliverer(store, {"mail": EmailNotifier("mail", cfg)}, "w1")
        await enqueue(store, notification("n1", [event(1)], receiver="mail"))
        assert (await worker.run_once(T0)).dead == {"mail": 1}  # one address refused it for good
        await enqueue(store, notification("n2", [event(1, "resolved")], receiver="mail"))
        assert (await worker.run_once(T0 + timedelta(minutes=1))).sent == {"mail": 1}
    opening, resolution = (message_from_bytes(e.original_content or b"") for e in smtp.envelopes)
    assert resolution["In-Reply-To"] == opening["Message-ID"]  # ops@ has the opening: the resolution answers it
    assert opening["Message-ID"] in resolution["References"]


class _Slow:
    """A channel that sends a notification as three messages, 0.4 s apart, another instance
    trying to claim it after each: its lease (1 s) would have run out during the last one."""

    channel = "slack"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.taken: list[int] = []

    async def send(self, n: Notification, threads: object, now: datetime, steps: Steps | None = None) -> SendResult:
        assert steps is not None
        for i in range(3):
            await asyncio.sleep(0.4)
            await steps.done(f"post:{i}", f"C1:{i}")
            elapsed = timedelta(seconds=0.4 * (i + 1) + 0.1)
            self.taken.append(len(await self.store.claim_deliveries(now + elapsed, "other", 10, 1)))
        return SendResult("C1:0")

    async def close(self) -> None:
        return None


async def test_a_notification_of_many_messages_keeps_its_lease_while_they_go_out(store: Store) -> None:
    slow = _Slow(store)
    await enqueue(store, notification("n1", [event(1)], receiver="ops"))
    stats = await Deliverer(store, {"ops": cast(Notifier, slow)}, "w1", lease_seconds=1).run_once(T0)
    assert stats.sent == {"ops": 1} and slow.taken == [0, 0, 0]


class _OneAtATime:
    """A channel that sends one notification at a time, 0.5 s each; before the third is sent,
    another instance claims what it can of the rows (their 1 s leases ran out meanwhile)."""

    channel = "console"  # one in flight

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sent: list[str] = []
        self.other: list[str] = []

    async def send(self, n: Notification, threads: object, now: datetime, steps: Steps | None = None) -> SendResult:
        self.sent.append(n.id)
        await asyncio.sleep(0.5)
        if len(self.sent) == 2:  # the third has waited 1 s: its lease ran out
            taken = await self.store.claim_deliveries(now + timedelta(seconds=1.2), "other", 10, 60)
            self.other = [d.notification.id for d in taken]
        return SendResult(n.id)

    async def close(self) -> None:
        return None


async def test_a_row_whose_lease_ran_out_while_it_waited_is_left_to_the_instance_that_claimed_it(
    store: Store,
) -> None:
    slow = _OneAtATime(store)
    await enqueue(store, *(notification(f"n{i}", [event(i)], receiver="ops") for i in range(1, 4)))
    stats = await Deliverer(store, {"ops": cast(Notifier, slow)}, "w1", lease_seconds=1).run_once(T0)
    # the third was renewed before its turn (it had waited past a third of its lease), unless
    # another instance had claimed it first: either way one instance sends it
    assert sorted(slow.sent + slow.other) == ["n1", "n2", "n3"] and not set(slow.sent) & set(slow.other)
    assert stats.sent["ops"] == len(slow.sent)


class _Paused:
    """A channel whose first send stalls 0.6 s, as a process paused (a VM or GC pause, SIGSTOP)
    while it holds claimed rows: meanwhile another instance, seeing its heartbeat stale, claims
    the rows left waiting and sends them."""

    channel = "console"  # one in flight: the others wait their turn

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sent: list[str] = []
        self.other: list[str] = []

    async def send(self, n: Notification, threads: object, now: datetime, steps: Steps | None = None) -> SendResult:
        if not self.sent:
            await asyncio.sleep(0.6)
            taken = await self.store.claim_deliveries(
                now + timedelta(seconds=10), "w2", 10, 60, stale_before=now + timedelta(seconds=5)
            )
            self.other = [d.notification.id for d in taken]  # w2 sends these
        self.sent.append(n.id)
        return SendResult(n.id)

    async def close(self) -> None:
        return None


async def test_a_paused_instance_does_not_send_again_what_another_took_over(store: Store) -> None:
    paused = _Paused(store)
    await store.heartbeat("w1", T0)
    await enqueue(store, *(notification(f"n{i}", [event(i)], receiver="ops") for i in range(1, 4)))
    worker = Deliverer(store, {"ops": cast(Notifier, paused)}, "w1", instance_timeout=0.3)
    stats = await worker.run_once(T0)
    assert sorted(paused.other) == ["n1", "n2", "n3"]  # w2 took every row of the stale instance
    assert paused.sent == ["n1"] and stats.sent["ops"] == 1  # only the send under way when it paused
    assert await store.renew_lease("n2", "ops", "w2", T0 + timedelta(minutes=5))  # still w2's


async def test_a_rate_limited_channel_defers_without_spending_attempts(store: Store) -> None:
    # twelve deferrals (Slack allows 10 attempts), then a real failure: attempt 1, retried, sent
    clock = FakeClock()
    async with fake_slack() as slack:
        args = {"token": slack.token, "channel": "#c", "api_url": slack.api_url, "max_wait": "1s", "min_interval": "0s"}
        n = SlackNotifier("ops", SlackConfig.model_validate(args), Pacers(clock, clock.sleep))
        slack.fail("ratelimited", times=12, retry_after=30)
        slack.fail("500")
        await enqueue(store, notification("n1", [event(1)], receiver="ops"))
        worker = Deliverer(store, {"ops": n}, "w1")
        now = T0
        for _ in range(13):
            assert (await worker.run_once(now)).failed == {"ops": 1}
            now, clock.now = now + timedelta(seconds=31), clock.now + 31
        [row] = await store.claim_deliveries(now + timedelta(hours=1), "peek", 10, 0.001)
        assert row.attempts == 1 and row.last_error is not None and "500" in row.last_error
        assert (await worker.run_once(now + timedelta(hours=2))).sent == {"ops": 1}
        await n.close()
    assert await store.delivery_counts() == {("ops", "sent"): 1}
    assert not slack.faults and len(slack.posted()) == 1  # Slack was asked 14 times, and posted once


async def test_permanent_failure_is_dead_at_once(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.append(400)
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        stats = await Deliverer(store, {"crm": n}, "w1").run_once(T0)
        await n.close()
    assert stats.dead == {"crm": 1}
    [dead] = await store.dead_letters()
    assert dead.attempts == 1 and dead.last_error is not None and "HTTP 400" in dead.last_error


async def test_gone_disables_the_receiver(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.append(410)
        n = webhook(hook)
        await enqueue(
            store,
            notification("n1", [event(1)], receiver="crm"),
            notification("n2", [event(2)], receiver="crm"),
        )
        stats = await Deliverer(
            store,
            {"crm": n},
            "w1",
            policies={"webhook": RetryPolicy(10, 3600, 20, 43200, in_flight=1)},
        ).run_once(T0)
        await n.close()
    assert stats.disabled == {"crm"}
    assert "crm" in await store.disabled_receivers()
    assert len(await store.dead_letters()) >= 1


class CountingStore:
    """A store that counts `record_outcomes` transactions (and can be told to fail them)."""

    def __init__(self, inner: Store, fail: bool = False) -> None:
        self.inner, self.fail = inner, fail
        self.writes: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def record_outcomes(self, sent: list[Sent], failed: list[Failed]) -> None:
        self.writes.append((len(sent), len(failed)))
        if self.fail:
            raise StoreError("disk full")
        await self.inner.record_outcomes(sent, failed)


async def test_a_batch_is_recorded_in_a_few_transactions_row_by_row(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([200, 503, 400] + [200] * 57)
        n = webhook(hook)
        await enqueue(store, *[notification(f"n{i:02}", [event(i)], receiver="crm") for i in range(60)])
        await enqueue(store, notification("g1", [event(1)], receiver="ghost"))
        counting = CountingStore(store)
        stats = await Deliverer(cast(Store, counting), {"crm": n}, "w1").run_once(T0)
        await n.close()
    assert stats.claimed == 61 and stats.sent == {"crm": 58} and stats.failed == {"crm": 1}
    assert stats.dead == {"crm": 1, "ghost": 1}
    assert sum(s for s, _ in counting.writes) == 58 and sum(f for _, f in counting.writes) == 3
    assert len(counting.writes) < 20  # group commit: not one transaction per row
    assert await store.delivery_counts() == {("crm", "sent"): 58, ("crm", "pending"): 1, ("crm", "dead"): 1,
                                             ("ghost", "dead"): 1}  # fmt: skip
    assert len(hook.received) == 60


async def test_a_failed_ledger_write_fails_the_run_and_the_rows_come_back(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        n = webhook(hook)
        await enqueue(store, *[notification(f"n{i}", [event(i)], receiver="crm") for i in range(5)])
        with pytest.raises(StoreError, match="disk full"):
            await Deliverer(cast(Store, CountingStore(store, fail=True)), {"crm": n}, "w1", lease_seconds=60).run_once(
                T0
            )
        assert await store.undelivered_count() == 5  # nothing recorded: resent once the lease expires
        stats = await Deliverer(store, {"crm": n}, "w2").run_once(T0 + timedelta(seconds=61))
        await n.close()
    assert stats.sent == {"crm": 5} and len(hook.received) == 10


async def test_unknown_receiver_is_a_dead_letter(store: Store) -> None:
    await enqueue(store, notification("n1", [event(1)], receiver="ghost"))
    stats = await Deliverer(store, {}, "w1").run_once(T0)
    [dead] = await store.dead_letters()
    assert stats.dead == {"ghost": 1} and dead.last_error == "receiver not configured"


async def test_retry_budget_ends_in_dead_letter_then_replay_delivers(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([500, 500, 500])
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        worker = Deliverer(store, {"crm": n}, "w1", policies={"webhook": RetryPolicy(1, 1, 3, 3600)})
        at = T0
        for _ in range(3):
            await worker.run_once(at)
            at += timedelta(seconds=2)
        [dead] = await store.dead_letters()
        assert dead.attempts == 3 and dead.last_error is not None and dead.last_error.startswith("gave up after 3")
        assert await store.replay_dead_letters(at) == 1
        assert (await worker.run_once(at)).sent == {"crm": 1}
        await n.close()
    assert len(hook.delivered()) == 1 and {r.headers["webhook-id"] for r in hook.received} == {"n1"}


async def test_a_replayed_dead_letter_gets_its_whole_retry_budget_again(store: Store) -> None:
    # dead for a day: its notification is older than the channel's 12 h budget when it is replayed
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([400, 503, 503])
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm", created_at=T0))
        worker = Deliverer(store, {"crm": n}, "w1")
        await worker.run_once(T0)
        later = T0 + timedelta(days=1)
        assert await store.replay_dead_letters(later) == 1
        assert (await worker.run_once(later)).failed == {"crm": 1}  # retried, not dead at once
        assert (await worker.run_once(later + timedelta(hours=1))).failed == {"crm": 1}
        assert (await worker.run_once(later + timedelta(hours=3))).sent == {"crm": 1}
        await n.close()
    assert await store.dead_letters() == []


async def test_worker_killed_between_send_and_commit_resends_same_ids(store: Store) -> None:
    """Worker A sends, then dies before mark_sent; its lease expires; worker B resends."""
    async with webhook_collector([SECRET]) as hook, smtp_server() as smtp:
        cfg = EmailConfig.model_validate({"to": ["a@x"], "from": "b@x", "smtp": {"host": smtp.host, "port": smtp.port}})
        notifiers: dict[str, Notifier] = {"crm": webhook(hook), "mail": EmailNotifier("mail", cfg)}
        await enqueue(
            store,
            notification("n1", [event(1)], receiver="crm"),
            notification("n2", [event(1)], receiver="mail"),
        )
        claimed = await store.claim_deliveries(T0, "worker-a", 10, lease_seconds=60)
        for d in claimed:  # worker A: the send succeeds, then the process is killed
            await notifiers[d.receiver].send(d.notification, functools.partial(store.get_thread, d.receiver), T0)
        worker_b = Deliverer(store, notifiers, "worker-b", lease_seconds=60)
        assert (await worker_b.run_once(T0 + timedelta(seconds=30))).claimed == 0  # lease still held
        stats = await worker_b.run_once(T0 + timedelta(seconds=61))
        for n in notifiers.values():
            await n.close()
    assert stats.sent == {"crm": 1, "mail": 1}
    assert [r.headers["webhook-id"] for r in hook.received] == ["n1", "n1"]
    assert [m["Message-ID"] for m in smtp.messages] == ["<n2@alerter>", "<n2@alerter>"]


async def test_a_slack_notification_of_several_messages_resumes_where_it_failed(store: Store) -> None:
    """Two obligations opened in two messages resolve together: a tick of each original and a
    reply in each thread. The second reply fails; the retry (another worker) posts only it."""
    async with fake_slack() as slack:
        cfg = {"token": slack.token, "channel": "#ops", "api_url": slack.api_url, "min_interval": "10ms"}
        notifiers: dict[str, Notifier] = {"ops": SlackNotifier("ops", SlackConfig.model_validate(cfg))}
        await enqueue(store, *(notification(f"open{i}", [event(i)], receiver="ops") for i in (1, 2)))
        assert (await Deliverer(store, notifiers, "w1").run_once(T0)).sent == {"ops": 2}
        roots = [f"{channel}:{ts}" for channel, ts in slack.messages]
        await enqueue(store, notification("res", [event(1, "resolved"), event(2, "resolved")], receiver="ops"))
        slack.fail("500", after=1)  # the first reply goes out, the second fails
        assert (await Deliverer(store, notifiers, "w1").run_once(T0)).failed == {"ops": 1}
        [row] = await store.claim_deliveries(T0 + timedelta(hours=1), "peek", 1, 0)
        assert set(row.steps) == {f"update:{roots[0]}", f"reply:{roots[0]}", f"update:{roots[1]}"}
        stats = await Deliverer(store, notifiers, "w2").run_once(T0 + timedelta(hours=1))
        await notifiers["ops"].close()
    assert stats.sent == {"ops": 1}
    replies = [c.args["thread_ts"] for c in slack.posted() if "thread_ts" in c.args]
    assert sorted(replies) == sorted(r.partition(":")[2] for r in roots)  # each reply exactly once
    assert sorted(c.args["ts"] for c in slack.updates()) == sorted(replies)  # each original ticked once
    assert [c.method for c in slack.calls].count("chat.postMessage!500") == 1


async def test_drain_retries_until_delivered(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([500, 503])
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        worker = Deliverer(store, {"crm": n}, "w1", policies={"webhook": RetryPolicy(1, 2, 10, 3600)})
        ticks = iter(T0 + timedelta(seconds=5 * i) for i in range(1000))
        stats = await worker.drain(60, clock=lambda: next(ticks), poll_interval=0)
        await n.close()
    assert stats.sent == {"crm": 1} and stats.failed == {"crm": 2} and stats.undelivered == 0


async def test_drain_gives_up_at_the_deadline(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        hook.script.extend([500] * 50)
        n = webhook(hook)
        await enqueue(store, notification("n1", [event(1)], receiver="crm"))
        ticks = iter(T0 + timedelta(seconds=10 * i) for i in range(1000))
        stats = await Deliverer(store, {"crm": n}, "w1").drain(60, clock=lambda: next(ticks), poll_interval=0)
        await n.close()
    assert stats.undelivered == 1 and not stats.sent


async def test_drain_claims_the_next_batch_while_sending_and_sends_each_once(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        n = webhook(hook)
        await enqueue(store, *(notification(f"n{i:02d}", [event(i)], receiver="crm") for i in range(23)))
        worker = Deliverer(store, {"crm": n}, "w1", batch=5)  # claims of 5: four full ones, then 3
        stats = await worker.drain(60, poll_interval=0)
        await n.close()
    assert stats.sent == {"crm": 23} and stats.claimed == 23 and stats.undelivered == 0
    ids = [r.headers["webhook-id"] for r in hook.delivered()]
    assert len(ids) == len(set(ids)) == 23


async def test_a_batch_claimed_ahead_when_the_deadline_passes_is_released_and_sent_later(store: Store) -> None:
    async with webhook_collector([SECRET]) as hook:
        n = webhook(hook)
        await enqueue(store, *(notification(f"n{i:02d}", [event(i)], receiver="crm") for i in range(23)))
        # the clock jumps past the deadline once the first batch is sent, the next one claimed ahead
        stats = await Deliverer(store, {"crm": n}, "w1", batch=5).drain(
            60, clock=lambda: T0 + timedelta(seconds=100 * len(hook.received)), poll_interval=0
        )
        assert stats.sent == {"crm": 5} and stats.undelivered == 18
        assert await store.stop_instance("w1") == 5  # the batch claimed ahead, released as the instance stops
        rest = await Deliverer(store, {"crm": n}, "w2", batch=5).drain(60, poll_interval=0)
        await n.close()
    assert rest.sent == {"crm": 18} and rest.undelivered == 0
    ids = [r.headers["webhook-id"] for r in hook.delivered()]
    assert len(ids) == len(set(ids)) == 23


# -- backoff decisions (pure: no store involved) --


def pending(attempts: int, created: datetime = T0) -> Delivery:
    n = notification("n", [event(1)], created_at=created)
    return Delivery(notification=n, receiver="r", status="pending", attempts=attempts, next_attempt_at=T0)


@pytest.mark.parametrize("channel", ["webhook", "slack", "email"])
def test_full_jitter_stays_under_the_exponential_cap(channel: str) -> None:
    worker = Deliverer(cast(Store, None), {}, "w", rng=random.Random(7))
    policy = DEFAULT_POLICIES[channel]
    for attempts in range(policy.max_attempts - 1):
        at = worker.next_attempt(pending(attempts), channel, DeliveryError("x", retryable=True), T0)
        assert at is not None
        assert 0 <= (at - T0).total_seconds() <= min(policy.cap, policy.base * 2**attempts)


@pytest.mark.parametrize("channel", ["webhook", "slack", "email"])
def test_a_failing_receiver_is_retried_for_most_of_its_channels_budget(channel: str) -> None:
    # an outage shorter than the budget loses nothing: the attempts run out only near its end
    policy = DEFAULT_POLICIES[channel]
    for seed in range(5):
        worker = Deliverer(cast(Store, None), {}, "w", rng=random.Random(seed))
        now, attempts = T0, 0
        while (
            at := worker.next_attempt(pending(attempts), channel, DeliveryError("x", retryable=True), now)
        ) is not None:
            now, attempts = at, attempts + 1
        assert (now - T0).total_seconds() > 0.8 * policy.budget, (seed, attempts)


def test_retry_after_budget_and_deferral() -> None:
    worker = Deliverer(cast(Store, None), {}, "w", rng=random.Random(1))
    at = worker.next_attempt(pending(0), "slack", DeliveryError("x", retryable=True, retry_after=90), T0)
    assert at is not None and (at - T0).total_seconds() >= 90
    last = DEFAULT_POLICIES["slack"].max_attempts - 1
    assert worker.next_attempt(pending(last), "slack", DeliveryError("x", retryable=True), T0) is None
    assert worker.next_attempt(pending(last), "slack", Deferred("busy", 3), T0) == T0 + timedelta(seconds=3)
    old = pending(1, created=T0 - timedelta(hours=13))
    assert worker.next_attempt(old, "webhook", DeliveryError("x", retryable=True), T0) is None
    assert worker.next_attempt(pending(0), "webhook", ReceiverGone("gone"), T0) is None
    assert worker.next_attempt(pending(0), "webhook", DeliveryError("x", retryable=False), T0) is None


async def test_an_opening_and_its_resolution_made_in_one_pass_go_out_opening_first(store: Store) -> None:
    """Made at the same instant (one routing pass), their order is not their ids' (hashes)."""
    opening = event(1)
    done = replace(opening.obligation, status="resolved", resolution="cleared", version=2)
    resolution = Event(id=event_id(done.key, "resolved", 2), kind="resolved", occurred_at=T0, obligation=done)
    await enqueue(
        store,
        notification("0000-resolution", [resolution], receiver="ops"),
        notification("ffff-opening", [opening], receiver="ops"),
    )
    sent: list[str] = []

    class _Records:
        channel = "console"

        async def send(self, n: Notification, threads: object, now: datetime, steps: Steps | None = None) -> SendResult:
            sent.append(n.id)
            return SendResult(n.id)

        async def close(self) -> None:
            return None

    worker = Deliverer(store, {"ops": cast(Notifier, _Records())}, "w1")
    for k in range(5):
        await worker.run_once(T0 + timedelta(seconds=2 * k))
    assert sent == ["ffff-opening", "0000-resolution"]
