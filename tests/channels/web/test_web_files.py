"""Files staff send in the website chat: they are the reply's attachments, listed in the
visitor's widget and downloaded through the widget's own route (the visitor's own files only),
within the widget's cap (``web.max_upload_bytes``)."""

from __future__ import annotations

from typing import Any

import aiohttp
from sqlalchemy import select

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.files import store_files
from frontdesk.domain.messages import Attachment
from frontdesk.storage.models import Attachment as AttachmentRow
from tests.channels.web.conftest import Visitor, base_of
from tests.channels.web.test_web_chat import only_conversation
from tests.support.helpers import detail, eventually

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"


async def _reply(d: Any, ref: str, text: str, files: list[Attachment]) -> int:
    stored = store_files(files, d.attachments)
    async with d.store.session() as s:
        c = await get_conversation(s, ref)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies,
                                  now=d.clock(), files=stored)
    d.outbox.kick()
    return m.id


async def _status(d: Any, ref: str, message_id: int, status: str) -> dict[str, Any] | None:
    shown = await detail(d.store, ref)
    return next((m for m in shown["messages"] if m["id"] == message_id
                 and m["delivery_status"] == status), None)


async def test_a_reply_with_a_file_shows_in_the_widget_for_its_visitor_only(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings(web={"max_upload_bytes": 4096}))
    ada, bob = Visitor(http, base_of(d)), Visitor(http, base_of(d))
    await ada.send("Can I have the invoice?")
    c = await only_conversation(d)
    reply = await _reply(d, c.reference, "Here it is.", [Attachment("invoice.pdf", "", PDF)])
    await eventually(lambda: _status(d, c.reference, reply, "sent"))
    _, session = await ada.session()
    [shown] = [m for m in session["messages"] if m["author"] == "staff"]
    [file] = shown["attachments"]
    assert (file["name"], file["content_type"], file["size"]) == ("invoice.pdf",
                                                                  "application/pdf", len(PDF))
    assert await ada.file(file["id"]) == (200, PDF)
    assert (await bob.file(file["id"]))[0] == 404

    big = await _reply(d, c.reference, "The manual", [Attachment("manual.pdf", "", PDF * 5)])
    failed = await eventually(lambda: _status(d, c.reference, big, "failed"))
    assert failed["failure_reason"] == ("manual.pdf (5.1 KB) cannot go by the website chat: it "
                                        "takes at most 4 KB in all (web.max_upload_bytes)")
    _, session = await ada.session()  # a reply that failed is not shown, nor its file served
    assert [m["text"] for m in session["messages"]] == ["Can I have the invoice?", "Here it is."]
    big_file = (await detail(d.store, c.reference))["messages"][-1]
    assert big_file["id"] == big
    async with d.store.reader() as s:
        [row] = (await s.execute(select(AttachmentRow.id).where(
            AttachmentRow.message_id == big))).scalars().all()
    assert (await ada.file(row))[0] == 404
