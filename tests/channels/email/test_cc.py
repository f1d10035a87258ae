"""CC, replying to everyone (reply-all): the people a customer copied stay on staff replies.

End to end: mail in over real SMTP with a ``Cc:``, staff replies out through a real SMTP relay on
loopback (its ``Cc:`` header and the RCPT TO recipients), the command line's ``frontdesk cc``,
a copied person's answer, and hostile CC lists; SQLite and (when named) PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select

from frontdesk.channels.base import PermanentFailure
from frontdesk.channels.email import OutboundConfig
from frontdesk.channels.email.parse import parse_email
from frontdesk.channels.email.sender import EmailSender
from frontdesk.domain import cc as cc_list
from frontdesk.domain.messages import OutboundMessage
from frontdesk.storage.models import Contact, Conversation, Event, Message
from tests.daemon.process.test_scheduler import (
    FakeClock,
    at,
    events,
    mail_in,
    scheduler_settings,
    staff_reply,
    start,
    sweep,
)
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import cli_config, detail, eventually, run_cli, send

COPIED = "Bob <bob@example.org>, carol@example.org, Support <support@example.com>"


@pytest.fixture
async def sink() -> Any:
    async with SmtpSink() as s:
        yield s


def parse(raw: str, **meta: Any) -> Any:
    return parse_email(raw.replace("\n", "\r\n").encode(), meta,
                       ["support@example.com", "hilfe@example.de"], own_domains=("example.com",))


async def _sent(sink: SmtpSink, n: int) -> bool:
    return len(sink.messages) >= n


async def _deliver(d: Any, sink: SmtpSink, n: int) -> None:
    await d.outbox.deliver_due()
    await eventually(lambda: _sent(sink, n))


# -- what a mail adds ------------------------------------------------------------------------------

def test_parse_keeps_the_people_copied_without_us_and_the_sender() -> None:
    m = parse("From: Ada <Ada@Example.org>\n"
              "To: support@example.com, Dan <DAN@example.net>\n"
              "Cc: Bob <bob@example.org>, support+FD-3@example.com, ada@example.org,\n"
              " not an address, <@broken>, Hilfe <HILFE@example.de>, carol@example.org,\n"
              " bob@example.org, =?utf-8?q?J=C3=BCrgen?= <jurgen@example.de>\n"
              "Subject: Order\nMessage-ID: <c1@example.org>\n\nHello\n")
    assert m.cc == ("dan@example.net", "bob@example.org", "carol@example.org",
                    "jurgen@example.de")
    assert m.sender_address == "ada@example.org"


def test_the_envelope_is_not_a_cc_list() -> None:
    """A Bcc reaches us only in the envelope (RCPT TO): it is never copied on replies."""
    m = parse("From: ada@example.org\nTo: support@example.com\nSubject: x\n\nhi\n",
              rcpt_tos=["support@example.com", "secret@example.org"])
    assert m.cc == ()


def test_a_hostile_cc_header_is_cut_to_fifty_plain_addresses() -> None:
    many = ", ".join(f"p{n}@example.org" for n in range(500))
    junk = ", ".join(['"a b"@example.org', "x@localhost", "-dash@example.org", "ü@example.org",
                      "a@b@example.org", "a@-x.example.org", "a" * 65 + "@example.org",
                      "support@EXAMPLE.com"])
    m = parse(f"From: ada@example.org\nTo: support@example.com\nCc: {junk}, {many}\n"
              "Subject: x\n\nhi\n")
    assert m.cc == tuple(f"p{n}@example.org" for n in range(cc_list.MAX_CC))


@pytest.mark.parametrize(("text", "address"), [
    ("Bob@Example.ORG", "bob@example.org"),
    ("<bob@example.org>", "bob@example.org"),
    ("mailto:bob@example.org", "bob@example.org"),
    ("o'brien+tag@mail.example.co.uk", "o'brien+tag@mail.example.co.uk"),
    ("bob@example", None),
    ("-bob@example.org", None),
    ("bob@exa mple.org", None),
    ("bob@example.org\r\nBcc: x@y.org", None),
    ("bøb@example.org", None),
    ("", None),
])
def test_clean_address(text: str, address: str | None) -> None:
    assert cc_list.clean_address(text) == address


def test_removed_addresses_stay_removed_until_staff_add_them() -> None:
    stored, added = cc_list.merged([], ["bob@example.org", "carol@example.org"],
                                   exclude=["ada@example.org"])
    assert (stored, added) == (["bob@example.org", "carol@example.org"],
                               ["bob@example.org", "carol@example.org"])
    stored, added, taken = cc_list.changed(stored, remove=["Bob@example.org"])
    assert stored == ["carol@example.org", "-bob@example.org"] and taken == ["bob@example.org"]
    assert cc_list.active(stored) == ["carol@example.org"]
    assert cc_list.merged(stored, ["bob@example.org", "ada@example.org"],
                          exclude=["ada@example.org"]) == (stored, [])
    stored, added, taken = cc_list.changed(stored, add=["bob@example.org"])
    assert stored == ["carol@example.org", "bob@example.org"] and added == ["bob@example.org"]
    with pytest.raises(cc_list.CcError, match="not an email address"):
        cc_list.changed(stored, add=["nope"])
    full = [f"p{n}@example.org" for n in range(cc_list.MAX_CC)]
    with pytest.raises(cc_list.CcError, match="at most 50"):
        cc_list.changed(full, add=["one-more@example.org"])


# -- end to end ------------------------------------------------------------------------------------

async def test_a_staff_reply_copies_everyone_the_customer_copied_an_acknowledgement_nobody(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink,
        capsys: Any, tmp_path: Any) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(make_settings, sink,
                                                       database_url=database_url), clock)
    await mail_in(d, Cc=COPIED)
    shown = await detail(d.store, 1)
    assert shown["cc"] == ["bob@example.org", "carol@example.org"]
    [added] = await events(d, "cc_changed")
    assert added.actor == "customer" and added.data["added"] == shown["cc"]

    await sweep(d)  # the acknowledgement: an automatic reply never goes to a CC list
    await eventually(lambda: _sent(sink, 1))
    mail_from, rcpt, _ = sink.messages[0]
    assert (mail_from, rcpt) == ("<>", ["ada@example.org"])
    assert sink.parsed(0)["Cc"] is None

    await staff_reply(d, 1, "Hello all, it left our warehouse today.", clock)
    await _deliver(d, sink, 2)
    mail_from, rcpt, _ = sink.messages[1]
    assert mail_from == "support@example.com"
    assert rcpt == ["ada@example.org", "bob@example.org", "carol@example.org"]
    sent = sink.parsed(1)
    assert str(sent["To"]) == "Ada Lovelace <ada@example.org>"
    assert str(sent["Cc"]) == "bob@example.org, carol@example.org"
    assert sent["Reply-To"] == "support+FD-1@example.com"
    reply = (await detail(d.store, 1))["messages"][-1]
    assert (reply["address"], reply["delivery_status"]) == ("ada@example.org", "sent")

    config = cli_config(d, tmp_path, relay_port=sink.port)
    code, out, _err = await run_cli(capsys, "show", "FD-1", "--json", "-c", config)
    assert code == 0 and json.loads(out)["cc"] == ["bob@example.org", "carol@example.org"]
    code, out, _err = await run_cli(capsys, "show", "FD-1", "-c", config)
    assert "  cc bob@example.org, carol@example.org\n" in out
    code, out, _err = await run_cli(capsys, "conversations", "--json", "-c", config)
    assert json.loads(out)[0]["cc"] == ["bob@example.org", "carol@example.org"]


async def test_a_removed_address_is_not_copied_nor_added_back_by_later_mail(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink,
        capsys: Any, tmp_path: Any) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, database_url=database_url, acknowledgement={"enabled": False}),
        clock)
    await mail_in(d, Cc=COPIED)
    config = cli_config(d, tmp_path, relay_port=sink.port)

    code, out, err = await run_cli(capsys, "cc", "FD-1", "-c", config)
    assert (code, out) == (0, "FD-1 CC: bob@example.org, carol@example.org\n"), err
    code, out, err = await run_cli(capsys, "cc", "FD-1", "-bob@example.org", "--as", "Grace",
                                   "-c", config)
    assert (code, out) == (0, "FD-1: CC removed bob@example.org (now carol@example.org)\n"), err
    code, out, _ = await run_cli(capsys, "cc", "FD-1", "-bob@example.org", "-c", config)
    assert out == "FD-1 unchanged (now carol@example.org)\n"
    code, _out, err = await run_cli(capsys, "cc", "FD-1", "+ada@example.org", "-c", config)
    assert code == 1 and "the customer's own address" in err
    code, _out, err = await run_cli(capsys, "cc", "FD-1", "+not-an-address@", "-c", config)
    assert code == 1 and "is not an email address" in err
    code, _out, err = await run_cli(capsys, "cc", "FD-1", "--bogus", "-c", config)
    assert code == 2
    code, out, _ = await run_cli(capsys, "cc", "FD-1", "+Dan@Example.net", "--json",
                                 "-c", config)
    assert json.loads(out) == {"reference": "FD-1", "cc": ["carol@example.org",
                                                           "dan@example.net"],
                               "added": ["dan@example.net"], "removed": []}
    changes = await events(d, "cc_changed")
    assert [(e.actor, e.data["added"], e.data["removed"]) for e in changes[1:]] == [
        ("Grace", [], ["bob@example.org"]),
        (changes[2].actor, ["dan@example.net"], [])]
    assert changes[1].data["via"] == "cli"

    await staff_reply(d, 1, "On its way.", clock)
    await _deliver(d, sink, 1)
    assert sink.messages[0][1] == ["ada@example.org", "carol@example.org", "dan@example.net"]
    assert "bob" not in str(sink.parsed(0)["Cc"])

    # The customer answers all, still copying bob (and now erin): bob stays out, erin joins.
    clock.advance(minutes=5)
    await mail_in(d, msgid="<m2@example.org>", subject="Re: Order 1234 never arrived [FD-1]",
                  In_Reply_To=sink.parsed(0)["Message-ID"],
                  Cc="bob@example.org, carol@example.org, erin@example.org")
    assert len(await _conversations(d)) == 1
    assert (await detail(d.store, 1))["cc"] == ["carol@example.org", "dan@example.net",
                                                "erin@example.org"]
    await staff_reply(d, 1, "Here is the tracking link.", clock)
    await _deliver(d, sink, 2)
    assert "bob@example.org" not in sink.messages[1][1]

    # Staff can add bob back: the removal is undone.
    code, out, _ = await run_cli(capsys, "cc", "FD-1", "+bob@example.org", "-c", config)
    assert out.startswith("FD-1: CC added bob@example.org")
    assert (await detail(d.store, 1))["cc"][-1] == "bob@example.org"


async def test_a_copied_person_answers_into_the_same_conversation(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, database_url=database_url, acknowledgement={"enabled": False}),
        clock)
    await mail_in(d, Cc=COPIED)
    await staff_reply(d, 1, "We are on it.", clock)
    await _deliver(d, sink, 1)
    ours = sink.parsed(0)["Message-ID"]

    # bob answers our reply (reply-all: ada in Cc): it threads by In-Reply-To.
    clock.advance(minutes=5)
    await mail_in(d, frm="Bob <bob@example.org>", msgid="<b1@example.org>",
                  subject="Re: Order 1234 never arrived [FD-1]", body="I ordered it for her.",
                  In_Reply_To=ours, References=f"<m1@example.org> {ours}",
                  Cc="Ada Lovelace <ada@example.org>, carol@example.org", to="support@example.com")
    assert len(await _conversations(d)) == 1
    shown = await detail(d.store, 1)
    bob = shown["messages"][-1]
    assert (bob["direction"], bob["author"], bob["address"], bob["author_name"]) == \
        ("in", "customer", "bob@example.org", "Bob")
    assert shown["contact"]["identities"] == [{"channel": "email", "address": "ada@example.org"}]
    assert shown["cc"] == ["bob@example.org", "carol@example.org"]  # ada never joins her own CC
    assert shown["status"] == "open"  # a customer message: back to the team

    # Our answer still goes to the customer, bob copied, ada not twice.
    await staff_reply(d, 1, "Thanks Bob, noted.", clock)
    await _deliver(d, sink, 2)
    _from, rcpt, _ = sink.messages[1]
    assert rcpt == ["ada@example.org", "bob@example.org", "carol@example.org"]
    sent = sink.parsed(1)
    assert str(sent["To"]) == "Ada Lovelace <ada@example.org>"
    assert str(sent["Cc"]) == "bob@example.org, carol@example.org"
    assert sent["In-Reply-To"] == "<b1@example.org>"  # it answers bob's mail

    # carol writes with only the reference in the subject (her client dropped the headers):
    # someone copied may use it; a stranger may not.
    await mail_in(d, frm="carol@example.org", msgid="<c1@example.org>",
                  subject="Re: [FD-1] Order", body="Me too!")
    await mail_in(d, frm="mallory@example.net", msgid="<x1@example.net>",
                  subject="Re: [FD-1] Order", body="Let me in")
    convs = await _conversations(d)
    assert [c.id for c in convs] == [1, 2]
    assert (await detail(d.store, 1))["messages"][-1]["address"] == "carol@example.org"
    assert (await detail(d.store, 2))["messages"][0]["address"] == "mallory@example.net"
    async with d.store.reader() as s:  # bob and carol are known now, as people of their own
        assert (await s.execute(select(func.count()).select_from(Contact))).scalar_one() == 4


async def test_a_hostile_cc_list_still_gets_the_reply_out(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, database_url=database_url, acknowledgement={"enabled": False}),
        clock)
    many = ", ".join(f"p{n}@example.org" for n in range(500))
    await mail_in(d, Cc=f"<@x>, broken@, support@example.com, Support+FD-7@Example.com, "
                        f"ADA@example.org, {many}")
    shown = await detail(d.store, 1)
    assert len(shown["cc"]) == 50 and shown["cc"][0] == "p0@example.org"
    await staff_reply(d, 1, "Noted.", clock)
    await _deliver(d, sink, 1)
    _from, rcpt, _ = sink.messages[0]
    assert rcpt == ["ada@example.org", *(f"p{n}@example.org" for n in range(50))]
    async with d.store.reader() as s:  # nothing out of our own address, nothing failed
        assert (await s.execute(select(func.count()).select_from(Message)
                                .where(Message.delivery_status == "failed"))).scalar_one() == 0


async def test_a_bounced_copy_does_not_fail_the_reply(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, acknowledgement={"enabled": False}), clock)
    await mail_in(d, Cc="bob@example.org")
    await staff_reply(d, 1, "We are on it.", clock)
    await _deliver(d, sink, 1)
    ours = sink.parsed(0)["Message-ID"]
    report = ("From: MAILER-DAEMON@mx.example.org\r\nTo: support@example.com\r\n"
              "Subject: Undelivered Mail\r\nMessage-ID: <dsn1@mx.example.org>\r\n"
              "MIME-Version: 1.0\r\nContent-Type: multipart/report; "
              "report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain"
              "\r\n\r\nDelivery failed.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
              "Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; "
              "bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b\r\n"
              "Content-Type: message/rfc822\r\n\r\nFrom: support@example.com\r\n"
              f"Message-ID: {ours}\r\n\r\nWe are on it.\r\n--b--\r\n").encode()
    await send(d.email.smtp.port, report, sender="")
    await eventually(lambda: _cc_bounced(d))
    [reply] = [m for m in (await detail(d.store, 1))["messages"] if m["direction"] == "out"]
    assert reply["delivery_status"] == "sent" and "failure_reason" not in reply


async def _cc_bounced(d: Any) -> bool:
    return bool(await events(d, "cc_bounced"))


async def _conversations(d: Any) -> list[Conversation]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Conversation).order_by(Conversation.id)))
                    .unique().scalars())


# -- the relay's answer per recipient -------------------------------------------------------------

class _Picky(SmtpSink):
    """A relay that refuses some recipients."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if address in self.refused:
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        return await super().handle_RCPT(server, session, envelope, address, options)


