"""Contact administration and the GDPR (frontdesk.domain.privacy): tags and language in one place,
the export of everything stored about a person, and an erasure that reaches the store's files,
the search index and the attachment files, leaving anonymous conversation shells for the figures.
SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.domain.contacts import ContactError, find_contact
from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.privacy import (
    change_contact,
    contact_tag,
    contact_tag_list,
    erase_contact,
    export_contact,
    finish_erasure,
    is_erased,
)
from frontdesk.domain.report import build_report
from frontdesk.domain.search import search_conversations
from frontdesk.domain.sla import contact_tags
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.models import (
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    InboundJournal,
    Message,
    Outbox,
)
from tests.support.helpers import conversations, eventually, mail, processed, send

NAME = "Zebulon Quackenbush"
ADDRESS = "zebulon.quackenbush@example.org"
SECRET = "Xylophonic wombat passport 4417"
FILE_TEXT = b"Quackenbush private scan, page one of the passport " * 20
KNOWN = ("email", "sms", "whatsapp", "voice", "telegram")


def _mail_with_attachment(msgid: str, body: str = SECRET,
                          subject: str = "My Quackenbush passport") -> EmailMessage:
    m = mail(frm=f"{NAME} <{ADDRESS}>", subject=subject, body=body, msgid=msgid)
    m.add_attachment(FILE_TEXT, maintype="application", subtype="octet-stream",
                     filename="quackenbush-passport.bin")
    return m


async def _ingest(d: Any, *messages: EmailMessage, n: int) -> None:
    for m in messages:
        await send(d.email.smtp.port, m, sender=m["From"].addresses[0].addr_spec)

    async def done() -> bool:
        return await processed(d.store) and len(await conversations(d.store)) >= n

    await eventually(done)


@pytest.fixture
async def daemon(database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> Any:
    return await daemon_factory(make_settings(database_url=database_url), clock=clock)


# -- tags -----------------------------------------------------------------------------------------

def test_tag_rules() -> None:
    assert contact_tag(" VIP ") == "vip"
    assert contact_tag("lang:DE") == "lang:de"
    assert contact_tag("lang:pt-BR") == "lang:pt-br"
    assert contact_tag("tier:gold_2") == "tier:gold_2"
    for bad in ("", "vip!", "-vip", "a" * 51, "lang:german", "lang:", "two words", "language",
                "erased_at", "tags"):
        with pytest.raises(ContactError):
            contact_tag(bad)


async def test_tags_and_language_live_in_one_place(daemon: Any, clock: Any) -> None:
    await _ingest(daemon, mail(frm=ADDRESS, msgid="<t1@example.org>"), n=1)
    async with daemon.store.session() as s:
        contact = await find_contact(s, ADDRESS, known=KNOWN)
        contact.tags = {"legacy": True, "tags": ["Gold"], "note": "kept as it is"}
        await s.flush()
        assert contact_tag_list(contact) == ["gold", "legacy"]
        assert await change_contact(s, contact, add=["VIP", "lang:de"], actor="grace",
                                    now=clock())
        assert contact_tag_list(contact) == ["gold", "lang:de", "legacy", "vip"]
        assert contact.tags == {"gold": True, "legacy": True, "vip": True, "language": "de",
                                "note": "kept as it is"}
        # what SLA policies and routes read: the language too, as lang:de
        assert contact_tags(contact) == {"gold", "lang:de", "legacy", "vip"}
        assert not await change_contact(s, contact, add=["vip"], actor="grace", now=clock())
        # A second language replaces the first; removing it forgets it.
        assert await change_contact(s, contact, add=["lang:fr"], actor="grace", now=clock())
        assert contact.tags["language"] == "fr"
        assert await change_contact(s, contact, remove=["lang:fr", "legacy"], actor="grace",
                                    now=clock())
        assert contact_tag_list(contact) == ["gold", "vip"]
        # Replace all; the language keyword wins; a name.
        assert await change_contact(s, contact, tags=["b2b"], language="pt-BR", name=" Ada  L ",
                                    actor="grace", now=clock())
        assert (contact.name, contact_tag_list(contact)) == ("Ada L", ["b2b", "lang:pt-br"])
        with pytest.raises(ContactError, match="not a tag"):
            await change_contact(s, contact, add=["ok", "NOT OK"], actor="grace", now=clock())
        with pytest.raises(ContactError, match="one language"):
            await change_contact(s, contact, tags=["lang:de", "lang:fr"], actor="grace",
                                 now=clock())
        with pytest.raises(ContactError, match="language code"):
            await change_contact(s, contact, language="Deutsch", actor="grace", now=clock())
        assert contact_tag_list(contact) == ["b2b", "lang:pt-br"]  # a refusal changes nothing
        audit = (await s.execute(select(Event).where(Event.kind == "contact_changed")
                                 .order_by(Event.id))).scalars().all()
    assert [e.actor for e in audit] == ["grace"] * 4
    assert audit[0].data == {"added": ["vip"], "removed": [], "language": "de"}
    assert audit[-1].data == {"name": "Ada L", "added": ["b2b"], "removed": ["gold", "vip"],
                              "language": "pt-br"}


# -- export ---------------------------------------------------------------------------------------

async def test_export_holds_everything_about_the_person(daemon: Any, clock: Any) -> None:
    await _ingest(daemon, _mail_with_attachment("<e1@example.org>"), n=1)
    async with daemon.store.session() as s:
        c = await get_conversation(s, "FD-1")
        await add_staff_reply(s, c, "We found your passport, Mr Quackenbush.", author="Grace",
                              replies=daemon.replies, now=clock())
        contact = await find_contact(s, ADDRESS, known=KNOWN)
        await change_contact(s, contact, add=["vip"], actor="grace", now=clock())
    async with daemon.store.reader() as s:
        document = await export_contact(s, await find_contact(s, "1", known=KNOWN), now=clock())
    json.dumps(document)  # one JSON document
    assert document["contact"]["name"] == NAME
    assert document["contact"]["tags"] == ["vip"]
    assert document["identities"] == [{"channel": "email", "address": ADDRESS,
                                       "created_at": document["identities"][0]["created_at"]}]
    [conversation] = document["conversations"]
    assert conversation["reference"] == "FD-1"
    assert conversation["subject"] == "My Quackenbush passport"
    inbound, reply = conversation["messages"]
    assert SECRET in inbound["text"] and inbound["address"] == ADDRESS
    assert inbound["headers"] and inbound["author_name"] == NAME
    [attachment] = inbound["attachments"]
    assert attachment["filename"] == "quackenbush-passport.bin"
    assert attachment["size"] == len(FILE_TEXT) and len(attachment["sha256"]) == 64
    assert reply["direction"] == "out" and "passport" in reply["text"]
    kinds = {e["kind"] for e in document["events"]}
    assert {"conversation_created", "contact_changed"} <= kinds


# -- erasure --------------------------------------------------------------------------------------

async def _erase(d: Any, key: str, clock: Any) -> Any:
    async with d.store.session() as s:
        report = await erase_contact(s, await find_contact(s, key, known=KNOWN),
                                     actor="dpo", now=clock())
    return await finish_erasure(d.store, AttachmentStore(d.settings.daemon.data_dir), report)


async def test_erasure_leaves_anonymous_shells_and_keeps_the_figures(
        daemon: Any, clock: Any) -> None:
    other = mail(frm="Bob <bob@example.net>", subject="Kettle", body="Xylophonic kettle",
                 msgid="<b1@example.net>")
    await _ingest(daemon, _mail_with_attachment("<z1@example.org>"), other,
                  _mail_with_attachment("<z2@example.org>", subject="Second"), n=3)
    async with daemon.store.session() as s:
        c = await get_conversation(s, "FD-1")
        await add_staff_reply(s, c, "Dear Zebulon, found it.", author="Grace",
                              replies=daemon.replies, now=clock())
    async with daemon.store.reader() as s:
        before = await build_report(s, since=_week(), now=clock(), calendar=daemon.sla.calendar)
        sha = (await s.execute(select(Attachment.sha256))).scalars().first()
        statuses = list((await s.execute(select(Conversation.status).where(
            Conversation.contact_id == 1).order_by(Conversation.id))).scalars())
    files = AttachmentStore(daemon.settings.daemon.data_dir)
    assert files.path_for(sha).is_file()

    report = await _erase(daemon, ADDRESS, clock)
    assert report.store_compacted, report.notes  # VACUUM: SQLite's file, PostgreSQL's tables
    assert report.counts["conversations"] == 2 and report.counts["identities"] == 1
    assert report.counts["attachments"] == 2 and report.files_deleted == 1
    assert not files.path_for(sha).exists()
    async with daemon.store.reader() as s:
        after = await build_report(s, since=_week(), now=clock(), calendar=daemon.sla.calendar)
        contact = await s.get_one(Contact, 1)
        shells = (await s.execute(select(Conversation).where(Conversation.contact_id == 1)
                                  .order_by(Conversation.id))).unique().scalars().all()
        texts = (await s.execute(select(Message).where(
            Message.conversation_id.in_([c.id for c in shells])))).scalars().all()
        raws = (await s.execute(select(InboundJournal.raw).where(
            InboundJournal.message_id.in_([m.id for m in texts])))).scalars().all()
        identities = (await s.execute(select(func.count()).select_from(Identity)
                                      .where(Identity.contact_id == 1))).scalar_one()
        [audit] = (await s.execute(select(Event).where(Event.kind == "contact_erased")))\
            .scalars().all()
        hits = await search_conversations(s, "xylophonic")
        bob = await find_contact(s, "bob@example.net", known=KNOWN)
        with pytest.raises(ContactError, match="no contact 1"):
            await export_contact(s, contact)
        cancelled = (await s.execute(select(Outbox).where(Outbox.conversation_id == 1)))\
            .scalars().all()
    assert after["overall"] == before["overall"]  # the figures stay right
    assert is_erased(contact) and contact.name == "" and contact_tag_list(contact) == []
    assert identities == 0
    assert [c.status for c in shells] == statuses == ["pending", "open"]
    assert all(not c.subject for c in shells)
    assert all(m.text == "" and m.html is None and m.address == "" and not m.headers
               and m.subject == "" and m.text_new is None for m in texts)
    assert len(texts) == 3 and set(raws) == {b""}
    assert audit.actor == "dpo" and audit.contact_id == 1
    assert ADDRESS not in json.dumps(audit.data) and NAME not in json.dumps(audit.data)
    assert [h.reference for h in hits] == ["FD-2"]  # Bob's kettle only
    assert bob.name == "Bob"  # others are untouched
    assert cancelled and all(ADDRESS not in json.dumps(r.payload) for r in cancelled)
    assert all(r.state in ("done", "failed") for r in cancelled)
    async with daemon.store.session() as s:
        with pytest.raises(ContactError, match="no contact 1"):
            await erase_contact(s, contact, actor="dpo", now=clock())
    # The same address writing again is a new contact.
    await _ingest(daemon, mail(frm=ADDRESS, msgid="<z3@example.org>"), n=4)
    async with daemon.store.reader() as s:
        again = await find_contact(s, ADDRESS, known=KNOWN)
    assert again.id != 1


async def test_an_attachment_file_another_message_uses_stays(daemon: Any, clock: Any) -> None:
    shared = mail(frm="bob@example.net", msgid="<b2@example.net>")
    shared.add_attachment(FILE_TEXT, maintype="application", subtype="octet-stream",
                          filename="copy.bin")
    await _ingest(daemon, _mail_with_attachment("<z4@example.org>"), shared, n=2)
    report = await _erase(daemon, ADDRESS, clock)
    assert report.counts["attachments"] == 1 and report.files_deleted == 0
    async with daemon.store.reader() as s:
        [row] = (await s.execute(select(Attachment))).scalars().all()
    assert AttachmentStore(daemon.settings.daemon.data_dir).path_for(row.sha256).is_file()


def _week() -> Any:
    from datetime import timedelta

    return timedelta(days=7)


async def test_erasure_reaches_the_sqlite_files(
        make_settings: Any, daemon_factory: Any, clock: Any, tmp_path: Path) -> None:
    d = await daemon_factory(make_settings(), clock=clock)
    await _ingest(d, _mail_with_attachment("<f1@example.org>"),
                  mail(frm=f"{NAME} <{ADDRESS}>", subject="Re: My Quackenbush passport",
                       body=f"{SECRET} again", msgid="<f2@example.org>",
                       In_Reply_To="<f1@example.org>"), n=1)
    async with d.store.session() as s:
        c = await get_conversation(s, "FD-1")
        await add_staff_reply(s, c, f"Dear {NAME}, about {SECRET}", author="Grace",
                              replies=d.replies, now=clock())
    db = Path(d.store.sqlite_path)
    data = Path(d.settings.daemon.data_dir)
    needles = [NAME.encode(), ADDRESS.encode(), b"Xylophonic", b"xylophonic",
               b"Quackenbush private scan", b"quackenbush"]

    def found() -> set[bytes]:
        blobs = [p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()]
        blobs += [p.read_bytes() for p in data.rglob("*") if p.is_file()]
        return {n for n in needles if any(n in b for b in blobs)}

    assert found() == set(needles)
    report = await _erase(d, ADDRESS, clock)
    assert report.store_compacted, report.notes
    assert found() == set()
