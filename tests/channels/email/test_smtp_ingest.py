"""Email in, end to end: real SMTP over loopback into a real store, on SQLite and PostgreSQL."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select, text

from frontdesk.storage.models import InboundJournal, Message
from tests.support.helpers import conversations, detail, eventually, mail, processed, send


@pytest.fixture
async def daemon(database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> Any:
    return await daemon_factory(make_settings(database_url=database_url), clock=clock)


async def _one(daemon: Any) -> dict[str, Any]:
    await eventually(lambda: processed(daemon.store))
    convs = await conversations(daemon.store)
    assert len(convs) == 1
    return await detail(daemon.store, convs[0].id)


async def test_plain_mail_becomes_a_conversation(daemon: Any, clock: Any) -> None:
    await send(daemon.email.smtp.port, mail())
    d = await _one(daemon)
    assert d["reference"] == f"FD-{d['id']}"
    assert d["status"] == "open" and d["channel"] == "email"
    assert d["subject"] == "Order 1234 never arrived"
    assert d["contact"]["name"] == "Ada Lovelace"
    assert d["contact"]["identities"] == [{"channel": "email", "address": "ada@example.org"}]
    assert d["first_response_due_at"] == "2026-11-23T11:00:00.000Z"  # 1h, "always" open
    [m] = d["messages"]
    assert m["direction"] == "in" and m["author"] == "customer"
    assert m["text"] == "Hello, where is my order?"
    assert m["automated"] is False and m["attachments"] == []
    assert m["created_at"] == "2026-11-23T10:00:00.000Z"


async def test_multipart_with_attachment(daemon: Any, tmp_path: Any) -> None:
    msg = mail(body="See the attached invoice.")
    msg.add_alternative("<p>See the <b>attached</b> invoice.</p>", subtype="html")
    pdf = b"%PDF-1.4 fake invoice " * 100
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice 7.pdf")
    await send(daemon.email.smtp.port, msg)
    [m] = (await _one(daemon))["messages"]
    assert m["text"] == "See the attached invoice."
    [a] = m["attachments"]
    assert a["filename"] == "invoice 7.pdf" and a["content_type"] == "application/pdf"
    assert a["size"] == len(pdf)
    import hashlib

    stored = tmp_path / "data" / "attachments" / a["sha256"][:2] / a["sha256"]
    assert stored.read_bytes() == pdf and a["sha256"] == hashlib.sha256(pdf).hexdigest()


async def test_html_only_mail_is_turned_into_text(daemon: Any) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@example.net", "support@example.com", "Hi"
    msg["Message-ID"] = "<html1@example.net>"
    msg.set_content("<html><head><style>p{color:red}</style></head><body><p>First line</p>"
                    "<p>Second &amp; last</p></body></html>", subtype="html")
    await send(daemon.email.smtp.port, msg, sender="bob@example.net")
    [m] = (await _one(daemon))["messages"]
    assert "First line" in m["text"] and "Second & last" in m["text"]
    assert "color" not in m["text"] and "<p>" not in m["text"]


async def test_iso_8859_1_mail(daemon: Any) -> None:
    raw = ("From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <jm@example.de>\r\n"
           "To: support@example.com\r\n"
           "Subject: =?iso-8859-1?q?Bestellung_=FCber_5_Euro?=\r\n"
           "Message-ID: <latin1@example.de>\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=iso-8859-1\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n").encode("ascii")
    raw += "Grüße aus Köln, mein Paket ist nicht da.\r\n".encode("iso-8859-1")
    await send(daemon.email.smtp.port, raw, sender="jm@example.de")
    d = await _one(daemon)
    assert d["subject"] == "Bestellung über 5 Euro"
    assert d["contact"]["name"] == "Jürgen Müller"
    assert d["messages"][0]["text"] == "Grüße aus Köln, mein Paket ist nicht da."


async def test_duplicate_and_missing_message_id_stored_once(daemon: Any) -> None:
    port = daemon.email.smtp.port
    await send(port, mail(msgid="<dup@example.org>"))
    await send(port, mail(msgid="<dup@example.org>"))  # a resend: same 250, nothing new
    no_id = mail(msgid=None, subject="No id", body="A mail without Message-ID")
    await send(port, no_id)
    await send(port, no_id)
    await eventually(lambda: processed(daemon.store))
    async with daemon.store.reader() as s:
        journal = (await s.execute(select(func.count()).select_from(InboundJournal))).scalar()
        messages = (await s.execute(select(func.count()).select_from(Message))).scalar()
    assert journal == 2 and messages == 2
    assert len(await conversations(daemon.store)) == 2


async def test_unknown_recipient_refused_550(daemon: Any) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await send(daemon.email.smtp.port, mail(), rcpt=["sales@example.com"])
    code, text = refused.value.recipients["sales@example.com"]
    assert code == 550 and b"5.1.1" in text
    # a plus-address of an inbox address is an inbox address
    await send(daemon.email.smtp.port, mail(), rcpt=["Support+FD-3@Example.com"])
    await eventually(lambda: processed(daemon.store))


async def test_oversized_mail_refused_552(make_settings: Any, daemon_factory: Any) -> None:
    settings = make_settings(email={"smtp_server": {"max_message_bytes": 4096}})
    d = await daemon_factory(settings)
    with pytest.raises(smtplib.SMTPException) as err:
        await send(d.email.smtp.port, mail(body="x" * 10000))
    assert "552" in str(err.value)
    async with d.store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(InboundJournal))).scalar() == 0


async def test_store_failure_answers_451_then_accepts_on_retry(daemon: Any) -> None:
    """The store refuses the journal's insert (a trigger raises, as a full disk would): the
    sender gets a 451 with nothing of ours in it, and its retry is stored once."""
    refuse = None
    if daemon.store.sqlite_path is not None:  # the journal's writer process commits there
        import sqlite3

        refuse = sqlite3.connect(daemon.store.sqlite_path, isolation_level=None)
        refuse.execute("CREATE TRIGGER refuse BEFORE INSERT ON inbound_journal "
                       "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END")
    else:
        async with daemon.store.engine.begin() as conn:
            await conn.execute(text(
                "CREATE FUNCTION refuse_journal() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk I/O error (injected)'; END $$"))
            await conn.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON inbound_journal "
                "FOR EACH ROW EXECUTE FUNCTION refuse_journal()"))
    with pytest.raises(smtplib.SMTPDataError) as err:
        await send(daemon.email.smtp.port, mail())
    assert err.value.smtp_code == 451
    assert b"injected" not in err.value.smtp_error  # no internals leak
    if refuse is not None:
        refuse.execute("DROP TRIGGER refuse")
        refuse.close()
    else:
        async with daemon.store.engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse ON inbound_journal"))
    await send(daemon.email.smtp.port, mail())  # the sender's retry
    d = await _one(daemon)
    assert len(d["messages"]) == 1


async def test_reply_threads_by_in_reply_to_and_by_token(daemon: Any) -> None:
    port = daemon.email.smtp.port
    await send(port, mail(msgid="<first@example.org>"))
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    # threaded by In-Reply-To even from another address of the customer
    await send(port, mail(frm="ada@work.example", subject="Re: Order 1234 never arrived",
                          msgid="<second@example.org>", In_Reply_To="<first@example.org>"),
               sender="ada@work.example")
    # threaded by the [FD-n] token in the subject from a known sender
    await send(port, mail(subject=f"Still waiting [{conv.reference}]", msgid="<third@example.org>"))
    # a stranger who puts the token in a subject starts a new conversation
    await send(port, mail(frm="mallory@evil.example", subject=f"Hijack [{conv.reference}]",
                          msgid="<forged@evil.example>"), sender="mallory@evil.example")
    await eventually(lambda: processed(daemon.store))
    convs = await conversations(daemon.store)
    assert len(convs) == 2
    first = await detail(daemon.store, conv.id)
    assert [m["text"] for m in first["messages"]] == ["Hello, where is my order?"] * 3
    assert [m["address"] for m in first["messages"]] == [
        "ada@example.org", "ada@work.example", "ada@example.org"]
    other = await detail(daemon.store, convs[1].id)
    assert other["contact"]["identities"][0]["address"] == "mallory@evil.example"
    assert other["subject"] == "Hijack"


async def test_plus_address_threads_and_reopens_resolved(daemon: Any) -> None:
    port = daemon.email.smtp.port
    await send(port, mail(msgid="<p1@example.org>"))
    await eventually(lambda: processed(daemon.store))
    [conv] = await conversations(daemon.store)
    async with daemon.store.session() as s:
        c = await s.get(type(conv), conv.id)
        c.status = "resolved"
    plus = f"support+{conv.reference}@example.com"
    await send(port, mail(to=plus, subject="Something else", msgid="<p2@example.org>"),
               rcpt=[plus])
    await eventually(lambda: processed(daemon.store))
    d = await detail(daemon.store, conv.id)
    assert len(d["messages"]) == 2 and d["status"] == "open"


async def test_unparseable_mail_is_kept_as_failed_and_blocks_nothing(daemon: Any) -> None:
    port = daemon.email.smtp.port
    await send(port, b"\r\n", sender="")  # an empty mail: nothing to parse
    await send(port, mail(msgid="<good@example.org>"))
    await eventually(lambda: processed(daemon.store))
    assert len(await conversations(daemon.store)) == 1
    async with daemon.store.reader() as s:
        [bad] = (await s.execute(select(InboundJournal).where(
            InboundJournal.state == "failed"))).scalars().all()
    assert "empty message" in bad.error and bad.attempts == daemon.processor.error_attempts
    assert bad.raw.strip() == b""