def _sender(port: int) -> EmailSender:
    config = OutboundConfig.model_validate({"host": "127.0.0.1", "port": port,
                                            "starttls": "off",
                                            "from": "Support <support@example.com>"})
    return EmailSender(config, hostname="frontdesk.test")


_REPLY = OutboundMessage(channel="email", to_address="ada@example.org", text="Hello",
                         subject="Re: Order [FD-1]",
                         cc=("bob@example.org", "ada@example.org", "not an address",
                             "carol@example.org"))


async def test_a_refused_copy_is_said_and_the_reply_still_counts_as_sent() -> None:
    async with _Picky({"bob@example.org"}) as relay:
        receipt = await _sender(relay.port).send(_REPLY)
        [(_from, rcpt, data)] = relay.messages
    assert rcpt == ["ada@example.org", "carol@example.org"]
    assert b"Cc: bob@example.org, carol@example.org" in data  # as written, whoever refused
    assert "CC refused: bob@example.org: 550 5.1.1" in receipt.detail


async def test_a_refused_customer_fails_the_reply_for_good_even_if_copies_went() -> None:
    async with _Picky({"ada@example.org"}) as relay:
        with pytest.raises(PermanentFailure) as failed:
            await _sender(relay.port).send(_REPLY)
    assert failed.value.reason.startswith(
        "the mail relay refused the recipient ada@example.org: 550 5.1.1")
    assert "only the copies to bob@example.org, carol@example.org went out" in failed.value.reason


