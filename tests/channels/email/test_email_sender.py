"""EmailSender against a real aiosmtpd relay on 127.0.0.1: headers, TLS, AUTH, error mapping."""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from frontdesk.channels.base import PermanentFailure, TemporaryFailure
from frontdesk.channels.email import OutboundConfig
from frontdesk.channels.email.sender import EmailSender
from frontdesk.domain.messages import OutboundMessage
from tests.fakes.smtp_sink import SmtpSink

PASSWORD = "s3cret-Pa55word"
FROM = "Example Support <support@example.com>"
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=UTC)

MakeSink = Callable[..., Awaitable[SmtpSink]]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    sinks: list[SmtpSink] = []

    async def make(**kwargs: Any) -> SmtpSink:
        sink = SmtpSink(**kwargs)
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.stop()


@pytest.fixture
async def sink(make_sink: MakeSink) -> SmtpSink:
    return await make_sink()


def sender_for(port: int, **settings: Any) -> EmailSender:
    config = OutboundConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "from": FROM, "timeout": "5s", **settings}
    )
    return EmailSender(config, hostname="frontdesk.test", clock=lambda: NOW)


def reply(**fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "channel": "email",
        "to_address": "ada@example.org",
        "to_name": "Ada Lovelace",
        "subject": "Re: Printer on fire [FD-12]",
        "text": "Hello Ada,\n\nwe are on it.\n",
    }
    values.update(fields)
    return OutboundMessage(**values)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- build -----------------------------------------------------------------------------------


def test_build_generates_a_message_id_in_the_from_domain() -> None:
    msg = sender_for(25).build(reply())
    message_id = str(msg["Message-ID"])
    assert message_id.startswith("<") and message_id.endswith("@example.com>")
    assert msg["In-Reply-To"] is None and msg["References"] is None and msg["Reply-To"] is None
    assert msg["Auto-Submitted"] is None
    assert email.utils.parsedate_to_datetime(str(msg["Date"])) == NOW
    raw = msg.as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_build_keeps_headers_on_one_line() -> None:
    msg = sender_for(25).build(reply(subject="Re: two\r\nlines [FD-3]", to_name="A\nB"))
    assert str(msg["Subject"]) == "Re: two lines [FD-3]"
    assert str(msg["To"]) == "A B <ada@example.org>"


def test_building_many_mails_makes_each_header_class_once() -> None:
    """A burst of acknowledgements builds thousands of mails: the standard library's header
    registry made a new class for every header of every mail, about half the cost of a build.
    The classes are made once and the same for every mail, and the mails are unchanged."""
    sender = sender_for(25)
    first = sender.build(reply(automated=True, to_name="Zoë Ünal"))
    second = sender.build(reply(to_address="bob@example.org", subject="Re: another"))
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        assert type(first[name]) is type(second[name]), name
    assert str(first["From"]) == FROM and str(second["From"]) == FROM
    raw = first.as_bytes()
    assert b"To: =?utf-8?q?Zo=C3=AB_=C3=9Cnal?= <ada@example.org>\r\n" in raw
    assert b"Auto-Submitted: auto-replied\r\n" in raw
    assert b"X-Auto-Response-Suppress: All\r\n" in raw
    assert second["Auto-Submitted"] is None
    assert str(second["Subject"]) == "Re: another"


def test_plain_headers_go_as_written_long_ones_folded_others_encoded_or_refused() -> None:
    """Printable ASCII header values are stored as written (no parse now, no refold when the
    mail is flattened): a long one is still folded to lines of at most 78 characters, words
    outside ASCII are still encoded, and a line break smuggled into a threading header is
    still refused rather than written."""
    sender = sender_for(25)
    subject = "Re: " + " ".join(f"word{i}" for i in range(30)) + " [FD-7]"
    msg = sender.build(reply(subject=subject, to_name='Ada "the Countess", Lovelace',
                             in_reply_to="<cust-1@mail.example.org>",
                             references=("cust-0@mail.example.org", "cust-1@mail.example.org")))
    raw = msg.as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert all(len(line) <= 78 for line in head)
    assert b"To: \"Ada \\\"the Countess\\\", Lovelace\" <ada@example.org>" in head
    assert b"In-Reply-To: <cust-1@mail.example.org>" in head
    assert b"References: <cust-0@mail.example.org> <cust-1@mail.example.org>" in head
    back = email.message_from_bytes(raw, policy=email.policy.default)
    assert back["Subject"] == subject
    assert back["To"].addresses[0].display_name == 'Ada "the Countess", Lovelace'
    assert back["Date"].datetime == NOW
    encoded = sender.build(reply(subject="Re: Commande n° 42", to_name="Zoë")).as_bytes()
    assert b"Subject: Re: Commande =?utf-8?q?n=C2=B0?= 42\r\n" in encoded
    assert b"To: =?utf-8?q?Zo=C3=AB?= <ada@example.org>\r\n" in encoded
    with pytest.raises(ValueError, match="linefeed"):
        sender.build(reply(in_reply_to="a@example.org>\r\nBcc: <evil@example.org"))


