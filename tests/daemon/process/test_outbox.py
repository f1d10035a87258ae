"""Staff replies through the outbox to a real SMTP relay on loopback: retry, give up, order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.storage.models import Event, Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, processed, send


async def _daemon_with_relay(make_settings: Any, daemon_factory: Any, clock: Any, sink: SmtpSink,
                             database_url: str | None = None, **daemon: Any) -> Any:
    settings = make_settings(
        database_url=database_url,
        email={"outbound": {"port": sink.port}},
        daemon={"outbox_max_attempts": 3, **daemon},
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
