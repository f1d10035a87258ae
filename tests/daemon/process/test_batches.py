"""The processor stores a batch of journal rows in one transaction (issue 18): messages of one
batch meet as they would one after the other, and a row that fails is rolled back alone. The
daemon is built, not started: each test journals its rows, then processes them as one batch.
On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import event, func, select

from frontdesk.channels.email.parse import remote_id_for
from frontdesk.daemon.process.app import Daemon
from frontdesk.storage.models import Contact, Conversation, Event, InboundJournal, Message
from tests.fakes.telegram import BOT_TOKEN as TELEGRAM_TOKEN
from tests.support.helpers import SMTP_POLICY, mail


@pytest.fixture
async def daemon(make_settings: Any, database_url: str) -> AsyncIterator[Daemon]:
    d = Daemon(make_settings(database_url=database_url,
                             telegram={"bot_token": TELEGRAM_TOKEN,
                                       "api_base_url": "http://127.0.0.1:9"}))
    await d.store.ensure_schema()
    d.journal.start()
    try:
        yield d
    finally:
        await d.journal.stop()
        await d.store.dispose()


async def journal_mails(d: Daemon, *mails: EmailMessage) -> None:
    for m in mails:
        raw = m.as_bytes(policy=SMTP_POLICY)
        assert await d.journal.accept("email", remote_id_for(raw), raw,
                                      {"mail_from": "", "rcpt_tos": ["support@example.com"],
                                       "peer": "127.0.0.1", "helo": "client"})


async def process_one_batch(d: Daemon, n: int) -> None:
    done = await d.processor.process_pending()
    assert len(done) == n and all(o.error is None for o in done), done


async def count(d: Daemon, model: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def test_a_reply_to_a_message_of_the_same_batch_joins_its_conversation(
        daemon: Daemon) -> None:
    await journal_mails(
        daemon,
        mail(msgid="<first@example.org>"),
        mail(frm="Bob <bob@example.org>", subject="Another matter", msgid="<bob@example.org>"),
        mail(subject="Re: Order 1234 never arrived", msgid="<second@example.org>",
             In_Reply_To="<first@example.org>", References="<first@example.org>"))
    await process_one_batch(daemon, 3)
    async with daemon.store.reader() as s:
        rows = (await s.execute(select(Message.conversation_id).order_by(Message.id))).all()
    first, bob, second = (r.conversation_id for r in rows)
    assert second == first and bob != first
    assert await count(daemon, Conversation) == 2
    assert await count(daemon, Contact) == 2  # Ada's two mails: one contact


async def test_the_same_mail_twice_in_a_batch_is_stored_once(daemon: Daemon) -> None:
    one = mail(msgid="<same@example.org>")
    await journal_mails(daemon, one, mail(frm="Bob <bob@example.org>", msgid="<b@example.org>"))
    raw = one.as_bytes(policy=SMTP_POLICY)  # the same mail by another road (IMAP after SMTP)
    assert await daemon.journal.accept("email", remote_id_for(raw) + ":imap", raw,
                                       {"mail_from": "", "rcpt_tos": ["support@example.com"],
                                        "source": "imap"})
    await process_one_batch(daemon, 3)
    assert await count(daemon, Message) == 2
    async with daemon.store.reader() as s:
        pointed = (await s.execute(
            select(InboundJournal.message_id).order_by(InboundJournal.id))).scalars().all()
    assert pointed[0] == pointed[2] and pointed[0] is not None  # both rows name the one message


async def test_a_chat_senders_messages_in_one_batch_make_one_conversation(
        daemon: Daemon) -> None:
    for n in range(1, 5):
        update = {"update_id": 500 + n,
                  "message": {"message_id": n, "date": 1795000000,
                              "from": {"id": 77, "is_bot": False, "first_name": "Grace"},
                              "chat": {"id": 77, "type": "private"}, "text": f"part {n}"}}
        assert await daemon.journal.accept("telegram", f"message:77:{n}",
                                           json.dumps(update).encode(), {"source": "polling"})
    await process_one_batch(daemon, 4)
    assert await count(daemon, Contact) == 1
    assert await count(daemon, Conversation) == 1
    assert await count(daemon, Message) == 4


async def test_a_row_that_fails_is_rolled_back_alone(daemon: Daemon) -> None:
    def breaks_on_bob(session: Any, conversation: Any, message: Any, is_new: bool) -> None:
        if message.address == "bob@example.org":
            raise RuntimeError("a hook's bug")
    daemon.processor._hooks = [*daemon.processor._hooks, breaks_on_bob]  # type: ignore[list-item]
    await journal_mails(daemon, mail(msgid="<a1@example.org>"),
                        mail(frm="Bob <bob@example.org>", msgid="<b1@example.org>"),
                        mail(frm="Cy <cy@example.org>", msgid="<c1@example.org>"))
    done = await daemon.processor.process_pending()
    assert [o.error is None for o in done] == [True, False, True]
    assert "a hook's bug" in (done[1].error or "") and done[1].again_in is not None
    async with daemon.store.reader() as s:
        stored = set((await s.execute(select(Message.address))).scalars())
        states = (await s.execute(select(InboundJournal.state).order_by(InboundJournal.id))
                  ).scalars().all()
    assert stored == {"ada@example.org", "cy@example.org"}
    assert states == ["done", "pending", "done"]  # Bob's is tried again after a pause


async def test_while_messages_flood_in_a_batch_holds_the_writer_only_briefly(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a flood the senders' commits come first: a processing step stores only the rows
    that fit in ``flood_hold`` by the time a row took lately, and the whole batch again when
    the flood is over."""
    await journal_mails(daemon, mail(msgid="<warm@example.org>"),
                        mail(frm="Bob <bob@example.org>", msgid="<warm-b@example.org>"))
    await process_one_batch(daemon, 2)  # the processor learns what a row takes
    await journal_mails(daemon, *(mail(frm=f"C{i} <c{i}@example.org>", msgid=f"<f{i}@example.org>")
                                  for i in range(6)))
    flooded = True
    monkeypatch.setattr(daemon.journal, "idle", lambda: not flooded)
    monkeypatch.setattr(daemon.processor, "flood_hold", 1e-9)  # less than any row takes
    await process_one_batch(daemon, 1)
    await process_one_batch(daemon, 1)
    flooded = False
    await process_one_batch(daemon, 4)
    assert await count(daemon, Message) == 8


