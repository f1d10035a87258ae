"""The Telegram channel end to end: python-telegram-bot's Bot against a loopback fake of the
Bot API, polling and webhook mode, files fetched, replies sent."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from frontdesk.channels.telegram.channel import TelegramChannel
from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.storage.models import InboundJournal, Message, Outbox, TelegramOffset
from tests.fakes.telegram import BOT_TOKEN, FakeTelegram
from tests.support.helpers import conversations, detail, eventually, processed

PUBLIC_URL = "https://support.example.com"
SECRET = "webhook-secret_0123456789"
USER = 987654321


def telegram_settings(make_settings: Any, fake: FakeTelegram, database_url: str | None = None,
                      **telegram: Any) -> Any:
    return make_settings(database_url=database_url, http={"public_url": PUBLIC_URL},
                         telegram={"bot_token": BOT_TOKEN, "api_base_url": fake.base_url,
                                   "poll_timeout": "2s", **telegram})


async def start(make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram,
                database_url: str | None = None, **telegram: Any) -> Any:
    return await daemon_factory(telegram_settings(make_settings, fake, database_url, **telegram),
                                clock=clock)


def channel(d: Any) -> TelegramChannel:
    found: TelegramChannel = next(c for c in d.channels if c.name == "telegram")
    return found


async def count(d: Any, model: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def messages_in(d: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(Message)
                                    .where(Message.direction == "in"))).scalar_one())


async def stored_offset(d: Any) -> int | None:
    async with d.store.reader() as s:
        return (await s.execute(select(TelegramOffset.next_offset))).scalar()


async def reply(d: Any, clock: Any, conversation_id: int, text: str) -> int:
    async with d.store.session() as s:
        c = await get_conversation(s, conversation_id)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies, now=clock())
    d.outbox.kick()
    return m.id


async def delivery(d: Any, message_id: int) -> tuple[str | None, str | None]:
    async with d.store.reader() as s:
        m = await s.get_one(Message, message_id)
    return m.delivery_status, m.failure_reason


# -- polling ----------------------------------------------------------------------------------

async def test_text_and_photo_become_a_conversation(database_url: str, make_settings: Any,
                                                    daemon_factory: Any, clock: Any,
                                                    fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    photo = b"\xff\xd8\xff\xe0 a photo of the damaged box " * 40
    file_id = fake.add_file(photo)
    await fake.push(fake.message_update(USER, "Hello, my box arrived broken"))
    await fake.push(fake.message_update(USER, None, photo=fake.photo(file_id, len(photo)),
                                        caption="See?"))
    await eventually(lambda: _count_is(d, 2))
    [conv] = await conversations(d.store)
    shown = await detail(d.store, conv.id)
    assert shown["channel"] == "telegram"
    assert shown["subject"] == "Hello, my box arrived broken"
    assert shown["contact"]["name"] == "Ada Lovelace"
    assert shown["contact"]["identities"] == [{"channel": "telegram", "address": str(USER)}]
    assert [m["text"] for m in shown["messages"]] == ["Hello, my box arrived broken", "See?"]

    async def attached() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await detail(d.store, conv.id))["messages"][1][
            "attachments"]
        return found

    [a] = await eventually(attached)
    assert a["sha256"] == hashlib.sha256(photo).hexdigest() and a["size"] == len(photo)
    assert a["content_type"] == "image/jpeg" and a["filename"] == "photo-AQADl.jpg"
    assert (await d.readiness())[1]["telegram"] == "ok"
    assert fake.calls[:2] == ["getMe", "deleteWebhook"]


async def test_document_and_voice_note_are_fetched(make_settings: Any, daemon_factory: Any,
                                                   clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    pdf, voice = b"%PDF-1.7 invoice", b"OggS voice note"
    doc_id = fake.add_file(pdf, "documents", "pdf")
    voice_id = fake.add_file(voice, "voice", "oga")
    fake.file_failures[fake.files[voice_id][0]] = 1  # the first download fails: retried
    await fake.push(fake.message_update(USER, None, document={
        "file_id": doc_id, "file_unique_id": "AgADdoc", "file_name": "invoice 7.pdf",
        "mime_type": "application/pdf", "file_size": len(pdf)}))
    await fake.push(fake.message_update(USER, None, voice={
        "file_id": voice_id, "file_unique_id": "AwADvoice", "duration": 3,
        "mime_type": "audio/ogg", "file_size": len(voice)}))
    await eventually(lambda: _count_is(d, 2))
    [conv] = await conversations(d.store)
    await eventually(lambda: _job_failed_once(d))  # the voice note's first download failed
    clock.advance(seconds=5)
    d.outbox.kick()

    async def files() -> list[tuple[str, str, int]]:
        got = [(a["filename"], a["content_type"], a["size"])
               for m in (await detail(d.store, conv.id))["messages"] for a in m["attachments"]]
        return got if len(got) == 2 else []

    assert sorted(await eventually(files)) == [("invoice 7.pdf", "application/pdf", len(pdf)),
                                               ("voice-AwADvoice.ogg", "audio/ogg", len(voice))]
    assert (await detail(d.store, conv.id))["subject"] == "Document"


async def test_offset_survives_a_restart(database_url: str, make_settings: Any,
                                         daemon_factory: Any, clock: Any,
                                         fake: FakeTelegram) -> None:
    settings = telegram_settings(make_settings, fake, database_url)
    d = await daemon_factory(settings, clock=clock)
    first = await fake.push(fake.message_update(USER, "first"))
    await eventually(lambda: _count_is(d, 1))
    await eventually(lambda: _offset_is(d, first["update_id"] + 1))
    d.request_stop()
    await d.stop()
    second = await fake.push(fake.message_update(USER, "second, sent while we were down"))
    calls_before = len(fake.get_updates_offsets)
    d2 = await daemon_factory(settings, clock=clock)
    await eventually(lambda: _count_is(d2, 2))
    assert fake.get_updates_offsets[calls_before] == first["update_id"] + 1
    [conv] = await conversations(d2.store)
    assert [m["text"] for m in (await detail(d2.store, conv.id))["messages"]] == [
        "first", "second, sent while we were down"]
    await eventually(lambda: _offset_is(d2, second["update_id"] + 1))


async def test_crash_between_commit_and_offset_loses_and_repeats_nothing(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram) -> None:
    settings = telegram_settings(make_settings, fake)
    d = await daemon_factory(settings, clock=clock)
    update = await fake.push(fake.message_update(USER, "journaled, then the power went"))
    await eventually(lambda: _count_is(d, 1))
    d.request_stop()
    await d.stop()
    # As if the process died after the journal commit but before the offset was saved and
    # confirmed to Telegram: no offset in the store, and Telegram still holds the update.
    async with d.store.session() as s:
        await s.execute(delete(TelegramOffset))
    await fake.push(update)
    later = await fake.push(fake.message_update(USER, "and a new one"))
    d2 = await daemon_factory(settings, clock=clock)
    await eventually(lambda: _offset_is(d2, later["update_id"] + 1))
    await eventually(lambda: processed(d2.store))
    assert await messages_in(d2) == 2
    assert await count(d2, InboundJournal) == 2


async def test_a_failed_journal_commit_does_not_advance_the_offset(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    real_accept = d.journal.accept
    failures = []

    async def flaky(*args: Any) -> bool:
        if not failures:
            failures.append(args[1])
            raise OSError("disk full")
        return await real_accept(*args)

    chan = channel(d)
    chan._accept = flaky
    update = await fake.push(fake.message_update(USER, "do not lose me"))
    await eventually(lambda: _count_is(d, 1))
    assert failures == [f"message:{USER}:{update['message']['message_id']}"]
    # getUpdates was asked for the same update again after the failure
    assert fake.get_updates_offsets.count(None) + fake.get_updates_offsets.count(
        update["update_id"]) >= 2
    assert await count(d, InboundJournal) == 1


async def test_conflict_is_logged_and_polling_recovers(make_settings: Any, daemon_factory: Any,
                                                       clock: Any, fake: FakeTelegram,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake.conflict = True
    d = await start(make_settings, daemon_factory, clock, fake)
    await eventually(lambda: _conflicts(fake, 2))
    ready, checks = await d.readiness()
    assert not ready and checks["telegram"] == "down"
    assert "409 Conflict" in caplog.text and "only one frontdesk may poll" in caplog.text
    fake.conflict = False
    await fake.push(fake.message_update(USER, "now it works"))
    await eventually(lambda: _count_is(d, 1))
    assert (await d.readiness())[1]["telegram"] == "ok"
    assert BOT_TOKEN not in caplog.text and BOT_TOKEN.split(":")[1] not in caplog.text


async def test_start_is_answered_with_the_greeting(make_settings: Any, daemon_factory: Any,
                                                   clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake,
                    greeting="Welcome to Example support! Ask us anything.")
    await fake.push(fake.message_update(USER, "/start"))
    await eventually(lambda: _sent(fake, 1))
    assert fake.sent[0]["chat_id"] == USER
    assert fake.sent[0]["text"] == "Welcome to Example support! Ask us anything."
    assert await conversations(d.store) == []


async def test_long_reply_is_split_in_order(make_settings: Any, daemon_factory: Any,
                                            clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await fake.push(fake.message_update(USER, "Explain everything please"))
    await eventually(lambda: _count_is(d, 1))
    [conv] = await conversations(d.store)
    paragraphs = [f"Paragraph {i}: " + "x" * 1200 for i in range(5)]  # about 6,100 characters
    mid = await reply(d, clock, conv.id, "\n\n".join(paragraphs))
    await eventually(lambda: _delivered(d, mid, "sent"))
    texts = [m["text"] for m in fake.sent]
    assert len(texts) == 2 and all(len(t) <= 4096 for t in texts)
    assert texts[0].startswith("Paragraph 0") and texts[1].startswith("Paragraph 3")
    assert "\n\n".join(texts) == "\n\n".join(paragraphs)
    assert {m["chat_id"] for m in fake.sent} == {USER}


async def test_blocked_user_fails_with_a_reason(database_url: str, make_settings: Any,
                                                daemon_factory: Any, clock: Any,
                                                fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    await fake.push(fake.message_update(USER, "Hi"))
    await eventually(lambda: _count_is(d, 1))
    [conv] = await conversations(d.store)
    fake.blocked.add(USER)
    mid = await reply(d, clock, conv.id, "Hello?")
    await eventually(lambda: _delivered(d, mid, "failed"))
    assert await delivery(d, mid) == ("failed", "the customer blocked the bot")
    shown = (await detail(d.store, conv.id))["messages"][-1]
    assert shown["failure_reason"] == "the customer blocked the bot"


async def test_flood_control_is_retried_after_the_wait(make_settings: Any, daemon_factory: Any,
                                                       clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await fake.push(fake.message_update(USER, "Hi"))
    await eventually(lambda: _count_is(d, 1))
    [conv] = await conversations(d.store)
    fake.retry_after_next = 30
    mid = await reply(d, clock, conv.id, "Answer")
    await eventually(lambda: _job_attempts(d, 1, kind="deliver"))
    async with d.store.reader() as s:
        row = (await s.execute(select(Outbox).where(Outbox.kind == "deliver"))).scalars().one()
    assert row.state == "pending" and (row.next_attempt_at - clock()).total_seconds() >= 30
    clock.advance(seconds=31)
    await d.outbox.deliver_due()
    assert await delivery(d, mid) == ("sent", None)
    assert [m["text"] for m in fake.sent] == ["Answer"]


# -- webhook mode -----------------------------------------------------------------------------

async def test_webhook_mode_checks_the_secret(database_url: str, make_settings: Any,
                                              daemon_factory: Any, clock: Any,
                                              fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url, mode="webhook",
                    webhook_secret=SECRET)
    await eventually(lambda: _webhook_set(fake))
    assert fake.webhook is not None
    assert fake.webhook["url"] == PUBLIC_URL + "/webhooks/telegram"
    assert fake.webhook["secret_token"] == SECRET
    assert fake.webhook["allowed_updates"] == ["message"]
    await eventually(lambda: _ready(d))
    update = fake.message_update(USER, "Hello by webhook")
    port = d.http.port
    assert await fake.deliver_webhook(port, update, "not-the-secret") == 403
    assert await fake.deliver_webhook(port, update, None) == 403
    assert await count(d, InboundJournal) == 0
    assert await fake.deliver_webhook(port, update, SECRET) == 200
    assert await fake.deliver_webhook(port, update, SECRET) == 200  # Telegram retried
    edited = {"update_id": update["update_id"] + 1,
              "edited_message": {**update["message"], "text": "Hello (edited)",
                                 "edit_date": update["message"]["date"] + 5}}
    assert await fake.deliver_webhook(port, edited, SECRET) == 200  # answered, not stored
    await eventually(lambda: processed(d.store))
    assert await count(d, InboundJournal) == 1
    [conv] = await conversations(d.store)
    assert (await detail(d.store, conv.id))["messages"][0]["text"] == "Hello by webhook"
    assert "getUpdates" not in fake.calls


# -- configuration ----------------------------------------------------------------------------

def test_missing_token_or_webhook_settings_disable_the_channel(make_settings: Any) -> None:
    def built(**sections: Any) -> Any:
        settings = make_settings(**sections)
        [result] = settings.telegram.build(settings)
        return result

    assert built() == "telegram channel disabled: telegram.bot_token is not set"
    no_secret = built(http={"public_url": PUBLIC_URL},
                      telegram={"bot_token": BOT_TOKEN, "mode": "webhook"})
    assert isinstance(no_secret, str) and "telegram.webhook_secret" in no_secret
    no_url = built(telegram={"bot_token": BOT_TOKEN, "mode": "webhook", "webhook_secret": SECRET})
    assert isinstance(no_url, str) and "http.public_url" in no_url


# -- helpers ----------------------------------------------------------------------------------

async def _count_is(d: Any, n: int) -> bool:
    return await processed(d.store) and await messages_in(d) == n


async def _offset_is(d: Any, n: int) -> bool:
    return await stored_offset(d) == n


async def _job_attempts(d: Any, n: int, kind: str = "telegram_file") -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox).where(Outbox.kind == kind))).scalars().all()
    return any(r.attempts >= n for r in rows)


async def _job_failed_once(d: Any, kind: str = "telegram_file") -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox).where(Outbox.kind == kind))).scalars().all()
    return any(r.state == "pending" and r.attempts >= 1 for r in rows)


async def _conflicts(fake: FakeTelegram, n: int) -> bool:
    return fake.calls.count("getUpdates") >= n


async def _sent(fake: FakeTelegram, n: int) -> bool:
    return len(fake.sent) >= n


async def _delivered(d: Any, message_id: int, status: str) -> bool:
    return (await delivery(d, message_id))[0] == status


async def _webhook_set(fake: FakeTelegram) -> bool:
    return fake.webhook is not None


async def _ready(d: Any) -> bool:
    return (await d.readiness())[1]["telegram"] == "ok"
