"""Staff replies through the outbox to a real SMTP relay on loopback: retry, give up, order;
lanes per conversation and channel, a channel not configured here, and a remote that answers
again."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.storage.models import Event, Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, processed, send


async def _open_conversations(s: Any, n: int, now: Any, channel: str,
                              subject: str = "Matter {i}") -> list[Any]:
    """``n`` open conversations of one contact, written (their ids known)."""
    from frontdesk.storage.models import Contact, Conversation

    contact = Contact(name="Ada", created_at=now, updated_at=now, tags={})
    s.add(contact)
    await s.flush()
    made = [Conversation(status="open", priority="normal", subject=subject.format(i=i),
                         channel=channel, contact_id=contact.id, created_at=now, updated_at=now,
                         escalation_level=0) for i in range(n)]
    s.add_all(made)
    await s.flush()
    return made


async def _daemon_with_relay(make_settings: Any, daemon_factory: Any, clock: Any, sink: SmtpSink,
                             database_url: str | None = None,
                             sections: dict[str, Any] | None = None, **daemon: Any) -> Any:
    settings = make_settings(
        database_url=database_url,
        email={"outbound": {"port": sink.port}},
        daemon={"outbox_max_attempts": 3, **daemon},
        **(sections or {}),
    )
    d = await daemon_factory(settings, clock=clock)
    await send(d.email.smtp.port, mail(msgid="<q1@example.org>"))
    await eventually(lambda: processed(d.store))
    return d


async def _reply(d: Any, text: str, clock: Any, author: str = "Grace") -> int:
    [conv] = await conversations(d.store)
    async with d.store.session() as s:
        c = await get_conversation(s, conv.id)
        m = await add_staff_reply(s, c, text, author=author, replies=d.replies, now=clock())
    d.outbox.kick()
    return m.id


async def test_reply_is_sent_once_with_headers(database_url: str, make_settings: Any,
                                               daemon_factory: Any, clock: Any) -> None:
    async with SmtpSink() as sink:
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink, database_url)
        await _reply(d, "We are on it.", clock)
        await eventually(lambda: _status(d, -1, "sent"))
        [(mail_from, rcpt, _raw)] = sink.messages
        assert mail_from == "support@example.com" and rcpt == ["ada@example.org"]
        sent = sink.parsed()
        assert sent["In-Reply-To"] == "<q1@example.org>"
        assert sent["Subject"] == "Re: Order 1234 never arrived [FD-1]"
        assert sent["Reply-To"] == "support+FD-1@example.com"
        assert sent.get_content().strip() == "We are on it."
        shown = await detail(d.store, 1)
        assert shown["first_responded_at"] == "2026-11-23T10:00:00.000Z"
        assert shown["messages"][-1]["author"] == "staff"
        assert shown["messages"][-1]["external_id"] == sent["Message-ID"].strip("<>")
        await d.outbox.deliver_due()  # nothing left: at most once
        assert len(sink.messages) == 1


async def test_customer_reply_to_our_reply_threads(make_settings: Any, daemon_factory: Any,
                                                   clock: Any) -> None:
    async with SmtpSink() as sink:
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink)
        await _reply(d, "Which address?", clock)
        await eventually(lambda: _status(d, -1, "sent"))
        ours = sink.parsed()["Message-ID"]
        await send(d.email.smtp.port, mail(subject="Re: whatever", msgid="<q2@example.org>",
                                           In_Reply_To=ours, References=f"<q1@example.org> {ours}"))
        await eventually(lambda: processed(d.store))
        shown = await detail(d.store, 1)
        assert [m["direction"] for m in shown["messages"]] == ["in", "out", "in"]
        assert shown["status"] == "open"  # the customer answered: the team owes a reply again


async def test_permanent_refusal_fails_with_a_reason(make_settings: Any, daemon_factory: Any,
                                                     clock: Any) -> None:
    async with SmtpSink() as sink:
        sink.fail_with, sink.fail_at = "550 5.1.1 <ada@example.org>: no such user", "RCPT"
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink)
        await _reply(d, "Hello?", clock)
        await eventually(lambda: _status(d, -1, "failed"))
        m = (await detail(d.store, 1))["messages"][-1]
        assert "refused the recipient ada@example.org" in m["failure_reason"]
        async with d.store.reader() as s:
            [ev] = (await s.execute(select(Event).where(Event.kind == "delivery_failed")))\
                .scalars().all()
        assert "ada@example.org" in ev.data["reason"] and ev.data["attempts"] == 1


async def test_relay_down_retries_with_backoff_then_gives_up(make_settings: Any,
                                                             daemon_factory: Any,
                                                             clock: Any) -> None:
    async with SmtpSink() as sink:
        sink.fail_with, sink.fail_at = "451 4.3.0 try again later", "DATA"
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink)
        await _reply(d, "First", clock)
        await eventually(lambda: _outbox_attempts(d, 1))
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox))).scalars().one()
        assert row.state == "pending" and row.next_attempt_at > clock()
        assert "451" in row.last_error
        await d.outbox.deliver_due()  # not due yet: no new attempt
        assert await _outbox_attempts(d, 1)
        clock.advance(seconds=3)
        await d.outbox.deliver_due()
        clock.advance(seconds=5)
        await d.outbox.deliver_due()
        assert await _status(d, -1, "failed")
        assert await _outbox_attempts(d, 3)


async def test_order_within_a_conversation_is_kept(make_settings: Any, daemon_factory: Any,
                                                   clock: Any) -> None:
    async with SmtpSink() as sink:
        sink.fail_with, sink.fail_at = "451 4.3.0 busy", "DATA"
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink)
        await _reply(d, "one", clock)
        await eventually(lambda: _outbox_attempts(d, 1))
        await _reply(d, "two", clock)
        await d.outbox.deliver_due()
        assert sink.messages == []  # "two" waits behind "one"
        sink.fail_with = None
        clock.advance(seconds=3)
        await d.outbox.deliver_due()
        assert [sink.parsed(i).get_content().strip() for i in range(2)] == ["one", "two"]


async def _status(d: Any, index: int, status: str) -> bool:
    return (await detail(d.store, 1))["messages"][index]["delivery_status"] == status


async def _outbox_attempts(d: Any, n: int) -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox).order_by(Outbox.id))).scalars().all()
    return bool(rows) and rows[0].attempts == n


# -- lanes: one channel's trouble never holds up another's, nor another conversation's ---------

async def _contact_id(d: Any) -> int:
    [conv] = await conversations(d.store)
    return conv.contact_id


async def _code_to(d: Any, clock: Any, address: str) -> None:
    """Queue a verification code to ``address`` in the customer's conversation FD-1 (what
    ``frontdesk contact link`` and a customer's offered address do)."""
    from frontdesk.domain.contacts import request_link
    from frontdesk.storage.models import Contact

    async with d.store.session() as s:
        contact = await s.get_one(Contact, await _contact_id(d))
        await request_link(s, contact, address, replies=d.replies, now=clock(),
                           requested_by="Grace")
    d.outbox.kick()


