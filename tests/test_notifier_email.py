"""Email notifier against a real SMTP server (aiosmtpd): parts, threading headers, error classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alerter.errors import DeliveryError
from alerter.notifiers import build_notifier
from alerter.notifiers.email import EmailNotifier, message_id
from alerter.receivers import EmailConfig
from tests.support.channels import SmtpServer, smtp_server
from tests.support.notifications import T0, event, notification

PASSWORD = "smtp-pa55word"


def make(server: SmtpServer, **smtp: Any) -> EmailNotifier:
    cfg = EmailConfig.model_validate(
        {"to": ["team@example.com"], "from": "alerter@example.com",
         "smtp": {"host": server.host, "port": server.port, "timeout": "5s", **smtp}}
    )  # fmt: skip
    notifier = build_notifier("enrollment-team", email=cfg)
    assert isinstance(notifier, EmailNotifier)
    return notifier


async def no_threads(key_id: str) -> str | None:
    return None


async def test_sends_text_and_html_with_stable_message_id() -> None:
    async with smtp_server(auth=("alerter", PASSWORD)) as server:
        notifier = make(server, username="alerter", password=PASSWORD)
        n = notification("n-123", [event(1), event(2), event(3, partner_reference="<b>Acme</b>")])
        result = await notifier.send(n, no_threads, T0)
        await notifier.send(n, no_threads, T0)  # a resend after a crash
    first, again = server.messages
    assert first["Message-ID"] == again["Message-ID"] == "<n-123@alerter>" == result.external_id
    assert first["Subject"] == "[alerter] 3 meters need IS_AUTHORIZED"
    assert first.get_content_type() == "multipart/alternative"
    text = first.get_body("plain")
    html = first.get_body("html")
    assert text is not None and html is not None
    assert "ACME-0001" in text.get_content() and "<b>Acme</b>" in text.get_content()
    assert "&lt;b&gt;Acme&lt;/b&gt;" in html.get_content()
    assert set(result.threads) == {e.obligation.key_id for e in n.events}
    assert server.envelopes[0].rcpt_tos == ["team@example.com"]


async def test_follow_ups_reply_to_the_first_mail() -> None:
    async with smtp_server() as server:
        notifier = make(server)
        roots = {event(1).obligation.key_id: message_id("n-1"), event(2).obligation.key_id: message_id("n-2")}

        async def threads(key_id: str) -> str | None:
            return roots.get(key_id)

        await notifier.send(notification("n-3", [event(1, "resolved"), event(2, "resolved")]), threads, T0)
    [msg] = server.messages
    assert msg["In-Reply-To"] == "<n-1@alerter>"
    assert msg["References"] == "<n-1@alerter> <n-2@alerter>"


@pytest.mark.parametrize(("reply", "retryable"), [("451 4.3.0 try again later", True), ("550 5.7.1 rejected", False)])
async def test_smtp_reply_classes(reply: str, retryable: bool) -> None:
    async with smtp_server() as server:
        server.script.append(reply)
        with pytest.raises(DeliveryError) as err:
            await make(server).send(notification("n", [event(1)]), no_threads, T0)
    assert err.value.retryable is retryable
    assert reply.split()[0] in str(err.value)


async def test_wrong_password_is_permanent_and_not_echoed() -> None:
    async with smtp_server(auth=("alerter", "right")) as server:
        with pytest.raises(DeliveryError) as err:
            await make(server, username="alerter", password=PASSWORD).send(
                notification("n", [event(1)]), no_threads, T0
            )
    assert not err.value.retryable
    assert PASSWORD not in str(err.value) and "authentication" in str(err.value)


async def test_connection_refused_is_retryable() -> None:
    async with smtp_server() as server:
        notifier = make(server)
    with pytest.raises(DeliveryError) as err:
        await notifier.send(notification("n", [event(1)]), no_threads, T0)
    assert err.value.retryable


async def test_starttls_with_a_private_ca(tmp_path: Path) -> None:
    async with smtp_server(auth=("alerter", PASSWORD), starttls_dir=tmp_path) as server:
        notifier = make(server, starttls=True, cert_bundle=server.cert_file, username="alerter", password=PASSWORD)
        await notifier.send(notification("n", [event(1)]), no_threads, T0)
    assert len(server.messages) == 1


async def test_custom_templates_and_digest() -> None:
    async with smtp_server() as server:
        cfg = make(server).config.model_copy(
            update={"subject_template": "{{ count }} things for {{ notification.receiver }}"}
        )
        notifier = EmailNotifier("team", cfg)
        digest = notification("d", [event(i, initial=True) for i in range(4)], kind="digest")
        await notifier.send(digest, no_threads, T0)
    [msg] = server.messages
    assert msg["Subject"] == "4 things for r"
    body = msg.get_body("plain")
    assert body is not None and "By region:" in body.get_content()


async def test_a_text_template_failing_on_one_meter_sends_the_built_in_text() -> None:
    from structlog.testing import capture_logs

    cfg = EmailConfig.model_validate(
        {"to": ["team@example.com"], "from": "alerter@example.com", "smtp": {"host": "h"},
         # fine on the samples `alerter check` renders it on; a reference of 8 characters divides by zero
         "text_template": "{{ 100 // (events[0].label | length - 8) }}"}
    )  # fmt: skip
    async with smtp_server() as server:
        cfg = cfg.model_copy(update={"smtp": cfg.smtp.model_copy(update={"port": server.port, "host": server.host})})
        notifier = build_notifier("enrollment-team", email=cfg)
        with capture_logs() as logs:
            await notifier.send(notification("n-1", [event(1, partner_reference="ACME0001")]), no_threads, T0)
    [mail] = server.messages
    text = mail.get_body("plain")
    assert text is not None and "ACME0001" in text.get_content()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["template_failed"]


async def test_with_a_username_starttls_is_used_when_offered_unless_set_false(tmp_path: Path) -> None:
    # the server takes AUTH only after STARTTLS: the password never goes in clear to it
    async with smtp_server(auth=("alerter", PASSWORD), starttls_dir=tmp_path) as server:
        notifier = make(server, cert_bundle=server.cert_file, username="alerter", password=PASSWORD)
        await notifier.send(notification("n", [event(1)]), no_threads, T0)
        assert len(server.messages) == 1
        with pytest.raises(DeliveryError) as err:  # `starttls: false` says so: AUTH in clear, refused here
            await make(server, starttls=False, username="alerter", password=PASSWORD).send(
                notification("n2", [event(2)]), no_threads, T0
            )
    assert PASSWORD not in str(err.value)
    assert len(server.messages) == 1


async def test_with_a_username_an_untrusted_certificate_is_not_sent_the_password(tmp_path: Path) -> None:
    async with smtp_server(auth=("alerter", PASSWORD), starttls_dir=tmp_path) as server:
        with pytest.raises(DeliveryError) as err:  # self-signed, and no cert_bundle naming it
            await make(server, username="alerter", password=PASSWORD).send(
                notification("n", [event(1)]), no_threads, T0
            )
    assert err.value.retryable
    assert "certificate" in str(err.value) and "cert_bundle" in str(err.value)
    assert PASSWORD not in str(err.value) and not server.messages


async def test_without_a_username_a_relay_offering_starttls_is_used_in_clear(tmp_path: Path) -> None:
    # an internal relay with a self-signed certificate (no AUTH): as before, no upgrade
    async with smtp_server(starttls_dir=tmp_path, require_starttls=False) as server:
        await make(server).send(notification("n", [event(1)]), no_threads, T0)
        assert len(server.messages) == 1
        with pytest.raises(DeliveryError):  # asked for: required, and its certificate is checked
            await make(server, starttls=True).send(notification("n2", [event(2)]), no_threads, T0)