async def test_the_audit_of_a_slackless_change_names_who(make_settings: Any, daemon_factory: Any,
                                                         sink: SmtpSink) -> None:
    """``change_cc`` writes nothing when nothing changes, and one event when something does."""
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, acknowledgement={"enabled": False}), clock)
    await mail_in(d)
    async with d.store.session() as s:
        c = await s.get_one(Conversation, 1)
        assert await cc_list.change_cc(s, c, remove=["bob@example.org"], actor="Grace",
                                       now=clock()) == ([], ["bob@example.org"])
        assert await cc_list.change_cc(s, c, remove=["bob@example.org"], actor="Grace",
                                       now=clock()) == ([], [])
    async with d.store.reader() as s:
        kinds = [e.kind for e in (await s.execute(select(Event).order_by(Event.id))).scalars()]
    assert kinds.count("cc_changed") == 1
    assert (await detail(d.store, 1))["cc"] == []


async def test_erasing_a_person_takes_them_off_every_cc_list(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink,
        capsys: Any, tmp_path: Any) -> None:
    clock = FakeClock(at(2026, 11, 23, 10, 0))
    d = await start(daemon_factory, scheduler_settings(
        make_settings, sink, database_url=database_url, acknowledgement={"enabled": False}),
        clock)
    await mail_in(d, Cc=COPIED)  # FD-1, ada's, copying bob and carol
    await mail_in(d, frm="Bob <bob@example.org>", msgid="<b9@example.org>", subject="Mine")
    config = cli_config(d, tmp_path, relay_port=sink.port)
    code, out, _ = await run_cli(capsys, "contact", "export", "ada@example.org", "-c", config)
    assert json.loads(out)["conversations"][0]["cc"] == ["bob@example.org", "carol@example.org"]

    code, _out, err = await run_cli(capsys, "contact", "erase", "bob@example.org", "--confirm",
                                    "-c", config)
    assert code == 0, err
    assert (await detail(d.store, 1))["cc"] == ["carol@example.org"]
    [added] = await events(d, "cc_changed")
    assert added.data["added"] == ["carol@example.org"]

    code, _out, err = await run_cli(capsys, "contact", "erase", "ada@example.org", "--confirm",
                                    "-c", config)
    assert code == 0, err
    async with d.store.reader() as s:
        assert (await s.get_one(Conversation, 1)).cc == []
