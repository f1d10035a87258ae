"""Files staff send through Meta: a Messenger attachment by URL and a WhatsApp (Cloud API)
document by link, both signed links on ``http.public_url`` that serve the stored bytes;
Instagram's media types, and no link without a public URL, checked before anything goes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.files import store_files
from frontdesk.domain.messages import Attachment
from tests.channels.meta.conftest import Hooks
from tests.channels.meta.test_meta_outbound import _conversation, _status
from tests.fakes.meta import (
    INSTAGRAM_ID,
    PAGE_ID,
    FakeGraph,
    instagram_event,
    instagram_payload,
    messenger_event,
    page_payload,
    wa_text,
    whatsapp_payload,
)
from tests.support.helpers import conversations, eventually

PUBLIC_URL = "https://support.example.com"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 12 + b"\n%%EOF\n"


async def _reply(d: Any, reference: str, text: str, files: list[Attachment]) -> int:
    stored = store_files(files, d.attachments)
    async with d.store.session() as s:
        c = await get_conversation(s, reference)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies,
                                  now=d.clock(), files=stored)
    d.outbox.kick()
    return m.id


async def _fetch(http: aiohttp.ClientSession, d: Any, url: str) -> tuple[int, str, bytes]:
    assert url.startswith(PUBLIC_URL + "/files/"), url
    async with http.get(f"http://127.0.0.1:{d.http.port}{urlsplit(url).path}") as r:
        return r.status, r.headers["Content-Type"], await r.read()


async def test_messenger_and_whatsapp_send_files_by_signed_link(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings(http={"public_url": PUBLIC_URL}))
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Label?", mid="m_1")))
    c = await _conversation(d)
    reply = await _reply(d, c.reference, "Your label", [Attachment("label.pdf", "", PDF)])
    await _status(d, reply, "sent")
    text, file = graph.sent[-2:]
    assert text["json"]["message"] == {"text": "Your label"}
    attachment = file["json"]["message"]["attachment"]
    assert attachment["type"] == "file" and attachment["payload"]["is_reusable"] is False
    assert file["json"]["messaging_type"] == "RESPONSE"
    assert await _fetch(http, d, attachment["payload"]["url"]) == (200, "application/pdf", PDF)

    await hooks.post(whatsapp_payload(messages=[wa_text("15557654321", "wamid.in1", "Hi")]))
    await eventually_conversations(d, 2)
    reply = await _reply(d, "FD-2", "", [Attachment("invoice.pdf", "application/pdf", PDF)])
    await _status(d, reply, "sent")
    sent = graph.sent[-1]["json"]
    assert (sent["type"], sent["to"], sent["document"]["filename"]) == (
        "document", "15557654321", "invoice.pdf")
    assert await _fetch(http, d, sent["document"]["link"]) == (200, "application/pdf", PDF)


async def test_instagram_refuses_a_type_it_cannot_show_and_no_public_url_no_files(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings())  # no http.public_url: no links
    hooks = Hooks(http, d)
    await hooks.post(instagram_payload(INSTAGRAM_ID, instagram_event("IGSID1", text="Hi",
                                                                     mid="ig_1")))
    c = await _conversation(d)
    sheet = await _reply(d, c.reference, "The sheet", [Attachment("prices.xlsx", "", b"PK\x03")])
    failed = await _status(d, sheet, "failed")
    assert failed.failure_reason.startswith(
        "prices.xlsx cannot go by Instagram: it takes PNG, JPEG and GIF images, audio (AAC, "
        "M4A, WAV), video (MP4, MOV, WebM, AVI, OGG) and PDF, not application/vnd.openxml")
    label = await _reply(d, c.reference, "The label", [Attachment("label.pdf", "", PDF)])
    failed = await _status(d, label, "failed")
    assert failed.failure_reason == ("the files cannot be sent: http.public_url is not set, "
                                     "and the provider fetches the file from there")
    assert not [s for s in graph.sent if "attachment" in s["json"].get("message", {})]


async def eventually_conversations(d: Any, n: int) -> None:
    async def enough() -> bool:
        return len(await conversations(d.store)) >= n

    await eventually(enough)
