"""Files staff send on Telegram: uploaded by python-telegram-bot as multipart/form-data
(sendDocument, sendPhoto for a picture) after the text, each once, with Telegram's 50 MB
limit checked first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.files import store_files
from frontdesk.domain.messages import Attachment
from frontdesk.storage.models import OutboundPart
from tests.channels.telegram.test_telegram import USER, delivery, start
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import eventually, processed

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 20 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def _reply_with(d: Any, clock: Any, text: str, files: list[Attachment]) -> int:
    stored = store_files(files, d.attachments)
    async with d.store.session() as s:
        c = await get_conversation(s, 1)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies, now=clock(),
                                  files=stored)
    d.outbox.kick()
    return m.id


async def test_a_reply_with_a_pdf_and_a_photo_is_uploaded_as_multipart(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    await fake.push(fake.message_update(USER, "Where is my invoice?"))
    await eventually(lambda: processed(d.store))
    reply = await _reply_with(d, clock, "Here it is, and a photo of the parcel.",
                              [Attachment("invoice.pdf", "application/pdf", PDF),
                               Attachment("parcel.png", "", PNG)])
    assert await eventually(lambda: _status(d, reply)) == ("sent", None)
    assert [m["text"] for m in fake.sent] == ["Here it is, and a photo of the parcel."]
    document, photo = fake.uploads
    assert (document["method"], document["chat_id"], document["filename"], document["data"]) == \
        ("sendDocument", USER, "invoice.pdf", PDF)
    assert document["multipart"] == "multipart/form-data"
    assert (photo["method"], photo["filename"], photo["data"]) == ("sendPhoto", "parcel.png", PNG)
    async with d.store.reader() as s:  # each part remembered: a retry repeats none
        parts = (await s.execute(select(OutboundPart.part, OutboundPart.parts)
                                 .where(OutboundPart.message_id == reply)
                                 .order_by(OutboundPart.part))).all()
    assert [tuple(p) for p in parts] == [(0, 3), (1, 3), (2, 3)]


async def test_a_file_larger_than_telegram_takes_fails_before_anything_is_sent(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await fake.push(fake.message_update(USER, "Send me the video"))
    await eventually(lambda: processed(d.store))
    reply = await _reply_with(d, clock, "The video", [
        Attachment("unboxing.mp4", "video/mp4", b"\x00" * (51 * 1024 * 1024))])
    _, reason = await eventually(lambda: _status(d, reply, "failed"))
    assert reason == ("unboxing.mp4 (51 MB) cannot go by Telegram: it takes files of at most "
                      "50 MB")
    assert fake.sent == [] and fake.uploads == []


async def _status(d: Any, message_id: int, want: str = "sent"
                  ) -> tuple[str | None, str | None] | None:
    found = await delivery(d, message_id)
    return found if found[0] == want else None