async def _rows(d: Any) -> list[Outbox]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Outbox).order_by(Outbox.id))).scalars())


async def test_a_reply_goes_out_while_text_messages_are_broken(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """Twilio answers 500 to everything: the text message to the customer's phone waits in
    backoff, and the email reply written after it in the same conversation still arrives."""
    from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio

    async with SmtpSink() as sink, FakeTwilio() as twilio:
        twilio.fail_next = ["500"] * 50
        d = await _daemon_with_relay(
            make_settings, daemon_factory, clock, sink, database_url,
            sections={"twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                                 "sms_from": "+15550001111", "api_base_url": twilio.base_url},
                      "http": {"public_url": PUBLIC_URL}},
            outbox_retry_initial="1h", outbox_retry_max="4h")
        await _code_to(d, clock, "+15557654321")
        await eventually(lambda: _attempted(d, "sms"))
        await _reply(d, "Your parcel left today.", clock)
        await eventually(lambda: _status(d, -1, "sent"))
        assert sink.parsed().get_content().strip() == "Your parcel left today."
        [text, email] = await _rows(d)
        assert (text.channel, text.state, text.attempts) == ("sms", "pending", 1)
        assert "Twilio had a server error" in (text.last_error or "")
        assert text.next_attempt_at > clock()  # still waiting out its backoff
        assert (email.channel, email.state) == ("email", "done")


async def _attempted(d: Any, channel: str) -> bool:
    return any(r.payload.get("channel") == channel and r.attempts > 0 for r in await _rows(d))


async def test_a_channel_not_configured_here_fails_at_once_saying_so(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """No Twilio credentials: a reply to a text conversation fails on its first attempt, for
    good, with a reason naming the channel; and it holds up nothing."""
    from frontdesk.storage.models import Contact, Conversation, Identity, Message

    async with SmtpSink() as sink:
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink,
                                     outbox_retry_initial="1h")
        async with d.store.session() as s:
            contact = await s.get_one(Contact, await _contact_id(d))
            s.add(Identity(contact_id=contact.id, channel="sms", address="+15557654321",
                           created_at=clock()))
            texts = Conversation(channel="sms", contact_id=contact.id, subject="", status="open",
                                 priority="normal", created_at=clock(), updated_at=clock(),
                                 escalation_level=0)
            s.add(texts)
            await s.flush()
            s.add(Message(conversation_id=texts.id, direction="in", author="customer",
                          channel="sms", address="+15557654321", text="Any news?",
                          created_at=clock()))
            await s.flush()
            reply = await add_staff_reply(s, texts, "Tomorrow.", author="Grace",
                                          replies=d.replies, now=clock())
        d.outbox.kick()
        await eventually(lambda: _message_status(d, reply.id, "failed"))
        shown = await detail(d.store, texts.id)
        [failed] = [m for m in shown["messages"] if m["id"] == reply.id]
        assert failed["failure_reason"].startswith("the sms channel is not configured here")
        [row] = [r for r in await _rows(d) if r.message_id == reply.id]
        assert (row.state, row.attempts) == ("failed", 1)  # no hours of backoff
        by_email = await _reply_to(d, 1, "The email side still works.", clock)
        await eventually(lambda: _message_status(d, by_email, "sent"))


async def _message_status(d: Any, message_id: int, status: str) -> bool:
    from frontdesk.storage.models import Message

    async with d.store.reader() as s:
        return (await s.get_one(Message, message_id)).delivery_status == status


# -- a remote that answers again: waiting rows go at once -----------------------------------------

async def _second_customer(d: Any) -> None:
    await send(d.email.smtp.port, mail(frm="Bob <bob@example.org>", msgid="<b1@example.org>",
                                       subject="Refund"), sender="bob@example.org")
    await eventually(lambda: _conversation_count(d, 2))


async def _conversation_count(d: Any, n: int) -> bool:
    return len(await conversations(d.store)) == n


async def _reply_to(d: Any, conversation_id: int, text: str, clock: Any) -> int:
    async with d.store.session() as s:
        c = await get_conversation(s, conversation_id)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies, now=clock())
    d.outbox.kick()
    return m.id