# -- what arrives ----------------------------------------------------------------------------


async def test_headers_and_threading_arrive_exactly(sink: SmtpSink) -> None:
    text = "Bonjour Zoë,\n\nça marche — merci ✓\nAda\n"
    receipt = await sender_for(sink.port).send(
        reply(
            to_name="Zoë Ådams",
            subject="Re: Commande n° 42 ne marche pas [FD-12]",
            text=text,
            message_id="fd-12-3@example.com",
            in_reply_to="cust-2@mail.example.org",
            references=("cust-1@mail.example.org", "cust-2@mail.example.org"),
            reply_to="support+FD-12@example.com",
        )
    )

    assert receipt.remote_id == "fd-12-3@example.com"
    assert receipt.detail == "2.0.0 OK: queued as SINK"
    assert len(sink.messages) == 1
    mail_from, rcpt_tos, raw = sink.messages[0]
    assert mail_from == "support@example.com"
    assert rcpt_tos == ["ada@example.org"]
    assert b"\r\nMessage-ID: <fd-12-3@example.com>\r\n" in raw
    assert b"\r\nIn-Reply-To: <cust-2@mail.example.org>\r\n" in raw
    assert b"\r\nReferences: <cust-1@mail.example.org> <cust-2@mail.example.org>\r\n" in raw

    msg = sink.parsed()
    assert msg["Message-ID"] == "<fd-12-3@example.com>"
    assert msg["In-Reply-To"] == "<cust-2@mail.example.org>"
    assert msg["References"] == "<cust-1@mail.example.org> <cust-2@mail.example.org>"
    assert msg["Reply-To"] == "support+FD-12@example.com"
    assert msg["Subject"] == "Re: Commande n° 42 ne marche pas [FD-12]"
    assert msg["From"] == FROM
    assert msg["To"].addresses[0].display_name == "Zoë Ådams"
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == NOW
    assert msg["Auto-Submitted"] is None
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == text
    assert sink.secure == [False]  # the plain sink offers no STARTTLS


async def test_automated_mail_has_auto_submitted_and_null_sender(sink: SmtpSink) -> None:
    receipt = await sender_for(sink.port).send(reply(automated=True, message_id=None))

    mail_from, rcpt_tos, _ = sink.messages[0]
    assert mail_from == "<>"
    assert rcpt_tos == ["ada@example.org"]
    msg = sink.parsed()
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["From"] == FROM
    assert msg["Message-ID"] == f"<{receipt.remote_id}>"
    assert receipt.remote_id is not None and receipt.remote_id.endswith("@example.com")


# -- TLS -------------------------------------------------------------------------------------