async def test_a_batch_fits_in_step_hold_and_a_waiting_sender_cuts_it_to_flood_hold(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batch is ``first_batch`` rows (what a row takes is not known yet). On SQLite
    the next ones are as many rows as fit in ``step_hold`` by the time a row took lately (a
    flood that begins meanwhile waits no longer for the single writer); on PostgreSQL, which
    has none, the whole batch. A sender waiting on the journal at that moment cuts a batch to
    ``flood_hold`` before the flood shows in the journal's load."""
    processor = daemon.processor
    monkeypatch.setattr(processor, "first_batch", 2)
    monkeypatch.setattr(processor, "step_hold", 0.035)
    monkeypatch.setattr(processor, "flood_hold", 0.015)
    await journal_mails(daemon, *(mail(frm=f"C{i} <c{i}@example.org>", msgid=f"<s{i}@example.org>")
                                  for i in range(12)))
    sqlite = daemon.store.dialect == "sqlite"
    await process_one_batch(daemon, 2 if sqlite else 12)
    if not sqlite:
        await journal_mails(daemon, *(mail(frm=f"D{i} <d{i}@example.org>",
                                           msgid=f"<t{i}@example.org>") for i in range(4)))
    waiting = True
    monkeypatch.setattr(daemon.journal, "waited_on", lambda: waiting)
    processor._row_time = 0.01  # what a row took lately, as the processor measured it
    await process_one_batch(daemon, 1)
    waiting = False
    processor._row_time = 0.01
    await process_one_batch(daemon, 3)
    assert await count(daemon, Message) == (6 if sqlite else 16)


async def test_a_batchs_audit_events_are_written_together_in_the_order_they_happened(
        daemon: Daemon) -> None:
    """Ten new customers in one batch: their twenty events (each conversation created, then its
    message received) go to PostgreSQL in one INSERT, not one a row (a round trip each); the
    same order as one at a time. (SQLite's driver runs a statement a row in-process.)"""
    await journal_mails(daemon, *(mail(frm=f"c{n}@example.org", subject=f"Matter {n}",
                                       msgid=f"<m{n}@example.org>") for n in range(10)))
    inserts: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            inserts.append(statement)

    engine = daemon.store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await process_one_batch(daemon, 10)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(inserts) == (1 if daemon.store.dialect == "postgresql" else 20), inserts
    async with daemon.store.reader() as s:
        rows = (await s.execute(select(Event.conversation_id, Event.kind, Event.actor)
                                .order_by(Event.id))).all()
    by_conversation: dict[int, list[tuple[str, str]]] = {}
    for conversation_id, kind, actor in rows:
        by_conversation.setdefault(conversation_id, []).append((kind, actor))
    assert len(by_conversation) == 10
    assert all(kinds == [("conversation_created", "system"), ("message_received", "customer")]
               for kinds in by_conversation.values()), by_conversation