async def test_when_the_relay_is_back_waiting_replies_go_at_once(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """The relay was down: a reply waits in an hour's backoff. The relay comes back and the next
    reply (another conversation) goes; the waiting one follows at once, not an hour later."""
    async with SmtpSink() as sink:
        sink.fail_with, sink.fail_at = "421 4.3.2 the relay is restarting", "MAIL"
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink, database_url,
                                     outbox_retry_initial="1h", outbox_retry_max="4h")
        await _second_customer(d)
        [ada, bob] = await conversations(d.store)
        waiting = await _reply_to(d, ada.id, "Sorry for the wait, Ada.", clock)
        await eventually(lambda: _attempted(d, "email"))
        [row] = await _rows(d)
        assert row.next_attempt_at >= clock() + timedelta(minutes=50)
        sink.fail_with = None  # the relay is back; the clock does not move
        await _reply_to(d, bob.id, "Refund on its way, Bob.", clock)
        await eventually(lambda: _message_status(d, waiting, "sent"))
        assert sorted(sink.parsed(i)["To"] for i in range(2)) == [
            "Ada Lovelace <ada@example.org>", "Bob <bob@example.org>"]


class _OneMailboxFull(SmtpSink):
    """A relay that answers 452 (mailbox full, try later) for one recipient only."""

    full = "ada@example.org"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address == self.full:
            return "452 4.2.2 mailbox full"
        return await super().handle_RCPT(server, session, envelope, address, options)


