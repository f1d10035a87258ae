"""Replies through the Graph API: the Send API and WhatsApp's messages endpoint, split texts,
statuses, errors in words, and the messaging windows (HUMAN_AGENT, the WhatsApp template that
holds the reply until the customer writes again)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from frontdesk.storage.models import Message, Outbox
from tests.channels.meta.conftest import Hooks
from tests.channels.web.test_web_chat import staff_reply
from tests.fakes.meta import (
    PAGE_ID,
    FakeGraph,
    messenger_event,
    page_payload,
    wa_error,
    wa_status,
    wa_text,
    whatsapp_payload,
)
from tests.support.helpers import conversations, eventually, processed


async def _reply(d: Any, message_id: int) -> Message:
    async with d.store.reader() as s:
        return await s.get_one(Message, message_id)


async def _status(d: Any, message_id: int, *wanted: str) -> Message:
    async def check() -> Message | None:
        m = await _reply(d, message_id)
        return m if m.delivery_status in wanted else None

    return await eventually(check)


async def _conversation(d: Any) -> Any:
    await eventually(lambda: processed(d.store))
    return (await eventually(lambda: conversations(d.store)))[0]


async def test_a_messenger_reply_goes_out_split_and_is_delivered(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Hello?", mid="m_1")))
    c = await _conversation(d)
    long = ("All good. " * 300).strip()  # 2,999 characters: two Messenger messages
    reply = await staff_reply(d, c.reference, long)
    await _status(d, reply, "sent")
    sends = [s for s in graph.sent if s["path"].endswith(f"/{PAGE_ID}/messages")]
    assert len(sends) == 2
    assert all(s["json"]["recipient"] == {"id": "PSID1"} for s in sends)
    assert all(s["json"]["messaging_type"] == "RESPONSE" for s in sends)
    assert "".join(s["json"]["message"]["text"] + " " for s in sends).split() == long.split()
    await hooks.post(page_payload(PAGE_ID, messenger_event(
        "PSID1", delivered=[s["id"] for s in sends])))
    await _status(d, reply, "delivered")


async def test_outside_the_window_messenger_fails_with_the_reason_or_uses_human_agent(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph, clock: Any) -> None:
    d = await daemon_factory(meta_settings(meta={"human_agent_tag": True}), clock=clock)
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Hi", mid="m_1")))
    c = await _conversation(d)
    clock.advance(hours=30)
    tagged = await staff_reply(d, c.reference, "Sorry for the wait")
    await _status(d, tagged, "sent")
    assert graph.sent[-1]["json"]["messaging_type"] == "MESSAGE_TAG"
    assert graph.sent[-1]["json"]["tag"] == "HUMAN_AGENT"
    clock.advance(days=7)
    late = await staff_reply(d, c.reference, "Still there?")
    failed = await _status(d, late, "failed")
    assert "24-hour window" in failed.failure_reason
    assert len(graph.sent) == 1  # nothing tried


async def test_meta_errors_become_reasons_a_person_understands(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Hi", mid="m_1")))
    c = await _conversation(d)
    graph.fail_next("blocked")
    blocked = await _status(d, await staff_reply(d, c.reference, "one"), "failed")
    assert "isn't available" in blocked.failure_reason
    graph.fail_next("token")
    token = await _status(d, await staff_reply(d, c.reference, "two"), "failed")
    assert "access token" in token.failure_reason
    graph.fail_next("window")
    window = await _status(d, await staff_reply(d, c.reference, "three"), "failed")
    assert "24-hour messaging window" in window.failure_reason
    graph.fail_next("server")
    await _status(d, await staff_reply(d, c.reference, "four"), "sent")  # retried


async def test_whatsapp_replies_and_their_statuses(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.IN1", "Hi")]))
    c = await _conversation(d)
    reply = await staff_reply(d, c.reference, "Hello from the team")
    await _status(d, reply, "sent")
    sent = graph.sent[-1]
    assert sent["json"] == {"messaging_product": "whatsapp", "recipient_type": "individual",
                            "to": "16315551234", "type": "text",
                            "text": {"body": "Hello from the team"}}
    await hooks.post(whatsapp_payload(statuses=[wa_status(sent["id"], "read", "16315551234")]))
    await _status(d, reply, "delivered")
    second = await staff_reply(d, c.reference, "One more thing")
    await _status(d, second, "sent")
    await hooks.post(whatsapp_payload(statuses=[wa_status(
        graph.sent[-1]["id"], "failed", "16315551234",
        errors=[wa_error(131026, "Message undeliverable", "The recipient is unreachable")])]))
    failed = await _status(d, second, "failed")
    assert "WhatsApp could not deliver it" in failed.failure_reason


async def test_a_closed_whatsapp_window_sends_the_template_and_holds_the_reply(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph, clock: Any) -> None:
    template = {"name": "answer_ready", "language": "en_US",
                "parameters": ["{reference}", "{first_name}"]}
    d = await daemon_factory(meta_settings(meta={"whatsapp_template": template}), clock=clock)
    hooks = Hooks(http, d)
    await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.IN1", "Hi")],
                                      contacts=[("16315551234", "Ada Lovelace")]))
    c = await _conversation(d)
    clock.advance(hours=26)
    reply = await staff_reply(d, c.reference, "Your refund is approved.")

    async def template_sent() -> Any:
        return next((s for s in graph.sent if s["json"].get("type") == "template"), None)

    sent = await eventually(template_sent)
    assert sent["json"]["template"] == {
        "name": "answer_ready", "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [
            {"type": "text", "text": c.reference}, {"type": "text", "text": "Ada"}]}]}

    async def held() -> bool:
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox).where(Outbox.message_id == reply))
                   ).scalars().one()
        return row.state == "pending" and "waiting for the customer" in (row.last_error or "")

    await eventually(held)
    assert (await _reply(d, reply)).delivery_status == "queued"
    shown = await _show(d, c.reference)
    assert "waiting: waiting for the customer to write again" in shown
    assert not [s for s in graph.sent if s["json"].get("type") == "text"]
    # the customer answers the template: the window is open, the reply goes at once
    await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.IN2", "Yes?")]))
    await _status(d, reply, "sent")
    texts = [s["json"]["text"]["body"] for s in graph.sent if s["json"].get("type") == "text"]
    assert texts == ["Your refund is approved."]
    assert len([s for s in graph.sent if s["json"].get("type") == "template"]) == 1


async def _show(d: Any, reference: str) -> str:
    import asyncio
    import subprocess
    import sys
    from pathlib import Path

    config = Path(str(d.settings.daemon.data_dir)).parent / "show.toml"
    config.write_text(f'[database]\nurl = "{d.settings.database.url}"\n[daemon]\n'
                      f'data_dir = "{d.settings.daemon.data_dir}"\n')
    result = await asyncio.to_thread(subprocess.run, [
        str(Path(sys.executable).parent / "frontdesk"), "show", reference, "-c", str(config)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_closed_whatsapp_window_without_a_template_fails_at_once(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph, clock: Any) -> None:
    d = await daemon_factory(meta_settings(), clock=clock)
    hooks = Hooks(http, d)
    await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.IN1", "Hi")]))
    c = await _conversation(d)
    clock.advance(hours=25)
    failed = await _status(d, await staff_reply(d, c.reference, "Late answer"), "failed")
    assert "24 hours" in failed.failure_reason and "whatsapp_template" in failed.failure_reason
    assert graph.sent == []


async def test_a_shared_channel_is_sent_by_the_provider_that_received_the_message() -> None:
    from frontdesk.channels.base import ChannelParts
    from frontdesk.daemon.process.app import _shared_sender
    from frontdesk.domain.messages import OutboundMessage, Receipt

    class Provider:
        def __init__(self, name: str) -> None:
            self.name = name

        async def send(self, outbound: OutboundMessage) -> Receipt:
            return Receipt(detail=self.name)

    twilio, meta = Provider("twilio"), Provider("meta")
    send = _shared_sender([
        (twilio, ChannelParts()),  # type: ignore[list-item]
        (meta, ChannelParts(answers=lambda o: (o.in_reply_to or "").startswith("wamid.")))])
    by_meta = OutboundMessage(channel="whatsapp", to_address="+1", text="x",
                              in_reply_to="wamid.HBgL")
    by_twilio = OutboundMessage(channel="whatsapp", to_address="+1", text="x",
                                in_reply_to="SM123")
    assert (await send(by_meta)).detail == "meta"
    assert (await send(by_twilio)).detail == "twilio"


async def test_the_slack_thread_says_a_reply_is_held_and_then_sent(
        make_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph, clock: Any) -> None:
    from tests.daemon.desk.test_slack_desk import (
        SUPPORT,
        _thread,
        desk_settings,
        events_url,
        root_of,
        start,
    )
    from tests.fakes.meta import APP_SECRET, PHONE_NUMBER_ID, WHATSAPP_TOKEN
    from tests.fakes.slack import FakeSlack, thread_message

    async with FakeSlack() as slack:
        meta = {"app_secret": APP_SECRET, "verify_token": "v", "api_base_url": graph.base_url,
                "whatsapp_phone_number_id": PHONE_NUMBER_ID,
                "whatsapp_access_token": WHATSAPP_TOKEN,
                "whatsapp_template": {"name": "answer_ready", "parameters": ["{reference}"]}}
        d = await start(daemon_factory, desk_settings(make_settings, slack, meta=meta), clock)
        hooks = Hooks(http, d)
        await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.1", "Hi")]))
        root = await root_of(slack, SUPPORT)
        clock.advance(hours=30)
        await slack.event(events_url(d), thread_message(SUPPORT, root["ts"], "Here you go",
                                                        ts="1790000600.000001"))

        async def held() -> Any:
            lines = [m for m in await _thread(slack, root["ts"]) if "is waiting" in m["text"]]
            return lines[0] if lines else None

        line = await eventually(held)
        assert line["text"].startswith(":hourglass_flowing_sand: The reply by")
        assert "24-hour window is closed" in line["text"]
        await hooks.post(whatsapp_payload(messages=[wa_text("16315551234", "wamid.2", "ok")]))

        async def reacted() -> bool:
            found = slack.find(SUPPORT, "1790000600.000001")
            return bool(found and found.get("reactions"))

        await eventually(reacted)
        assert [s["json"]["type"] for s in graph.sent] == ["template", "text"]


async def test_a_rate_limit_waits_and_sends_later_in_order(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        graph: FakeGraph, clock: Any) -> None:
    d = await daemon_factory(meta_settings(), clock=clock)
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Hi", mid="m_1")))
    c = await _conversation(d)
    graph.fail_next("rate")
    first = await staff_reply(d, c.reference, "first")
    second = await staff_reply(d, c.reference, "second")

    async def waiting() -> bool:
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox).where(Outbox.message_id == first))
                   ).scalars().one()
        return "rate limit" in (row.last_error or "")

    await eventually(waiting)
    assert graph.sent == [] and (await _reply(d, second)).delivery_status == "queued"
    clock.advance(seconds=61)
    d.outbox.kick()
    await _status(d, second, "sent")
    assert [s["json"]["message"]["text"] for s in graph.sent] == ["first", "second"]


async def test_a_messenger_read_receipt_makes_replies_delivered(
        meta_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(meta_settings())
    hooks = Hooks(http, d)
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", text="Hi", mid="m_1")))
    c = await _conversation(d)
    reply = await staff_reply(d, c.reference, "Hello!")
    await _status(d, reply, "sent")
    await hooks.post(page_payload(PAGE_ID, messenger_event("PSID1", read=1790000000000)))
    await _status(d, reply, "delivered")


async def test_a_call_as_the_graph_client_closes_waits_quietly() -> None:
    """A send or profile job that starts while the channel stops is deferred (the outbox tries
    it again after the restart), not an internal error about a closed session."""
    from frontdesk.channels.base import Deferred
    from frontdesk.channels.meta.graph import Graph

    graph = Graph("http://127.0.0.1:9", "v21.0", timeout=1.0)
    await graph.start()
    closing = asyncio.ensure_future(graph.close())
    await asyncio.sleep(0)  # the close has begun
    with pytest.raises(Deferred, match="not running"):
        await graph.get("123", "token", fields="name")
    await closing
