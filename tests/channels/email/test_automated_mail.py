"""Automated mail end to end over real SMTP: auto-replies, bounces, lists and our own mail coming
back are stored and flagged, nothing acknowledges them or reopens a resolved conversation, and a
bounce of one of our replies marks that reply failed with a reason a person understands. A
bounce with no sender address at all is stored from the mail system's placeholder identity,
never left as a dead letter."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from frontdesk.channels.email.ids import new_message_id
from frontdesk.domain.conversations import add_staff_reply, get_conversation, resolve
from frontdesk.storage.models import Event, InboundJournal, Message, Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, processed, send


@pytest.fixture
async def daemon(make_settings: Any, daemon_factory: Any, clock: Any) -> Any:
    return await daemon_factory(make_settings(), clock=clock)


async def _outbox_rows(d: Any) -> list[Outbox]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Outbox))).scalars().all())


async def _events(d: Any, kind: str) -> list[Event]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Event).where(Event.kind == kind))).scalars().all())


AUTOMATED = [
    ("auto-submitted", {"Auto_Submitted": "auto-replied"}, "ada@example.org"),
    ("auto-generated", {"Auto_Submitted": "auto-generated"}, "ada@example.org"),
    ("x-autoreply", {"X_Autoreply": "yes"}, "ada@example.org"),
    ("x-autorespond", {"X_Autorespond": "Out of office"}, "ada@example.org"),
    ("precedence-bulk", {"Precedence": "bulk"}, "news@shop.example"),
    ("precedence-list", {"Precedence": "list"}, "list@lists.example"),
    ("precedence-junk", {"Precedence": "junk"}, "ada@example.org"),
    ("precedence-auto-reply", {"Precedence": "auto_reply"}, "ada@example.org"),
    ("x-loop", {"X_Loop": "helpdesk@other.example"}, "helpdesk@other.example"),
    ("apple-vacation", {"X_Apple_Action": "VACATION"}, "ada@icloud.example"),
    ("outlook-auto-reply", {"X_Auto_Response_Suppress": "All",
                            "Subject": "Automatic reply: Order 1234"}, "ada@example.org"),
    ("list-id", {"List_Id": "<users.lists.example>"}, "list@lists.example"),
    ("list-unsubscribe", {"List_Unsubscribe": "<mailto:leave@shop.example>"},
     "news@shop.example"),
    ("x-failed-recipients", {"X_Failed_Recipients": "gone@example.org"},
     "mailer@mx.example"),
    ("mailer-daemon", {}, "MAILER-DAEMON@mx.example"),
    ("postmaster", {}, "postmaster@mx.example"),
    ("no-reply", {}, "no-reply@shop.example"),
]


@pytest.mark.parametrize(("kind", "headers", "sender"), AUTOMATED,
                         ids=[a[0] for a in AUTOMATED])
async def test_automated_mail_is_stored_flagged_and_not_acknowledged(
        daemon: Any, kind: str, headers: dict[str, str], sender: str) -> None:
    subject = headers.get("Subject", f"Automated: {kind}")
    extra = {name: value for name, value in headers.items() if name != "Subject"}
    await send(daemon.email.smtp.port,
               mail(frm=sender, subject=subject, msgid=f"<{kind}@auto.example>", **extra),
               sender=sender)
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    shown = await detail(daemon.store, conv.id)
    [m] = shown["messages"]
    assert m["automated"] is True
    assert shown["first_response_due_at"] is None  # no SLA clock for a robot
    assert await _outbox_rows(daemon) == []  # nothing acknowledges it
    [received] = await _events(daemon, "message_received")
    assert received.data["automated"]  # the reason, for the audit


async def test_an_exchange_mail_with_only_x_auto_response_suppress_is_a_persons(
        daemon: Any) -> None:
    """Outlook and Exchange put ``X-Auto-Response-Suppress`` on ordinary mail too (Discourse's
    test suite has such a mail): alone, it is no sign of a robot."""
    await send(daemon.email.smtp.port,
               mail(msgid="<exchange@example.org>", X_Auto_Response_Suppress="All",
                    X_MS_Has_Attach=""))
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    shown = await detail(daemon.store, conv.id)
    assert shown["messages"][0]["automated"] is False
    assert shown["first_response_due_at"] is not None  # the SLA clock runs


async def test_null_sender_is_automated(daemon: Any) -> None:
    await send(daemon.email.smtp.port, mail(msgid="<null@example.org>"), sender="")
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    assert (await detail(daemon.store, conv.id))["messages"][0]["automated"] is True
    assert await _outbox_rows(daemon) == []


async def test_delivery_status_report_is_automated(daemon: Any) -> None:
    await send(daemon.email.smtp.port, _dsn("<somebody-elses@example.net>"), sender="")
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    assert (await detail(daemon.store, conv.id))["messages"][0]["automated"] is True


async def test_our_own_mail_coming_back_is_automated(daemon: Any) -> None:
    ours = new_message_id("example.com")
    await send(daemon.email.smtp.port,
               mail(frm="Support <support@example.com>", msgid=f"<{ours}>",
                    subject="Re: Your order [FD-99]"), sender="support@example.com")
    await eventually(lambda: processed(daemon.store))
    async with daemon.store.reader() as s:
        [m] = (await s.execute(select(Message))).scalars().all()
    assert m.automated
    [received] = await _events(daemon, "message_received")
    assert received.data["automated"].startswith("our own mail came back")


# --- around our own replies ----------------------------------------------------------------------

async def _answered(make_settings: Any, daemon_factory: Any, clock: Any, sink: SmtpSink) -> Any:
    """A conversation with a customer mail and a staff reply that went out through the sink."""
    d = await daemon_factory(make_settings(email={"outbound": {"port": sink.port}}), clock=clock)
    await send(d.email.smtp.port, mail(msgid="<order@example.org>"))
    await eventually(lambda: processed(d.store))
    async with d.store.session() as s:
        conversation = await get_conversation(s, 1)
        reply = await add_staff_reply(s, conversation, "Your parcel left today.",
                                      author="Grace", replies=d.replies, now=clock())
    d.outbox.kick()
    await eventually(lambda: _delivery(d, reply.id, "sent"))
    return d, reply.id, reply.external_id


async def _delivery(d: Any, message_id: int, status: str) -> bool:
    async with d.store.reader() as s:
        m = await s.get(Message, message_id)
        return m is not None and m.delivery_status == status


async def _message(d: Any, message_id: int) -> Message:
    async with d.store.reader() as s:
        return await s.get_one(Message, message_id)


def _dsn(original_id: str, *, action: str = "failed", status: str = "5.1.1",
         diagnostic: str = "smtp; 550 5.1.1 <ada@example.org>: Recipient address rejected: "
                           "User unknown in virtual mailbox table") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "To: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-" + action + "@mx.example.org>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\r\n"
        "--BB\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system at host mx.example.org.\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; ada@example.org\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n\r\n"
        "--BB\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: Example Support <support@example.com>\r\nTo: ada@example.org\r\n"
        f"Subject: Re: Order 1234 never arrived [FD-1]\r\nMessage-ID: {original_id}\r\n\r\n"
        "--BB--\r\n"
    ).encode()


async def test_a_bounce_marks_our_reply_failed_in_plain_words(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        await send(d.email.smtp.port, _dsn(f"<{reply_msgid}>"), sender="")
        await eventually(lambda: _delivery(d, reply_id, "failed"))
        reply = await _message(d, reply_id)
        assert reply.failure_reason is not None
        assert "could not be delivered" in reply.failure_reason
        assert "the address does not exist" in reply.failure_reason
        assert "550 5.1.1" in reply.failure_reason and "User unknown" in reply.failure_reason
        shown = await detail(d.store, 1)
        bounce = shown["messages"][-1]  # stored in the same conversation, flagged
        assert bounce["automated"] is True and bounce["direction"] == "in"
        assert shown["messages"][1]["failure_reason"] == reply.failure_reason
        assert shown["status"] == "pending"  # a bounce is not the customer answering
        [failed] = [e for e in await _events(d, "delivery_failed")
                    if e.data.get("source") == "bounce"]
        assert failed.message_id == reply_id and failed.actor == "mail server"


async def test_a_plain_text_bounce_referring_to_our_reply(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        bounce = EmailMessage()
        bounce["From"] = "MAILER-DAEMON@mx.example.org"
        bounce["To"] = "support@example.com"
        bounce["Subject"] = "Mail delivery failed: returning message to sender"
        bounce["Message-ID"] = "<exim-bounce@mx.example.org>"
        bounce["X-Failed-Recipients"] = "ada@example.org"
        bounce.set_content(
            "This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            "  ada@example.org\n    host mx.example.org [192.0.2.1]\n"
            "    SMTP error from remote mail server after RCPT TO:<ada@example.org>:\n"
            "    550 5.2.2 Mailbox full\n\n"
            "------ This is a copy of the message, including all the headers. ------\n\n"
            f"Message-ID: <{reply_msgid}>\nSubject: Re: Order 1234 never arrived\n")
        await send(d.email.smtp.port, bounce, sender="")
        await eventually(lambda: _delivery(d, reply_id, "failed"))
        reason = (await _message(d, reply_id)).failure_reason or ""
        assert "ada@example.org" in reason and "550 5.2.2 Mailbox full" in reason


async def test_a_gateways_bounce_from_a_non_null_sender_marks_our_reply_failed(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """An InterScan-style notice: sent from the gateway's own address (not the null sender), a
    plain ``multipart/mixed`` with our reply attached as ``message/rfc822``, no DSN part."""
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        bounce = (
            "From: imss@gw.example.org\r\nTo: support@example.com\r\n"
            "Subject: Mail could not be delivered\r\nMessage-ID: <imss-1@gw.example.org>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"IS\"\r\n\r\n"
            "--IS\r\nContent-Type: text/plain\r\n\r\n"
            "****** Message from InterScan Messaging Security Suite ******\r\n\r\n"
            "Sent <<< RCPT TO:<ada@example.org>\r\nReceived >>> 550 5.1.1 unknown user.\r\n"
            "\r\n--IS\r\nContent-Type: message/rfc822\r\n\r\n"
            "From: Example Support <support@example.com>\r\nTo: ada@example.org\r\n"
            f"Subject: Re: Order 1234 never arrived [FD-1]\r\nMessage-ID: <{reply_msgid}>\r\n"
            "\r\nYour parcel left today.\r\n--IS--\r\n").encode()
        await send(d.email.smtp.port, bounce, sender="imss@gw.example.org")
        await eventually(lambda: _delivery(d, reply_id, "failed"))
        reason = (await _message(d, reply_id)).failure_reason or ""
        assert "could not be delivered" in reason and "550 5.1.1" in reason
        shown = await detail(d.store, 1)
        assert shown["messages"][-1]["automated"] is True
        assert shown["status"] == "pending"


async def test_a_delay_warning_does_not_fail_the_reply(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        await send(d.email.smtp.port,
                   _dsn(f"<{reply_msgid}>", action="delayed", status="4.4.1",
                        diagnostic="smtp; 451 4.4.1 connection timed out"), sender="")
        await eventually(lambda: _has_event(d, "delivery_delayed"))
        assert (await _message(d, reply_id)).delivery_status == "sent"


async def _has_event(d: Any, kind: str) -> bool:
    return bool(await _events(d, kind))


async def test_an_out_of_office_reply_is_not_a_bounce_and_does_not_reopen(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        async with d.store.session() as s:
            await resolve(s, await get_conversation(s, 1), actor="Grace", now=clock())
        outbox_before = len(await _outbox_rows(d))
        clock.advance(minutes=5)
        await send(d.email.smtp.port,
                   mail(subject="Automatic reply: Re: Order 1234 never arrived",
                        msgid="<ooo@example.org>", body="I am out of the office until Monday.",
                        In_Reply_To=f"<{reply_msgid}>", Auto_Submitted="auto-replied"),
                   sender="")
        await eventually(lambda: processed(d.store))
        shown = await detail(d.store, 1)
        assert [m["automated"] for m in shown["messages"]] == [False, False, True]
        assert shown["status"] == "resolved"  # an auto-reply reopens nothing
        assert not await _events(d, "conversation_reopened")
        assert (await _message(d, reply_id)).delivery_status == "sent"
        assert len(await _outbox_rows(d)) == outbox_before  # and nothing answers it
        # The customer themself writing back does reopen it.
        await send(d.email.smtp.port, mail(subject="Re: Order 1234 never arrived",
                                           msgid="<back@example.org>",
                                           In_Reply_To=f"<{reply_msgid}>"))
        await eventually(lambda: _status_is(d, "open"))


async def _status_is(d: Any, status: str) -> bool:
    return (await detail(d.store, 1))["status"] == status


# --- bounces without a sender address ------------------------------------------------------------

SISIMAI = Path(__file__).parent / "data" / "sisimai"


def _real_bounce(from_line: bytes | None) -> bytes:
    """A real bounce (sisimai's not-rb-issue-368-bug.eml: Return-Path <>, the bounced mail
    quoted, "reject reason: Mailbox full") with its From header replaced by ``from_line``
    (None: no From at all), and without its mbox "From " line."""
    raw = (SISIMAI / "not-rb-issue-368-bug.eml").read_bytes()
    assert raw.startswith(b"From MAILER-DAEMON ")
    header, blank, body = raw.split(b"\n", 1)[1].partition(b"\n\n")
    lines = [line for line in header.split(b"\n") if not line.startswith(b"From: ")]
    if from_line is not None:
        lines.insert(3, from_line)
    return b"\n".join(lines) + blank + body


UNADDRESSED = [None, b"From: Mail Delivery System <>", b"From: MAILER-DAEMON"]


@pytest.mark.parametrize("from_line", UNADDRESSED,
                         ids=["no-from", "empty-address", "mailer-daemon-without-domain"])
async def test_a_bounce_without_a_sender_address_is_stored_not_a_dead_letter(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        from_line: bytes | None) -> None:
    async with SmtpSink() as sink:
        d = await daemon_factory(make_settings(
            database_url=database_url, scheduler={"enabled": True, "interval": "1h"},
            email={"outbound": {"port": sink.port}}), clock=clock)
        answer = await send(d.email.smtp.port, _real_bounce(from_line), sender="")
        assert answer == {}  # 250, as before
        await send(d.email.smtp.port, mail(msgid="<customer@example.org>"))  # for comparison
        await eventually(lambda: processed(d.store))
        async with d.store.reader() as s:
            journal = (await s.execute(select(InboundJournal.state, InboundJournal.error)
                                       .order_by(InboundJournal.id))).all()
        assert [tuple(row) for row in journal] == [("done", None), ("done", None)]

        bounce_conv, customer_conv = await conversations(d.store)
        shown = await detail(d.store, bounce_conv.id)
        assert shown["contact"]["name"] == "Mail Delivery System"
        assert [(i["channel"], i["address"]) for i in shown["contact"]["identities"]] == [
            ("email", "mailer-daemon@example.com")]  # the inbox's domain: see README
        [bounce] = shown["messages"]
        assert bounce["automated"] is True and "reject reason: Mailbox full" in bounce["text"]
        assert shown["first_response_due_at"] is None  # no SLA clock for a robot

        clock.advance(minutes=5)
        await d.scheduler.sweep()
        await d.outbox.deliver_due()
        await eventually(lambda: _sent_count(sink, 1))
        # Only the customer is acknowledged; nothing goes to the mail system's placeholder.
        assert [rcpt for _from, rcpt, _data in sink.messages] == [["ada@example.org"]]
        assert all(row.conversation_id == customer_conv.id for row in await _outbox_rows(d))


async def _sent_count(sink: SmtpSink, n: int) -> bool:
    return len(sink.messages) >= n


async def test_a_bounce_from_mailer_daemon_without_domain_marks_our_reply_failed(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """An old sendmail's bounce: the null sender, ``From: MAILER-DAEMON``, the transcript and
    the returned mail's headers in the text."""
    async with SmtpSink() as sink:
        d, reply_id, reply_msgid = await _answered(make_settings, daemon_factory, clock, sink)
        bounce = (
            "From: MAILER-DAEMON\r\nTo: support@example.com\r\n"
            "Subject: Returned mail: see transcript for details\r\n"
            "Message-ID: <sendmail-bounce@mx.example.org>\r\n\r\n"
            "The original message was received at Mon, 23 Nov 2026 10:00:05 GMT\r\n\r\n"
            "   ----- The following addresses had permanent fatal errors -----\r\n"
            "<ada@example.org>\r\n"
            "    (reason: 550 5.1.1 <ada@example.org>... User unknown)\r\n\r\n"
            "   ----- Original message follows -----\r\n"
            f"Message-ID: <{reply_msgid}>\r\nSubject: Re: Order 1234 never arrived\r\n"
        ).encode()
        await send(d.email.smtp.port, bounce, sender="")
        await eventually(lambda: _delivery(d, reply_id, "failed"))
        reason = (await _message(d, reply_id)).failure_reason or ""
        assert "the address does not exist" in reason and "User unknown" in reason
        shown = await detail(d.store, 1)
        assert shown["messages"][-1]["automated"] is True  # kept in the conversation
        assert shown["status"] == "pending"