async def test_a_reply_failing_for_its_own_reasons_keeps_its_backoff(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """Ada's mailbox is full. Other replies going out pull her reply forward once, not after
    every send: it does not burn its attempts while the relay works for everyone else."""
    async with _OneMailboxFull() as sink:
        d = await _daemon_with_relay(make_settings, daemon_factory, clock, sink,
                                     outbox_retry_initial="1h", outbox_retry_max="4h",
                                     outbox_max_attempts=5)
        await _second_customer(d)
        [ada, bob] = await conversations(d.store)
        await _reply_to(d, ada.id, "Hello Ada", clock)
        await eventually(lambda: _attempted(d, "email"))
        for n in range(3):
            bob_reply = await _reply_to(d, bob.id, f"Hello Bob {n}", clock)
            await eventually(lambda: _message_status(d, bob_reply, "sent"))  # noqa: B023
            await d.outbox.deliver_due()
        [to_ada] = [r for r in await _rows(d) if r.conversation_id == ada.id]
        assert to_ada.state == "pending" and to_ada.attempts == 2  # first try, one pull forward
        assert to_ada.next_attempt_at > clock() and "mailbox full" in (to_ada.last_error or "")


async def test_a_sender_that_crashes_logs_one_line_per_try_and_its_traceback_at_debug(
        make_settings: Any, daemon_factory: Any, clock: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="frontdesk.daemon.process.outbox")
    d = await daemon_factory(make_settings(), clock=clock)
    await send(d.email.smtp.port, mail(msgid="<crash@example.org>"))
    await eventually(lambda: processed(d.store))

    async def crash(_outbound: Any) -> Any:
        raise RuntimeError("the sender has a bug")

    d.outbox._senders["email"] = crash
    await _reply(d, "Hello", clock)
    mine = await eventually(lambda: _records(caplog, "crashed"))
    [line] = [r for r in mine if r.levelno == logging.ERROR]
    assert line.getMessage().endswith("crashed: RuntimeError: the sender has a bug")
    assert not line.exc_info and "\n" not in line.getMessage()
    [trace] = [r for r in mine if r.exc_info]
    assert trace.levelno == logging.DEBUG


async def _records(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    found = [r for r in caplog.records
             if r.name == "frontdesk.daemon.process.outbox" and words in r.getMessage()]
    return found if any(r.exc_info for r in found) else []


async def test_independent_lanes_are_sent_together_at_most_eight_to_one_remote(
        database_url: str) -> None:
    import asyncio
    from dataclasses import asdict
    from datetime import UTC, datetime

    from frontdesk.daemon.process.metrics import Metrics
    from frontdesk.daemon.process.outbox import OutboxWorker, RetryPolicy
    from frontdesk.domain.messages import OutboundMessage, Receipt
    from frontdesk.storage.db import Store

    store = Store(database_url)
    await store.ensure_schema()
    now = datetime.now(UTC)
    async with store.session() as s:  # twelve conversations, two texts each
        ids = [c.id for c in await _open_conversations(s, 12, now, "sms")]
        for seq in range(2):
            for cid in ids:
                out = OutboundMessage(channel="sms", to_address="+15550001", text=f"{cid}:{seq}")
                s.add(Outbox(kind="deliver", conversation_id=cid, payload=asdict(out),
                             idempotency_key=f"t-{cid}-{seq}", state="pending", attempts=0,
                             next_attempt_at=now, created_at=now))
    in_flight, most, sent = 0, 0, []

    async def send(out: OutboundMessage) -> Receipt:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        sent.append(out.text)
        return Receipt(remote_id=out.text)

    worker = OutboxWorker(store, senders={"sms": send}, clock=lambda: datetime.now(UTC),
                          metrics=Metrics(), policy=RetryPolicy(), poll=timedelta(seconds=1))
    try:
        total = 0
        while attempted := await worker.deliver_due():  # the heads of the twelve lanes, then
            total += attempted                           # the second of each
        assert total == 24
        assert most == 8  # together, but never more than eight at one remote
    finally:
        await store.dispose()
    assert sorted(sent) == sorted(f"{c}:{q}" for c in ids for q in range(2))
    for cid in ids:  # each conversation's order kept
        assert sent.index(f"{cid}:0") < sent.index(f"{cid}:1")


async def test_a_staff_reply_is_not_held_behind_a_backlog(database_url: str) -> None:
    from collections import Counter
    from dataclasses import asdict
    from datetime import UTC, datetime

    from frontdesk.daemon.process.metrics import Metrics
    from frontdesk.daemon.process.outbox import OutboxWorker, RetryPolicy
    from frontdesk.domain.messages import OutboundMessage, Receipt
    from frontdesk.storage.db import Store

    store = Store(database_url)
    await store.ensure_schema()
    now = datetime.now(UTC)
    async with store.session() as s:  # a burst: 150 Slack cards and 60 acknowledgements queued,
        conversations = await _open_conversations(s, 151, now, "sms")  # then a reply
        for c in conversations[:150]:
            s.add(Outbox(kind="slack", conversation_id=c.id,
                         payload={"op": "root", "slack_channel": "C1"},
                         idempotency_key=f"root-{c.id}", state="pending", attempts=0,
                         next_attempt_at=now, created_at=now))
        for c in conversations[:60]:
            ack = OutboundMessage(channel="sms", to_address="+15550001", text=f"ack {c.id}",
                                  automated=True)
            s.add(Outbox(kind="deliver", conversation_id=c.id, payload=asdict(ack),
                         idempotency_key=f"ack-{c.id}", state="pending", attempts=0,
                         next_attempt_at=now, created_at=now))
        reply = OutboundMessage(channel="sms", to_address="+15550002", text="staff reply")
        s.add(Outbox(kind="deliver", conversation_id=conversations[150].id,
                     payload=asdict(reply), idempotency_key="reply", state="pending",
                     attempts=0, next_attempt_at=now, created_at=now))
    order: list[str] = []

    async def send(out: OutboundMessage) -> Receipt:
        order.append(out.text)
        return Receipt()

    async def post(row: Outbox) -> Receipt:
        order.append(f"card {row.conversation_id}")
        return Receipt()

    worker = OutboxWorker(store, senders={"sms": send}, handlers={"slack": post},
                          clock=lambda: datetime.now(UTC), metrics=Metrics(),
                          policy=RetryPolicy(), poll=timedelta(seconds=1))
    try:
        await worker.deliver_due()
    finally:
        await store.dispose()
    assert order[0] == "staff reply"  # a person's words first
    # Then the remotes in turn: the acknowledgements go beside the cards, not after them.
    turns = Counter(text.split()[0] for text in order[1:21])
    assert turns["ack"] >= 9 and turns["card"] >= 9, order[:21]


async def test_a_round_reads_only_the_head_of_each_remote(tmp_path: Any) -> None:
    """A burst leaves thousands of rows waiting; choosing a round must not read them all (it
    did: every due row ranked by a window function, 24 ms a round with 9,000 waiting, so the
    outbox slowed down as the backlog it was working off grew). Counted in SQLite VM steps."""
    from dataclasses import asdict
    from datetime import UTC, datetime

    from frontdesk.daemon.process.metrics import Metrics
    from frontdesk.daemon.process.outbox import OutboxWorker, RetryPolicy
    from frontdesk.domain.messages import OutboundMessage
    from frontdesk.storage.db import Store

    store = Store(f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    await store.ensure_schema()
    now = datetime.now(UTC)

    async def queue(n: int) -> None:
        async with store.session() as s:
            cs = await _open_conversations(s, n, now, "email", subject="Matter")
            for c in cs:
                ack = OutboundMessage(channel="email", to_address="a@example.org", text="ack",
                                      automated=True)
                s.add_all([
                    Outbox(kind="slack", conversation_id=c.id,
                           payload={"op": "root", "slack_channel": "C1"},
                           idempotency_key=f"root-{c.id}", next_attempt_at=now, created_at=now),
                    Outbox(kind="slack", conversation_id=c.id,
                           payload={"op": "thread", "slack_channel": "C1"},
                           idempotency_key=f"thread-{c.id}", next_attempt_at=now,
                           created_at=now),
                    Outbox(kind="deliver", conversation_id=c.id, payload=asdict(ack),
                           idempotency_key=f"ack-{c.id}", next_attempt_at=now, created_at=now)])

    worker = OutboxWorker(store, senders={}, clock=lambda: datetime.now(UTC), metrics=Metrics(),
                          policy=RetryPolicy(), poll=timedelta(seconds=1))

    async def round_steps() -> tuple[list[int], int]:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        async with store.reader() as s:
            raw = (await (await s.connection()).get_raw_connection()).driver_connection
            raw._conn.set_progress_handler(tick, 10)
            try:
                ids = await worker._next_round(s, datetime.now(UTC), 100)
            finally:
                raw._conn.set_progress_handler(None, 10)
        return ids, count[0]

    try:
        await queue(20)
        few_ids, few = await round_steps()
        await queue(5000)
        many_ids, many = await round_steps()
        async with store.reader() as s:
            kinds = (await s.execute(select(Outbox.kind).where(Outbox.id.in_(many_ids)))
                     ).scalars().all()
    finally:
        await store.dispose()
    assert len(few_ids) == 40 and len(many_ids) == 64  # 20 of each remote, then 32 of each
    assert sorted(kinds) == ["deliver"] * 32 + ["slack"] * 32
    assert many <= 2 * few, (few, many)


async def test_a_rounds_preloads_serve_every_rows_hook_without_a_query_each(
        tmp_path: Any) -> None:
    """What the delivery hooks look up row by row (the Slack desk: each conversation's thread
    record) is read for the whole round by a preload before the round is marked: the hooks
    then find it in the session. Before, each of a burst's rows read its own."""
    from datetime import UTC, datetime

    from sqlalchemy import event

    from frontdesk.daemon.process.metrics import Metrics
    from frontdesk.daemon.process.outbox import OutboxWorker, RetryPolicy
    from frontdesk.domain.messages import Receipt
    from frontdesk.storage.db import Store
    from frontdesk.storage.models import Conversation

    store = Store(f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    await store.ensure_schema()
    now = datetime.now(UTC)
    async with store.session() as s:
        cs = await _open_conversations(s, 10, now, "email")
        s.add_all(Outbox(kind="slack", conversation_id=c.id, payload={"op": "root"},
                         idempotency_key=f"root-{c.id}", next_attempt_at=now, created_at=now)
                  for c in cs)

    preloaded: list[list[int]] = []
    subjects: dict[int, str] = {}
    selects: list[str] = []

    async def preload(s: Any, rows: Any) -> list[Any]:
        preloaded.append(sorted(r.id for r in rows))
        return list((await s.execute(select(Conversation).where(
            Conversation.id.in_([r.conversation_id for r in rows])))).scalars())

    async def hook(s: Any, row: Outbox, error: Any) -> None:
        subjects[row.id] = (await s.get_one(Conversation, row.conversation_id)).subject

    async def post(row: Outbox) -> Receipt:
        return Receipt()

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("SELECT") and "FROM conversations" in statement:
            selects.append(statement)

    worker = OutboxWorker(store, senders={}, handlers={"slack": post}, hooks=[hook],
                          preloads=[preload], clock=lambda: datetime.now(UTC),
                          metrics=Metrics(), policy=RetryPolicy(), poll=timedelta(seconds=1))
    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await worker.deliver_due() == 10
        async with store.reader() as s:
            ids = sorted((await s.execute(select(Outbox.id))).scalars())
            states = set((await s.execute(select(Outbox.state))).scalars())
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", count)
        await store.dispose()
    assert preloaded == [ids] and states == {"done"}
    assert sorted(subjects.values()) == sorted(f"Matter {i}" for i in range(10))
    assert len(selects) == 1  # the preload's; the ten hooks read nothing
