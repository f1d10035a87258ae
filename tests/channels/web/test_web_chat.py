"""The chat widget's API end to end against a running daemon (the browser tests drive the widget
itself): a message is committed before it says sent, stored once, becomes a conversation of
its own visitor; staff replies stream live; nobody reads another visitor's conversation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.storage.models import Attachment, Event, Identity, InboundJournal, Message
from tests.channels.web.conftest import SITE, Visitor, base_of
from tests.support.helpers import conversations, detail, eventually

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\nIDATx\x9cc\x00\x01\x00\x00\x05\x00\x01\r\n-\xb4\x00"
       b"\x00\x00\x00IEND\xaeB`\x82")


async def staff_reply(d: Any, ref: str, text: str, author: str = "Grace") -> int:
    async with d.store.session() as s:
        c = await get_conversation(s, ref)
        m = await add_staff_reply(s, c, text, author=author, replies=d.replies, now=d.clock())
        message_id = m.id
    d.outbox.kick()
    return message_id


async def only_conversation(d: Any) -> Any:
    async def one() -> Any:
        found = await conversations(d.store)
        return found[0] if found else None

    return await eventually(one)


async def test_a_message_is_stored_once_as_a_web_conversation_of_its_visitor(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    status, body = await ada.send("Where is my order 1234?", client_id="msg-0001-abcdef")
    assert (status, body) == (201, {"client_id": "msg-0001-abcdef", "state": "sent"})
    # committed before the answer: the journal has it now
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal.channel))).scalars().all() == ["web"]
    status, _ = await ada.send("Where is my order 1234?", client_id="msg-0001-abcdef")
    assert status == 200  # a repeat: stored once
    c = await only_conversation(d)
    assert c.channel == "web"
    assert c.subject == "Where is my order 1234?"
    shown = await detail(d.store, c.reference)
    assert [m["text"] for m in shown["messages"]] == ["Where is my order 1234?"]
    async with d.store.reader() as s:
        identity = (await s.execute(select(Identity))).scalars().one()
    assert identity.channel == "web" and identity.address.startswith("v-")
    assert ada.token not in identity.address  # the store keeps a hash, never the token

    status, session = await ada.session()
    assert status == 200
    assert session["conversation"] == c.reference
    assert [(m["author"], m["text"], m["client_id"]) for m in session["messages"]] == [
        ("customer", "Where is my order 1234?", "msg-0001-abcdef")]
    assert session["title"] == "Example Shop" and session["ask_email"] == "optional"

    # another browser sees nothing of it, and writing starts a conversation of its own
    bob = Visitor(http, base_of(d))
    _, empty = await bob.session()
    assert empty["messages"] == [] and empty["conversation"] is None
    await bob.send("Hello from another browser")
    await eventually(lambda: _count(d, 2))


async def _count(d: Any, n: int) -> bool:
    return len(await conversations(d.store)) == n


async def test_a_staff_reply_streams_live_and_a_resumed_stream_loses_and_repeats_nothing(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    await ada.send("Is the blue one in stock?")
    c = await only_conversation(d)
    async with ada.stream() as stream:
        first = await stream.next()
        assert (first["author"], first["text"]) == ("customer", "Is the blue one in stock?")
        started = time.monotonic()
        reply_id = await staff_reply(d, c.reference, "Yes, <b>three</b> left & ready.")
        event = await stream.next(timeout=2.0)
        assert time.monotonic() - started < 2.0
        assert event["id"] == reply_id
        assert (event["author"], event["author_name"], event["text"]) == (
            "staff", "Grace", "Yes, <b>three</b> left & ready.")  # text, as written
    # offline now: two replies are committed while no stream is open
    second = await staff_reply(d, c.reference, "We can also ship it tomorrow.")
    third = await staff_reply(d, c.reference, "Anything else?")
    async with ada.stream(last_event_id=reply_id) as resumed:
        got = [await resumed.next(), await resumed.next()]
        assert [int(e["id"]) for e in got] == [second, third]
        with pytest.raises(TimeoutError):
            await resumed.next(timeout=1.5)  # nothing repeated


async def test_a_reply_reaches_every_open_tab_of_the_visitor_and_no_other_visitor(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    ada, bob = Visitor(http, base_of(d)), Visitor(http, base_of(d))
    await ada.send("Ada's question")
    c = await only_conversation(d)
    await bob.send("Bob's question")
    await eventually(lambda: _count(d, 2))
    second_tab = Visitor(http, base_of(d), token=ada.token)
    async with ada.stream() as one, second_tab.stream() as two, bob.stream() as other:
        for s in (one, two):
            assert (await s.next())["text"] == "Ada's question"
        assert (await other.next())["text"] == "Bob's question"
        await staff_reply(d, c.reference, "Only for Ada")
        assert (await one.next(2))["text"] == "Only for Ada"
        assert (await two.next(2))["text"] == "Only for Ada"
        with pytest.raises(TimeoutError):
            await other.next(timeout=1.5)


async def test_the_stream_sends_heartbeats(web_settings: Any, daemon_factory: Any,
                                           http: aiohttp.ClientSession,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from frontdesk.channels.web.api import VisitorApi

    monkeypatch.setattr(VisitorApi, "heartbeat", 0.2)
    d = await daemon_factory(web_settings())
    async with Visitor(http, base_of(d)).stream() as stream:
        await asyncio.sleep(0.9)
        assert stream.comments >= 3


async def test_origins_tokens_and_ids_are_checked(web_settings: Any, daemon_factory: Any,
                                                  http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings(http={"public_url": "https://desk.example.com"}))
    base = base_of(d)
    evil = Visitor(http, base, origin="https://evil.example")
    for call in (evil.session(), evil.send("hi")):
        status, body = await call
        assert status == 403 and "origin" in body["error"]
    async with http.options(f"{base}/web/api/messages",
                            headers={"Origin": "https://evil.example",
                                     "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    async with http.options(f"{base}/web/api/messages",
                            headers={"Origin": SITE, "Access-Control-Request-Method": "POST",
                                     "Access-Control-Request-Headers": "authorization"}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == SITE
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    own = Visitor(http, base, origin="https://desk.example.com")  # public_url: always allowed
    assert (await own.session())[0] == 200
    async with http.get(f"{base}/web/api/session", headers={"Origin": SITE}) as r:
        assert r.status == 401
    bad = Visitor(http, base, token="short")
    assert (await bad.session())[0] == 401
    assert d.journal is not None
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None

    ada = Visitor(http, base)
    await ada.send("my invoice", files=[("invoice.png", PNG)])
    c = await only_conversation(d)
    reply = await staff_reply(d, c.reference, "Got it")
    async with d.store.reader() as s:
        attachment = (await s.execute(select(Attachment))).scalars().one()
    assert await ada.file(attachment.id) == (200, PNG)
    mallory = Visitor(http, base)
    await mallory.send("hello")
    assert (await mallory.file(attachment.id))[0] == 404  # not theirs
    assert (await mallory.file(attachment.id + 1000))[0] == 404
    assert await mallory.seen([reply]) == 204
    async with d.store.reader() as s:  # someone else's reply stays unseen
        assert (await s.execute(select(Event).where(Event.kind == "web_seen"))).first() is None


async def test_bad_messages_get_clear_errors_and_store_nothing(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings(web={"max_upload_bytes": 4096,
                                               "max_message_chars": 200}))
    ada = Visitor(http, base_of(d))
    cases = [
        (ada.send("", client_id="empty-message"), 400, "empty"),
        (ada.send("hi", client_id="bad id!"), 400, "client_id"),
        (ada.send("x" * 201), 400, "200 characters"),
        (ada.send("hi", email="not an address"), 400, "email"),
        (ada.send("run this", files=[("setup.exe", b"MZ\x90\x00" + b"\x00" * 100)]), 415,
         "setup.exe"),
        (ada.send("page", files=[("page.html", b"<html><script>alert(1)</script>")]), 415,
         "page.html"),
        (ada.send("big", files=[("big.png", PNG + b"\x00" * 5000)]), 413, "4096"),
    ]
    for call, status, words in cases:
        got, body = await call
        assert got == status, body
        assert words in body["error"]
    async with http.post(f"{base_of(d)}/web/api/messages", data=b"{not json",
                         headers={**ada.headers(), "Content-Type": "application/json"}) as r:
        assert r.status == 400 and "JSON" in (await r.json())["error"]
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None


async def test_a_visitor_sending_too_fast_is_told_to_wait(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings(web={"visitor_rate_limits": ["3/1m"],
                                               "address_rate_limits": ["5/1m"]}))
    ada = Visitor(http, base_of(d))
    for n in range(3):
        assert (await ada.send(f"message {n}"))[0] == 201
    async with http.post(f"{base_of(d)}/web/api/messages",
                         json={"client_id": "one-more-message", "text": "again"},
                         headers=ada.headers()) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["Access-Control-Allow-Origin"] == SITE
    # the same address with other tokens: the per-address limit
    statuses = [(await Visitor(http, base_of(d)).send("hi"))[0] for _ in range(3)]
    assert statuses == [201, 201, 429]


async def test_files_are_stored_like_any_attachment(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    status, _ = await ada.send("", files=[("photo.png", PNG), ("notes.txt", b"size M\n")])
    assert status == 201
    c = await only_conversation(d)
    shown = await detail(d.store, c.reference)
    files = shown["messages"][0]["attachments"]
    assert [(f["filename"], f["content_type"]) for f in files] == [
        ("photo.png", "image/png"), ("notes.txt", "text/plain")]
    assert c.subject == "photo.png"


async def test_the_panel_says_when_we_reply_while_the_office_is_closed(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        clock: Any) -> None:
    from datetime import UTC, datetime

    clock.now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # a Saturday
    settings = web_settings(sla={"business_hours": "mon-fri 09:00-17:00", "first_response": "1h",
                                 "timezone": "UTC"})
    d = await daemon_factory(settings, clock=clock)
    ada = Visitor(http, base_of(d))
    _, session = await ada.session()
    assert session["open"] is False
    assert "Monday 10:00" in session["notice"]
    _, german = await ada.session(**{"Accept-Language": "de-DE,de;q=0.9"})
    assert "Montag um 10:00" in german["notice"]
    clock.now = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)  # Monday, open
    _, monday = await ada.session()
    assert monday["open"] is True and monday["notice"] is None


async def test_staff_see_the_visitors_message_and_its_page(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    await Visitor(http, base_of(d)).send("hello", page=f"{SITE}/checkout?step=2")
    c = await only_conversation(d)
    async with d.store.reader() as s:
        m = (await s.execute(select(Message))).scalars().one()
    assert m.headers["X-Frontdesk-Web-Page"] == f"{SITE}/checkout?step=2"
    assert c.reference.startswith("FD-")


async def test_a_reply_committed_on_one_instance_reaches_a_visitor_on_another(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instance two learns of the reply from PostgreSQL's notification of its outbox row, not
    from its hub's next read (made a minute away here)."""
    from frontdesk.channels.web.hub import StreamHub

    monkeypatch.setattr(StreamHub, "poll", 60.0)
    one = await daemon_factory(web_settings(database_url=postgres_url))
    two = await daemon_factory(web_settings(database_url=postgres_url))
    ada = Visitor(http, base_of(two))
    await ada.send("Asked on instance two")
    c = await only_conversation(one)
    async with ada.stream() as stream:
        assert (await stream.next())["text"] == "Asked on instance two"
        started = time.monotonic()
        await staff_reply(one, c.reference, "Answered through instance one")
        event = await stream.next(timeout=2.0)
        assert event["text"] == "Answered through instance one"
        assert time.monotonic() - started < 2.0


