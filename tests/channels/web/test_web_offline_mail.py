"""A staff reply the visitor does not see is mailed to the address they gave; an answer by mail
joins the same conversation; a seen reply is not mailed; the address is linked to the contact
only through a code that comes back in the chat."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from sqlalchemy import select

from frontdesk.storage.models import Contact, Event, Identity, Message
from tests.channels.web.conftest import SITE, Visitor, base_of
from tests.channels.web.test_web_chat import only_conversation, staff_reply
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, send


def _mails_to(sink: SmtpSink, address: str) -> list[Any]:
    return [sink.parsed(i) for i in range(len(sink.messages)) if address in sink.messages[i][1]]


async def test_an_unseen_reply_is_mailed_and_the_answer_by_mail_joins_the_chat(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        sink: SmtpSink) -> None:
    d = await daemon_factory(web_settings(web={"offline_email_after": "1s"}))
    ada = Visitor(http, base_of(d))
    await ada.send("Do you ship to Norway?", email="Ada@Example.org",
                   page=f"{SITE}/shipping")
    c = await only_conversation(d)
    reply = await staff_reply(d, c.reference, "Yes, in 3 days.\nFree over 50 EUR.")

    def offline() -> list[Any]:
        return [m for m in _mails_to(sink, "ada@example.org")
                if "verification code" not in str(m["Subject"]).lower()]

    async def mailed() -> bool:
        return bool(offline())

    await eventually(mailed, timeout=15)
    message = offline()[0]
    body = message.get_content().replace("\r\n", "\n")
    assert c.reference in str(message["Subject"]) and c.reference in body
    assert "> Yes, in 3 days.\n> Free over 50 EUR." in body
    assert f"{SITE}/shipping" in body
    assert "Grace" in body
    # the answer by mail threads into the same conversation
    answer = mail(frm="Ada <ada@example.org>", subject=f"Re: {message['Subject']}",
                  body="Great, I'll order today.")
    answer["In-Reply-To"] = message["Message-ID"]
    answer["References"] = message["Message-ID"]
    await send(d.email.smtp.port, answer)

    async def joined() -> bool:
        found = await conversations(d.store)
        shown = await detail(d.store, c.reference)
        return len(found) == 1 and any(m["text"].startswith("Great, I'll order")
                                       for m in shown["messages"])

    await eventually(joined)
    # the widget shows the answer by mail, and the mailed copy is not shown twice
    _, session = await ada.session()
    texts = [(m["author"], m["text"].splitlines()[0]) for m in session["messages"]]
    assert texts == [("customer", "Do you ship to Norway?"), ("staff", "Yes, in 3 days."),
                     ("customer", "Great, I'll order today.")]
    async with d.store.reader() as s:
        status = (await s.get_one(Message, reply)).delivery_status
    assert status == "sent"  # not seen


async def test_a_reply_seen_in_the_widget_is_not_mailed(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        sink: SmtpSink) -> None:
    d = await daemon_factory(web_settings(web={"offline_email_after": "1s"}))
    ada = Visitor(http, base_of(d))
    await ada.send("Quick question", email="ada@example.org")
    c = await only_conversation(d)
    async with ada.stream() as stream:
        await stream.next()
        reply = await staff_reply(d, c.reference, "Quick answer")
        assert (await stream.next(2))["id"] == reply
        assert await ada.seen([reply]) == 204

    async def done() -> bool:
        async with d.store.reader() as s:
            events = (await s.execute(select(Event.kind, Event.data))).all()
            status = (await s.get_one(Message, reply)).delivery_status
        return status == "delivered" and any(k == "outbox_done" or k == "web_seen"
                                             for k, _ in events)

    await eventually(done, timeout=10)
    await eventually(lambda: _offline_checked(d), timeout=10)
    assert [m for m in _mails_to(sink, "ada@example.org")
            if "verification code" not in str(m["Subject"]).lower()] == []


async def _offline_checked(d: Any) -> bool:
    from frontdesk.storage.models import Outbox

    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox).where(Outbox.kind == "web_offline_mail"))
                ).scalars().all()
    # None at all when the widget's "seen" was stored before the outbox recorded the delivery
    # (then the reply is marked delivered at once, and no check is planned); else each planned
    # check has run. Either way, by now a mail would have gone.
    return all(r.state == "done" for r in rows)


async def test_a_typed_address_is_linked_only_by_the_code_mailed_to_it(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        sink: SmtpSink) -> None:
    d = await daemon_factory(web_settings())
    # ada wrote by mail before: a contact with history
    await send(d.email.smtp.port, mail(subject="Order 77", body="Where is order 77?"))
    await eventually(lambda: _count(d, 1))
    visitor = Visitor(http, base_of(d))
    await visitor.send("It's me again, from the website", email="ada@example.org")
    await eventually(lambda: _count(d, 2))
    async with d.store.reader() as s:
        contacts = (await s.execute(select(Contact).where(Contact.merged_into_id.is_(None)))
                    ).scalars().all()
    assert len(contacts) == 2  # kept apart: a typed address proves nothing

    async def code_mail() -> Any:
        found = [m for m in _mails_to(sink, "ada@example.org")
                 if "verification code" in str(m["Subject"]).lower()]
        return found[0] if found else None

    message = await eventually(code_mail)
    code = re.search(r"\b(\d{6})\b", message.get_content()).group(1)
    await visitor.send(code)

    async def merged() -> bool:
        async with d.store.reader() as s:
            live = (await s.execute(select(Contact).where(Contact.merged_into_id.is_(None)))
                    ).scalars().all()
            kinds = sorted(i.channel for i in (await s.execute(select(Identity))).scalars())
        return len(live) == 1 and kinds == ["email", "web"]

    await eventually(merged)
    # still only the visitor's own web conversation in the widget
    _, session = await visitor.session()
    assert all("order 77" not in m["text"].lower() for m in session["messages"])


async def _count(d: Any, n: int) -> bool:
    return len(await conversations(d.store)) == n