async def test_opportunistic_starttls_verifies_with_ca_file(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await make_sink(starttls=server_tls)
    await sender_for(sink.port, ca_file=ca_file).send(reply())
    assert sink.secure == [True]


async def test_starttls_off_sends_in_plain(make_sink: MakeSink, server_tls: ssl.SSLContext) -> None:
    sink = await make_sink(starttls=server_tls)
    await sender_for(sink.port, starttls="off").send(reply())
    assert sink.secure == [False]


async def test_starttls_required_without_starttls_is_temporary(sink: SmtpSink) -> None:
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(sink.port, starttls="required").send(reply())
    assert "STARTTLS" in caught.value.reason
    assert f"127.0.0.1:{sink.port}" in caught.value.reason
    assert sink.messages == []


async def test_starttls_required_works_when_offered(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await make_sink(starttls=server_tls, require_starttls=True)
    await sender_for(sink.port, starttls="required", ca_file=ca_file).send(reply())
    assert sink.secure == [True]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_untrusted_certificate_is_temporary(
    make_sink: MakeSink, server_tls: ssl.SSLContext, mode: str
) -> None:
    if mode == "starttls":
        sink = await make_sink(starttls=server_tls)
        sender = sender_for(sink.port, starttls="required")
    else:
        sink = await make_sink(implicit_tls=server_tls)
        sender = sender_for(sink.port, tls=True)
    with pytest.raises(TemporaryFailure) as caught:
        await sender.send(reply())
    reason = caught.value.reason
    assert "certificate could not be verified" in reason
    assert "ca_file" in reason and "verify_tls" in reason
    assert sink.messages == []


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_verify_tls_false_accepts_an_untrusted_certificate(
    make_sink: MakeSink, server_tls: ssl.SSLContext, mode: str
) -> None:
    if mode == "starttls":
        sink = await make_sink(starttls=server_tls)
        sender = sender_for(sink.port, starttls="required", verify_tls=False)
    else:
        sink = await make_sink(implicit_tls=server_tls)
        sender = sender_for(sink.port, tls=True, verify_tls=False)
    await sender.send(reply())
    assert sink.secure == [True]


async def test_implicit_tls(make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str) -> None:
    sink = await make_sink(implicit_tls=server_tls)
    receipt = await sender_for(sink.port, tls=True, ca_file=ca_file).send(reply())
    assert sink.secure == [True]
    assert receipt.detail == "2.0.0 OK: queued as SINK"


async def test_missing_ca_file_is_temporary(sink: SmtpSink, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(sink.port, ca_file=missing).send(reply())
    assert missing in caught.value.reason


# -- AUTH ------------------------------------------------------------------------------------


async def login_relay(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> tuple[SmtpSink, EmailSender]:
    """A relay that wants STARTTLS and a login, and a sender set up for it."""
    sink = await make_sink(
        starttls=server_tls, credentials={"frontdesk": PASSWORD}, auth_required=True
    )
    return sink, sender_for(sink.port, ca_file=ca_file, username="frontdesk", password=PASSWORD)


async def test_auth_over_starttls(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink, sender = await login_relay(make_sink, server_tls, ca_file)
    await sender.send(reply())
    assert sink.logins == ["frontdesk"]
    assert sink.secure == [True]
    assert len(sink.messages) == 1


async def test_wrong_password_is_temporary_and_does_not_show_the_password(
    make_sink: MakeSink,
    server_tls: ssl.SSLContext,
    ca_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = await make_sink(
        starttls=server_tls, credentials={"frontdesk": "the-right-one"}, auth_required=True
    )
    sender = sender_for(sink.port, ca_file=ca_file, username="frontdesk", password=PASSWORD)
    with caplog.at_level(logging.DEBUG), pytest.raises(TemporaryFailure) as caught:
        await sender.send(reply())
    reason = caught.value.reason
    assert "rejected frontdesk's login" in reason
    assert "535" in reason
    for text in (reason, str(caught.value), repr(caught.value), caplog.text):
        assert PASSWORD not in text
    assert sink.failed_logins and not sink.logins
    assert sink.messages == []


async def test_no_login_over_an_unencrypted_connection(make_sink: MakeSink) -> None:
    sink = await make_sink(credentials={"frontdesk": PASSWORD}, auth_require_tls=False)
    sender = sender_for(sink.port, username="frontdesk", password=PASSWORD)
    with pytest.raises(TemporaryFailure) as caught:
        await sender.send(reply())
    assert "unencrypted" in caught.value.reason
    assert not sink.logins and not sink.failed_logins and sink.messages == []


async def test_relay_that_requires_a_login_is_temporary(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await make_sink(starttls=server_tls, credentials={"x": "y"}, auth_required=True)
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(sink.port, ca_file=ca_file).send(reply())
    assert "530" in caught.value.reason and "username" in caught.value.reason


async def test_relay_that_requires_starttls_when_it_is_off_is_temporary(
    make_sink: MakeSink, server_tls: ssl.SSLContext
) -> None:
    sink = await make_sink(starttls=server_tls, require_starttls=True)
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(sink.port, starttls="off").send(reply())
    assert "530" in caught.value.reason


# -- connection problems ---------------------------------------------------------------------


async def test_connection_refused_is_temporary() -> None:
    port = closed_port()
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(port).send(reply())
    assert caught.value.reason == f"mail relay 127.0.0.1:{port} refused the connection"


async def test_unknown_host_is_temporary() -> None:
    sender = sender_for(25, host="relay.invalid")
    with pytest.raises(TemporaryFailure) as caught:
        await sender.send(reply())
    assert "relay.invalid" in caught.value.reason and "resolved" in caught.value.reason


async def test_silent_relay_times_out_as_temporary() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, then never say 220

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TemporaryFailure) as caught:
            await sender_for(port, timeout="1s").send(reply())
        assert "did not answer within 1 second" in caught.value.reason
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


# -- replies from the relay ------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
async def test_4xx_is_temporary(sink: SmtpSink, stage: str) -> None:
    sink.fail_with, sink.fail_at = "451 4.3.0 try later", stage  # type: ignore[assignment]
    with pytest.raises(TemporaryFailure) as caught:
        await sender_for(sink.port).send(reply())
    assert "451 4.3.0 try later" in caught.value.reason
    assert sink.messages == []


async def test_550_at_rcpt_is_permanent_and_names_the_recipient(sink: SmtpSink) -> None:
    sink.fail_with, sink.fail_at = "550 5.1.1 no such user", "RCPT"
    with pytest.raises(PermanentFailure) as caught:
        await sender_for(sink.port).send(reply())
    assert caught.value.reason == (
        "the mail relay refused the recipient ada@example.org: 550 5.1.1 no such user"
    )


@pytest.mark.parametrize(
    ("stage", "line", "words"),
    [
        ("MAIL", "550 5.7.1 sender not allowed", "refused the sender support@example.com"),
        ("DATA", "554 5.6.0 message rejected", "refused the message"),
    ],
)
async def test_5xx_at_mail_or_data_is_permanent(
    sink: SmtpSink, stage: str, line: str, words: str
) -> None:
    sink.fail_with, sink.fail_at = line, stage  # type: ignore[assignment]
    with pytest.raises(PermanentFailure) as caught:
        await sender_for(sink.port).send(reply())
    assert words in caught.value.reason and line in caught.value.reason


async def test_a_later_send_works_after_a_failure(sink: SmtpSink) -> None:
    sender = sender_for(sink.port)
    sink.fail_with = "451 4.3.0 try later"
    with pytest.raises(TemporaryFailure):
        await sender.send(reply())
    sink.fail_with = None
    await sender.send(reply())
    assert len(sink.messages) == 1


# -- connections kept between mails -------------------------------------------------------------


async def test_mails_in_a_row_share_a_connection_logged_in_once(
    make_sink: MakeSink, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink, sender = await login_relay(make_sink, server_tls, ca_file)
    sender.mails_per_connection = 3
    for n in range(5):
        await sender.send(reply(text=f"mail {n}"))
    assert sink.bodies() == \
        [f"mail {n}" for n in range(5)]
    assert sink.secure == [True] * 5
    # three on the first connection, then a new one (greeted, secured, logged in again)
    assert (sink.connections, sink.logins, sink.quits) == (2, ["frontdesk"] * 2, 1)
    await sender.close()  # the daemon stops: goodbye on the one kept
    await _until(lambda: sink.quits == 2)


async def test_a_connection_the_relay_closed_is_replaced_and_nothing_sent_twice(
    make_sink: MakeSink,
) -> None:
    # the relay takes two mails a session, then answers the next MAIL 421 and hangs up
    sink = await make_sink(mails_per_connection=2)
    sender = sender_for(sink.port, starttls="off")
    for n in range(5):
        await sender.send(reply(text=f"mail {n}"))
    assert sink.bodies() == \
        [f"mail {n}" for n in range(5)]
    assert sink.connections == 3
    await sender.close()


async def test_a_connection_the_relay_timed_out_is_replaced(make_sink: MakeSink) -> None:
    sink = await make_sink(session_timeout=0.3)
    sender = sender_for(sink.port, starttls="off")
    await sender.send(reply(text="first"))
    await asyncio.sleep(0.8)  # the relay closes the idle session meanwhile
    await sender.send(reply(text="second"))
    assert sink.bodies() == \
        ["first", "second"]
    assert sink.connections == 2
    await sender.close()


async def test_a_failure_on_a_kept_connection_is_still_the_relays_answer(
    sink: SmtpSink,
) -> None:
    sender = sender_for(sink.port, starttls="off")
    await sender.send(reply(text="first"))
    sink.fail_with = "550 5.1.1 no such user"
    with pytest.raises(PermanentFailure, match=r"ada@example\.org"):
        await sender.send(reply(text="second"))
    sink.fail_with = None
    await sender.send(reply(text="third"))
    assert sink.bodies() == \
        ["first", "third"]
    assert sink.connections == 2  # the refused mail's connection is not used again
    await sender.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_unusable_address_is_permanent(sink: SmtpSink) -> None:
    with pytest.raises(PermanentFailure):
        await sender_for(sink.port).send(reply(to_address="not an address"))
    assert sink.messages == []


async def test_a_file_over_the_relays_size_fails_before_mail_from(make_sink: MakeSink) -> None:
    """The relay says ``SIZE 20480`` in its EHLO answer: a 30 KB file is not uploaded to be
    refused with a bare 552; the reply fails at once with both sizes and the file named, and
    the same relay still takes what fits."""
    from frontdesk.domain.messages import OutboundFile

    sink = await make_sink(data_size_limit=20480)
    data = bytes(range(256)) * 120  # 30 KB, about 41 KB in base64
    manual = OutboundFile("manual.pdf", "application/pdf", len(data), "0" * 64)
    with pytest.raises(PermanentFailure) as caught:
        await sender_for(sink.port).send(reply(attachments=(manual,)), [data])
    reason = caught.value.reason
    assert reason.startswith("the email with its files (manual.pdf (30 KB)) is ")
    assert reason.endswith(f"more than the 20 KB the mail relay 127.0.0.1:{sink.port} takes "
                           "(it says SIZE 20480)"), reason
    assert sink.messages == []
    await sender_for(sink.port).send(reply())
    assert len(sink.messages) == 1