async def test_a_visitor_who_leaves_ends_the_stream_quietly(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from frontdesk.channels.web.api import VisitorApi

    monkeypatch.setattr(VisitorApi, "heartbeat", 0.1)
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    await ada.send("hello")
    c = await only_conversation(d)
    for _ in range(3):
        async with ada.stream() as stream:
            await stream.next()
    await staff_reply(d, c.reference, "anyone there?")
    await asyncio.sleep(1.5)  # heartbeats and the reply meet closed connections
    [web_channel] = [c for c in d.channels if c.name == "web"]
    assert web_channel.hub.open_streams == 0
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_stream_resumed_after_a_quiet_spell_repeats_nothing(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    await ada.send("first")
    c = await only_conversation(d)
    reply = await staff_reply(d, c.reference, "an answer")
    async with ada.stream() as stream:
        assert [(await stream.next())["text"] for _ in range(2)] == ["first", "an answer"]
    await asyncio.sleep(1.5)  # the hub stops with nobody listening
    later = await staff_reply(d, c.reference, "a later answer")
    async with ada.stream(last_event_id=reply) as resumed:
        assert (await resumed.next())["id"] == later
        with pytest.raises(TimeoutError):
            await resumed.next(timeout=1.5)


async def test_a_stream_opened_as_the_daemon_stops_ends_at_once(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    """The widget's stream reconnects two seconds after it closes. While the daemon stops, the
    HTTP server still answers: a stream opened then is refused (503), and one that got past
    that check as the stop began ends at once: a stream left open would hold the stop up until
    its shutdown_timeout."""
    d = await daemon_factory(web_settings())
    ada = Visitor(http, base_of(d))
    await ada.send("hello")
    [web_channel] = [c for c in d.channels if c.name == "web"]
    await web_channel.stop()  # the first step of the daemon's stop
    async with http.get(f"{base_of(d)}/web/api/stream",
                        headers=ada.headers(Accept="text/event-stream")) as r:
        assert r.status == 503
    late = web_channel.hub.subscribe("a-visitor", [1])
    assert late.queue.get_nowait() is None and web_channel.hub.open_streams == 0
