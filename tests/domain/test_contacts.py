"""One customer across channels: `frontdesk contact merge/show/link`, `frontdesk show` with the
contact's other conversations and the quoted part folded, and verified identity links."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.domain.contacts import LinkVerifier, offered_address
from frontdesk.storage.models import (
    Contact,
    Conversation,
    Event,
    Identity,
    IdentityLink,
    Message,
    Outbox,
)
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import (
    cli_config,
    conversations,
    detail,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)


@pytest.fixture
async def daemon(database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> Any:
    return await daemon_factory(make_settings(database_url=database_url), clock=clock)


async def _mails(d: Any, *messages: Any) -> None:
    for m in messages:
        await send(d.email.smtp.port, m, sender=m["From"].addresses[0].addr_spec)
    await eventually(lambda: processed(d.store))


async def test_merge_makes_one_contact_with_both_histories(
        daemon: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    await _mails(daemon,
                 mail(frm="Ada Lovelace <ada@example.org>", msgid="<a1@example.org>",
                      subject="Order 1234 never arrived"),
                 mail(frm="Ada L. <ada.lovelace@work.example>", msgid="<a2@work.example>",
                      subject="Invoice for my company"))
    cfg = cli_config(daemon, tmp_path)
    code, out, err = await run_cli(capsys, "contact", "merge", "ada@example.org",
                               "ada.lovelace@work.example", "--as", "Grace", "-c", cfg)
    assert code == 0, err
    assert "merged into contact" in out
    code, out, _ = await run_cli(capsys, "contact", "show", "ada.lovelace@work.example", "--json",
                             "-c", cfg)
    shown = json.loads(out)
    assert shown["name"] == "Ada Lovelace"
    assert {(i["channel"], i["address"]) for i in shown["identities"]} == {
        ("email", "ada@example.org"), ("email", "ada.lovelace@work.example")}
    assert sorted(c["subject"] for c in shown["conversations"]) == [
        "Invoice for my company", "Order 1234 never arrived"]
    assert all(c["messages"] == 1 for c in shown["conversations"])  # both histories kept
    async with daemon.store.reader() as s:
        [merged] = (await s.execute(select(Event).where(Event.kind == "contacts_merged")))\
            .scalars().all()
        other = await s.get_one(Contact, merged.data["merged"])
    assert merged.actor == "Grace" and other.merged_into_id == shown["id"]
    # `frontdesk show` lists the contact's other conversation, on any channel.
    [first, second] = await conversations(daemon.store)
    code, out, _ = await run_cli(capsys, "show", first.reference, "--json", "-c", cfg)
    assert json.loads(out)["other_conversations"] == [
        {"reference": second.reference, "channel": "email", "status": "open",
         "subject": "Invoice for my company"}]
    code, out, _ = await run_cli(capsys, "show", first.reference, "-c", cfg)
    assert f"other conversations: {second.reference} (email, open) Invoice" in out
    # New mail from the merged address joins the one contact.
    await _mails(daemon, mail(frm="ada.lovelace@work.example", msgid="<a3@work.example>",
                              subject="Another thing"))
    convs = await conversations(daemon.store)
    assert {c.contact_id for c in convs} == {shown["id"]}


async def test_merge_by_phone_number_and_plain_words_on_errors(
        daemon: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str], clock: Any) -> None:
    await _mails(daemon, mail(msgid="<p1@example.org>"))
    async with daemon.store.session() as s:
        contact = Contact(name="Ada (SMS)", created_at=clock(), updated_at=clock(), tags={})
        s.add(contact)
        await s.flush()
        s.add(Identity(contact_id=contact.id, channel="sms", address="+15550001111",
                       created_at=clock()))
        s.add(Conversation(channel="sms", contact_id=contact.id, subject="", status="open",
                           priority="normal", created_at=clock(), updated_at=clock(),
                           escalation_level=0))
    cfg = cli_config(daemon, tmp_path)
    code, out, err = await run_cli(capsys, "contact", "merge", "ada@example.org",
                               "+1 (555) 000-1111", "-c", cfg)
    assert code == 0, err
    code, out, _ = await run_cli(capsys, "contact", "show", "+15550001111", "-c", cfg)
    assert "sms       +15550001111" in out and "email     ada@example.org" in out
    assert re.search(r"FD-\d+\s+open\s+sms ", out)  # its SMS conversation is listed
    code, _, err = await run_cli(capsys, "contact", "merge", "ada@example.org", "+15550001111",
                             "-c", cfg)
    assert code == 1 and "already the same contact" in err and "Traceback" not in err
    code, _, err = await run_cli(capsys, "contact", "show", "nobody@example.org", "-c", cfg)
    assert code == 1 and err.strip() == "frontdesk: no contact has the address nobody@example.org"
    code, _, err = await run_cli(capsys, "contact", "show", "not an address", "-c", cfg)
    assert code == 1 and "neither a contact id nor an address" in err


async def test_the_same_display_name_is_never_merged(daemon: Any) -> None:
    await _mails(daemon,
                 mail(frm="Ada Lovelace <ada@example.org>", msgid="<n1@example.org>"),
                 mail(frm="Ada Lovelace <ada@elsewhere.example>", msgid="<n2@elsewhere.example>"))
    async with daemon.store.reader() as s:
        contacts = (await s.execute(select(func.count()).select_from(Contact))).scalar_one()
    assert contacts == 2


async def test_a_quoted_reply_stores_its_new_part_and_show_folds_the_quote(
        daemon: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    body = ("Thanks, it arrived this morning!\n\n"
            "On Mon, 23 Nov 2026 at 10:00, Example Support <support@example.com> wrote:\n"
            "> Your parcel left today.\n>\n> > Hello, where is my order?\n")
    await _mails(daemon, mail(msgid="<q@example.org>", subject="Re: Order 1234", body=body))
    [conv] = await conversations(daemon.store)
    [m] = (await detail(daemon.store, conv.id))["messages"]
    assert m["text"] == body.rstrip()  # the full text is kept
    assert m["text_new"] == "Thanks, it arrived this morning!"
    cfg = cli_config(daemon, tmp_path)
    code, out, _ = await run_cli(capsys, "show", conv.reference, "-c", cfg)
    assert code == 0
    assert "   Thanks, it arrived this morning!\n   \n   [quoted text hidden]" in out
    assert "Your parcel left today" not in out
    _, out, _ = await run_cli(capsys, "show", conv.reference, "--json", "-c", cfg)
    shown = json.loads(out)["messages"][0]
    assert shown["text"] == body.rstrip() and shown["text_new"] == m["text_new"]


# --- verified links -------------------------------------------------------------------------------

async def _sms_contact(d: Any, clock: Any) -> tuple[int, int]:
    async with d.store.session() as s:
        contact = Contact(name="", created_at=clock(), updated_at=clock(), tags={})
        s.add(contact)
        await s.flush()
        s.add(Identity(contact_id=contact.id, channel="sms", address="+15550001111",
                       created_at=clock()))
        conv = Conversation(channel="sms", contact_id=contact.id, subject="", status="open",
                            priority="normal", created_at=clock(), updated_at=clock(),
                            escalation_level=0)
        s.add(conv)
        await s.flush()
        return contact.id, conv.id


async def _sms_in(d: Any, conversation_id: int, text: str, clock: Any) -> None:
    """A customer SMS stored in the conversation, with the ingest hooks run as the processor
    runs them."""
    async with d.store.session() as s:
        conv = await s.get_one(Conversation, conversation_id)
        m = Message(conversation_id=conv.id, direction="in", author="customer", channel="sms",
                    address="+15550001111", text=text, headers={}, created_at=clock())
        s.add(m)
        await s.flush()
        await LinkVerifier(d.replies)(s, conv, m, False)


async def _links(d: Any) -> list[IdentityLink]:
    async with d.store.reader() as s:
        return list((await s.execute(select(IdentityLink).order_by(IdentityLink.id)))
                    .scalars().all())


async def test_an_address_given_by_sms_is_linked_only_with_the_code(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d = await daemon_factory(make_settings(email={"outbound": {"port": sink.port}}),
                                 clock=clock)
        await _mails(d, mail(frm="Ada Lovelace <ada@example.org>", msgid="<e1@example.org>"))
        contact_id, conv_id = await _sms_contact(d, clock)
        await _sms_in(d, conv_id, "ada@example.org", clock)  # "what is your email address?"
        [link] = await _links(d)
        assert link.state == "pending" and link.address == "ada@example.org"
        d.outbox.kick()
        await eventually(lambda: _sent(sink))
        mail_from, rcpt, _ = sink.messages[-1]
        code_mail = sink.parsed()
        # Our own automated mail: null return path and Auto-Submitted (RFC 3834).
        assert mail_from == "<>" and rcpt == ["ada@example.org"]
        assert code_mail["Auto-Submitted"] == "auto-replied"
        assert code_mail["Message-ID"].endswith(".frontdesk@example.com>")
        code = re.search(r"\b(\d{6})\b", code_mail.get_content())
        assert code is not None and f"FD-{conv_id}" in code_mail.get_content()
        await _sms_in(d, conv_id, "000000", clock)  # a wrong code links nothing
        assert (await _links(d))[0].attempts == 1
        await _sms_in(d, conv_id, f"my code is {code.group(1)}", clock)
        [link] = await _links(d)
        assert link.state == "verified"
        async with d.store.reader() as s:
            identities = (await s.execute(select(Identity.channel, Identity.address, Contact.id)
                                          .join(Contact, Contact.id == Identity.contact_id)
                                          .where(Contact.merged_into_id.is_(None)))).all()
            [verified] = (await s.execute(select(Event).where(Event.kind == "identity_verified")))\
                .scalars().all()
            [merged] = (await s.execute(select(Event).where(Event.kind == "contacts_merged")))\
                .scalars().all()
        # The email contact (with its conversation) is now the SMS customer's.
        assert {(c, a) for c, a, _ in identities} == {("sms", "+15550001111"),
                                                     ("email", "ada@example.org")}
        assert {cid for _, _, cid in identities} == {contact_id}
        assert merged.actor == "customer (verified code)" and verified.data["merged"]
        convs = await conversations(d.store)
        assert {c.contact_id for c in convs} == {contact_id} and len(convs) == 2


async def _sent(sink: SmtpSink) -> bool:
    return bool(sink.messages)


async def test_staff_can_start_a_link_from_the_command_line(
        daemon: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str], clock: Any) -> None:
    contact_id, conv_id = await _sms_contact(daemon, clock)
    cfg = cli_config(daemon, tmp_path)
    code, out, err = await run_cli(capsys, "contact", "link", "+15550001111", "ada@example.org",
                               "--as", "Grace", "-c", cfg)
    assert code == 0, err
    assert f"in FD-{conv_id}" in out
    [link] = await _links(daemon)
    assert link.requested_by == "Grace" and link.contact_id == contact_id
    code, _, err = await run_cli(capsys, "contact", "link", str(contact_id), "+15550001111",
                             "-c", cfg)
    assert code == 1 and "already contact" in err


async def test_link_refuses_an_address_this_frontdesk_cannot_send_to(
        daemon: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """No Twilio credentials: a code to a phone number could never go, so `contact link` says so
    at once instead of "a code is on its way", and queues nothing that would wait for hours."""
    await _mails(daemon, mail(msgid="<k1@example.org>"))
    cfg = cli_config(daemon, tmp_path)
    code, out, err = await run_cli(capsys, "contact", "link", "ada@example.org", "+1 555 000 1111",
                               "--as", "Grace", "-c", cfg)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("frontdesk: a code cannot be sent to +15550001111: the sms channel "
                           "is not configured here (twilio.")
    assert await _links(daemon) == []
    async with daemon.store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(Outbox))).scalar_one() == 0
    # An email address can still be linked: email sends here.
    code, out, err = await run_cli(capsys, "contact", "link", "ada@example.org",
                               "ada.l@work.example", "-c", cfg)
    assert code == 0, err
    assert out.startswith("a code is on its way to ada.l@work.example")


@pytest.mark.parametrize(("text", "address"), [
    ("ada@example.org", "ada@example.org"),
    ("/start Ada@Example.org", "ada@example.org"),
    ("My email is <ada@example.org>.", "ada@example.org"),
    ("write to ada@example.org or call me", None),
    ("hello", None),
])
def test_which_messages_offer_an_address(text: str, address: str | None) -> None:
    assert offered_address(text) == address
