"""Meta's webhook into conversations: the handshake, signatures, batches, duplicates, echoes,
receipts and reactions, attachments and names fetched in the background."""

from __future__ import annotations

from typing import Any

import aiohttp
from sqlalchemy import select

from frontdesk.storage.models import Attachment, Contact, Event, Identity, InboundJournal, Message
from tests.channels.meta.conftest import VERIFY_TOKEN, Hooks
from tests.fakes.meta import (
    INSTAGRAM_ID,
    PAGE_ID,
    FakeGraph,
    instagram_event,
    instagram_payload,
    messenger_event,
    page_payload,
    verify_webhook,
    wa_button_reply,
    wa_contacts,
    wa_location,
    wa_media,
    wa_text,
    whatsapp_payload,
)
from tests.support.helpers import conversations, detail, eventually, processed


async def _journal(d: Any) -> list[Any]:
    async with d.store.reader() as s:
        return list((await s.execute(select(InboundJournal))).scalars().all())


async def test_the_handshake_answers_the_challenge_only_with_the_token(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    url = f"http://127.0.0.1:{d.http.port}/webhooks/meta"
    assert await verify_webhook(http, url, VERIFY_TOKEN, challenge="8831") == (200, "8831")
    status, _ = await verify_webhook(http, url, "wrong-token")
    assert status == 403


async def test_a_bad_or_missing_signature_stores_nothing(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    payload = page_payload(PAGE_ID, messenger_event("PSID1", text="hello"))
    assert (await hooks.post(payload, signature="sha256=" + "0" * 64))[0] == 403
    assert (await hooks.post(payload, app_secret="not-the-secret"))[0] == 403
    async with http.post(hooks.url, json=payload) as r:  # no signature at all
        assert r.status == 403
    assert await _journal(d) == []


async def test_a_batch_is_committed_before_200_and_a_retry_stores_nothing_new(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    payload = page_payload(
        PAGE_ID,
        [messenger_event("PSID1", text="first", mid="m_1"),
         messenger_event("PSID2", text="second", mid="m_2")],
        [messenger_event("PSID1", text="third", mid="m_3"),
         messenger_event("PSID1", text="our own send", echo=True, mid="m_echo")])
    assert (await hooks.post(payload))[0] == 200
    assert sorted(r.remote_id for r in await _journal(d)) == ["m_1", "m_2", "m_3"]
    assert (await hooks.post(payload))[0] == 200  # Meta's retry
    assert len(await _journal(d)) == 3
    await eventually(lambda: processed(d.store))
    found = await conversations(d.store)
    assert sorted(c.channel for c in found) == ["messenger", "messenger"]
    texts = sorted([m["text"] for c in found
                    for m in (await detail(d.store, c.reference))["messages"]])
    assert texts == ["first", "second", "third"]  # the echo is not a customer message


async def test_messenger_attachments_postbacks_and_the_name_arrive_in_the_background(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    graph.profiles["PSID7"] = {"first_name": "Ada", "last_name": "Lovelace", "id": "PSID7"}
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    photo = graph.add_cdn(b"\xff\xd8\xff\xe0jpegdata", "image/jpeg", name="receipt.jpg")
    await hooks.post(page_payload(PAGE_ID, [
        messenger_event("PSID7", text="my receipt", attachments=[("image", photo)], mid="m_a"),
        messenger_event("PSID7", postback=("Talk to a person", "HUMAN"), mid="m_b"),
        messenger_event("PSID7", text="Yes", quick_reply="CONFIRM_YES", mid="m_c")]))

    async def fetched() -> bool:
        async with d.store.reader() as s:
            files = (await s.execute(select(Attachment.filename))).scalars().all()
            names = (await s.execute(select(Contact.name))).scalars().all()
        return files == ["receipt.jpg"] and names == ["Ada Lovelace"]

    await eventually(fetched)
    await eventually(lambda: processed(d.store))
    [c] = await conversations(d.store)
    shown = await detail(d.store, c.reference)
    assert [m["text"] for m in shown["messages"]] == ["my receipt", "Talk to a person", "Yes"]
    async with d.store.reader() as s:
        headers = [m.headers for m in (await s.execute(select(Message))).scalars()]
    assert headers[1]["X-Meta-Payload"] == "HUMAN" and headers[2]["X-Meta-Payload"] == \
        "CONFIRM_YES"
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID7", text="again", mid="m_d")))
    await eventually(lambda: processed(d.store))
    assert graph.profile_calls["PSID7"] == 1  # fetched once


async def test_instagram_stories_and_reactions(meta_settings: Any, daemon_factory: Any,
                                               http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    await hooks.post(instagram_payload(INSTAGRAM_ID, [
        instagram_event("IGSID1", story_mention="https://lookaside.example/story1",
                        mid="ig_1"),
        instagram_event("IGSID1", text="Love this!",
                        story_reply=("https://lookaside.example/story2", "1789"), mid="ig_2")]))
    await eventually(lambda: processed(d.store))
    await hooks.post(instagram_payload(INSTAGRAM_ID, instagram_event(
        "IGSID1", react_to="ig_2", mid="ig_react")))
    [c] = await conversations(d.store)
    assert c.channel == "instagram"
    texts = [m["text"] for m in (await detail(d.store, c.reference))["messages"]]
    assert texts == ["(mentioned you in their story: https://lookaside.example/story1)",
                     "Love this!\n(in reply to your story: https://lookaside.example/story2)"]
    async with d.store.reader() as s:
        reactions = (await s.execute(select(Event).where(Event.kind == "reaction"))
                     ).scalars().all()
    assert [r.data["emoji"] for r in reactions] == ["\u2764\ufe0f"]


async def test_whatsapp_messages_media_and_the_profile_name(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    media = graph.add_media(b"%PDF-1.7 invoice", "application/pdf")
    await hooks.post(whatsapp_payload(messages=[
        wa_text("16315551234", "wamid.A1", "Hi, my order?"),
        wa_media("16315551234", "wamid.A2", media, "application/pdf", kind="document",
                 filename="invoice.pdf", caption="the invoice"),
        wa_location("16315551234", "wamid.A3", 52.52, 13.405, name="Office"),
        wa_contacts("16315551234", "wamid.A4", ("Grace Hopper", "+15550002222")),
        wa_button_reply("16315551234", "wamid.A5", "yes-1", "Yes please")],
        contacts=[("16315551234", "Ada L.")]))

    async def fetched() -> bool:
        async with d.store.reader() as s:
            return (await s.execute(select(Attachment.filename))).scalars().all() == [
                "invoice.pdf"]

    await eventually(fetched)
    await eventually(lambda: processed(d.store))
    [c] = await conversations(d.store)
    texts = [m["text"] for m in (await detail(d.store, c.reference))["messages"]]
    assert texts[0] == "Hi, my order?" and texts[1] == "the invoice"
    assert texts[2].startswith("Location: Office") and "52.52" in texts[2]
    assert texts[3] == "Contact: Grace Hopper (+15550002222)" and texts[4] == "Yes please"
    async with d.store.reader() as s:
        identity = (await s.execute(select(Identity))).scalars().one()
        contact = (await s.execute(select(Contact))).scalars().one()
    # the same identity Twilio's WhatsApp gives a number: one contact whichever way they write
    assert (identity.channel, identity.address) == ("whatsapp", "+16315551234")
    assert contact.name == "Ada L."


async def test_events_of_a_product_not_configured_are_dropped_with_200(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings(meta={"instagram_account_id": ""}))
    hooks = Hooks(http, d)
    status, _ = await hooks.post(instagram_payload(INSTAGRAM_ID, instagram_event(
        "IGSID1", text="hello", mid="ig_x")))
    assert status == 200
    assert await _journal(d) == []
    assert any("meta instagram disabled" in line for line in d.disabled)
    status, _ = await hooks.post(whatsapp_payload("OTHER-NUMBER", messages=[
        wa_text("16315551234", "wamid.Z", "to another number")]))
    assert status == 200 and await _journal(d) == []


async def test_not_a_webhook_is_a_400(meta_settings: Any, daemon_factory: Any,
                                      http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    assert (await hooks.post(b"{not json"))[0] == 400
    assert (await hooks.post(b'["a list"]'))[0] == 400
    assert await _journal(d) == []

