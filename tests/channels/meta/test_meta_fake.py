"""The Meta fake itself: that FakeGraph answers as Graph does where frontdesk depends on it
(tokens, message ids, error objects, the two-step WhatsApp media fetch, profiles), and that the
webhook builders and the signature are Meta's."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import serve
from tests.fakes.meta import (
    APP_ID,
    APP_SECRET,
    FakeGraph,
    instagram_event,
    instagram_payload,
    messenger_event,
    meta_json,
    page_payload,
    post_webhook,
    sign,
    verify_webhook,
    wa_button_reply,
    wa_contacts,
    wa_error,
    wa_list_reply,
    wa_location,
    wa_media,
    wa_status,
    wa_text,
    whatsapp_payload,
)

MESSENGER_SEND = {"recipient": {"id": "PSID1"}, "messaging_type": "RESPONSE",
                  "message": {"text": "Hello from support"}}
WHATSAPP_SEND = {"messaging_product": "whatsapp", "recipient_type": "individual",
                 "to": "16315551234", "type": "text", "text": {"body": "Hello from support"}}
WHATSAPP_TEMPLATE = {
    "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+1 631-555-1234",
    "type": "template",
    "template": {"name": "ticket_update", "language": {"code": "en_US"},
                 "components": [{"type": "body",
                                 "parameters": [{"type": "text", "text": "T-42"}]}]}}


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, *, token: str | None = None,
               body: Any = None, raw: bytes | None = None,
               params: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=headers, params=params) as r:
        content = await r.read()
        try:
            decoded: Any = json.loads(content)
        except ValueError:
            decoded = content
        return r.status, decoded, r


def assert_graph_error(body: Any, code: int, subcode: int | None = None,
                       type_: str = "OAuthException") -> dict[str, Any]:
    error = body["error"]
    assert error["code"] == code and error["type"] == type_
    assert error.get("error_subcode") == subcode
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    return dict(error)


# -- the Send API and WhatsApp's messages endpoint ----------------------------------------------


async def test_send_api_answers_a_message_id_and_records_the_send(
        graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    url = f"{graph.base_url}/v21.0/PAGE1/messages"
    status, body, _ = await call(http, "POST", url, token="PAGE-TOKEN", body=MESSENGER_SEND)
    assert status == 200
    assert body == {"recipient_id": "PSID1", "message_id": "m_1"}
    # the token as a query parameter works too, and Instagram goes through its own id or "me"
    for node in ("PAGE1", "IG1", "me"):
        status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/{node}/messages",
                                     body=MESSENGER_SEND, params={"access_token": "PAGE-TOKEN"})
        assert status == 200, body
    assert [s["id"] for s in graph.sent] == ["m_1", "m_2", "m_3", "m_4"]
    assert graph.sent[0] == {"path": "/v21.0/PAGE1/messages", "json": MESSENGER_SEND,
                             "token": "PAGE-TOKEN", "id": "m_1"}
    assert graph.sent[2]["path"] == "/v21.0/IG1/messages"
    assert graph.requests[0] == ("POST", "/v21.0/PAGE1/messages")


async def test_send_api_with_a_wrong_or_missing_token(graph: FakeGraph,
                                                      http: aiohttp.ClientSession) -> None:
    url = f"{graph.base_url}/v21.0/PAGE1/messages"
    for token in ("WA-TOKEN", "nonsense"):
        status, body, response = await call(http, "POST", url, token=token, body=MESSENGER_SEND)
        assert status == 400
        error = assert_graph_error(body, 190)
        assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
        assert "invalid_token" in response.headers["WWW-Authenticate"]
    status, body, _ = await call(http, "POST", url, body=MESSENGER_SEND)
    assert status == 400
    assert_graph_error(body, 104)
    assert graph.sent == []


async def test_whatsapp_send_text_and_template(graph: FakeGraph,
                                               http: aiohttp.ClientSession) -> None:
    url = f"{graph.base_url}/v21.0/PHONE1/messages"
    status, body, _ = await call(http, "POST", url, token="WA-TOKEN", body=WHATSAPP_SEND)
    assert status == 200
    assert body == {"messaging_product": "whatsapp",
                    "contacts": [{"input": "16315551234", "wa_id": "16315551234"}],
                    "messages": [{"id": "wamid.1"}]}
    status, body, _ = await call(http, "POST", url, token="WA-TOKEN", body=WHATSAPP_TEMPLATE)
    assert status == 200
    assert body["contacts"] == [{"input": "+1 631-555-1234", "wa_id": "16315551234"}]
    assert [s["json"]["type"] for s in graph.sent] == ["text", "template"]
    # the page token is not the WhatsApp token: 401 there, as Meta's WhatsApp table has it
    status, body, _ = await call(http, "POST", url, token="PAGE-TOKEN", body=WHATSAPP_SEND)
    assert status == 401
    assert_graph_error(body, 190)


async def test_read_receipts_and_sender_actions_are_not_sends(
        graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    graph.fail_next("server")
    status, body, _ = await call(
        http, "POST", f"{graph.base_url}/v21.0/PAGE1/messages", token="PAGE-TOKEN",
        body={"recipient": {"id": "PSID1"}, "sender_action": "mark_seen"})
    assert (status, body) == (200, {"recipient_id": "PSID1"})
    status, body, _ = await call(
        http, "POST", f"{graph.base_url}/v21.0/PHONE1/messages", token="WA-TOKEN",
        body={"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in1"})
    assert (status, body) == (200, {"success": True})
    assert graph.sent == [] and len(graph.actions) == 2
    status, _, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PAGE1/messages",
                              token="PAGE-TOKEN", body=MESSENGER_SEND)
    assert status == 500  # the scripted failure was still waiting for a send


@pytest.mark.parametrize(("kind", "status", "code", "subcode"), [
    ("window", 400, 10, 2018278),
    ("blocked", 400, 551, 1545041),
    ("token", 400, 190, 463),
    ("rate", 400, 613, None),
    ("server", 500, 2, None),
])
async def test_scripted_failures_of_the_send_api(graph: FakeGraph, http: aiohttp.ClientSession,
                                                 kind: str, status: int, code: int,
                                                 subcode: int | None) -> None:
    url = f"{graph.base_url}/v21.0/PAGE1/messages"
    graph.fail_next(kind, count=2)
    for _ in range(2):
        got, body, _ = await call(http, "POST", url, token="PAGE-TOKEN", body=MESSENGER_SEND)
        assert got == status
        error = assert_graph_error(body, code, subcode)
    if kind == "window":
        assert error["message"].startswith("(#10) This message is sent outside of allowed "
                                           "window.")
    if kind == "blocked":
        assert error["message"] == "(#551) This person isn't available right now."
    if kind == "token":
        assert error["message"].startswith("Error validating access token: Session has "
                                           "expired")
    if kind == "server":
        assert error["is_transient"] is True
        assert error["message"] == ("An unexpected error has occurred. Please retry your "
                                    "request later.")
    assert graph.sent == []
    got, body, _ = await call(http, "POST", url, token="PAGE-TOKEN", body=MESSENGER_SEND)
    assert got == 200 and body["message_id"] == "m_1"


@pytest.mark.parametrize(("kind", "status", "code", "subcode"), [
    ("window", 400, 131047, None),
    ("token", 401, 190, 463),
    ("rate", 429, 130429, None),
    ("server", 500, 2, None),
])
async def test_scripted_failures_of_whatsapp(graph: FakeGraph, http: aiohttp.ClientSession,
                                             kind: str, status: int, code: int,
                                             subcode: int | None) -> None:
    url = f"{graph.base_url}/v21.0/PHONE1/messages"
    graph.fail_next(kind)
    got, body, _ = await call(http, "POST", url, token="WA-TOKEN", body=WHATSAPP_SEND)
    assert got == status
    error = assert_graph_error(body, code, subcode)
    if kind == "window":
        assert error["message"] == "(#131047) Re-engagement message"
        assert error["error_data"] == {
            "messaging_product": "whatsapp",
            "details": "Message failed to send because more than 24 hours have passed since "
                       "the customer last replied to this number."}
    if kind == "rate":
        assert error["message"] == "(#130429) Rate limit hit"
        assert error["error_data"]["messaging_product"] == "whatsapp"
    got, body, _ = await call(http, "POST", url, token="WA-TOKEN", body=WHATSAPP_SEND)
    assert got == 200 and body["messages"] == [{"id": "wamid.1"}]


@pytest.mark.parametrize(("kind", "code", "title"), [
    ("window_async", 131047, "Re-engagement message"),
    ("blocked", 131026, "Message undeliverable"),
])
async def test_whatsapp_failures_reported_in_a_status(graph: FakeGraph,
                                                      http: aiohttp.ClientSession, kind: str,
                                                      code: int, title: str) -> None:
    graph.fail_next(kind)
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PHONE1/messages",
                                 token="WA-TOKEN", body=WHATSAPP_SEND)
    assert status == 200 and body["messages"] == [{"id": "wamid.1"}]
    assert len(graph.sent) == 1
    [failed] = graph.take_statuses()
    assert graph.statuses == []
    assert failed["id"] == "wamid.1" and failed["status"] == "failed"
    assert failed["recipient_id"] == "16315551234"
    [error] = failed["errors"]
    assert (error["code"], error["title"]) == (code, title)
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert isinstance(error["error_data"]["details"], str)


async def test_window_async_on_a_page_is_the_synchronous_error(
        graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    graph.fail_next("window_async")
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PAGE1/messages",
                                 token="PAGE-TOKEN", body=MESSENGER_SEND)
    assert status == 400
    assert_graph_error(body, 10, 2018278)


def test_an_unknown_failure_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failure kind"):
        FakeGraph().fail_next("meltdown")


async def test_bad_requests(graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PAGE1/messages",
                                 token="PAGE-TOKEN", raw=b"{not json")
    assert status == 400
    assert_graph_error(body, 100)
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PAGE1/messages",
                                 token="PAGE-TOKEN", body={"recipient": {"id": "PSID1"}})
    assert status == 400
    assert_graph_error(body, 100)
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/PHONE1/messages",
                                 token="WA-TOKEN", body={"to": "1555", "type": "text",
                                                         "text": {"body": "hi"}})
    assert status == 400  # no messaging_product
    assert_graph_error(body, 100)
    status, body, _ = await call(http, "POST", f"{graph.base_url}/v21.0/SOMEONE/messages",
                                 token="PAGE-TOKEN", body=MESSENGER_SEND)
    assert status == 400
    assert_graph_error(body, 100, 33, "GraphMethodException")
    for method, path in (("GET", "/nowhere"), ("POST", "/v21.0/PAGE1/feed"),
                         ("POST", "/v2.6/PAGE1/messages")):
        status, body, _ = await call(http, method, graph.base_url + path, token="PAGE-TOKEN",
                                     body=MESSENGER_SEND)
        assert status == 404
        assert_graph_error(body, 2500)
    assert ("GET", "/nowhere") in graph.requests
    assert graph.sent == []


# -- profiles, media, the CDN -------------------------------------------------------------------


async def test_profiles_are_counted(graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    graph.profiles["PSID1"] = {"first_name": "Ada", "last_name": "Lovelace",
                               "profile_pic": "https://example.invalid/ada.jpg"}
    graph.profiles["IGSID1"] = {"name": "Grace Hopper", "username": "grace"}
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/PSID1",
                                 token="PAGE-TOKEN", params={"fields": "first_name,last_name"})
    assert (status, body) == (200, {"first_name": "Ada", "last_name": "Lovelace", "id": "PSID1"})
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/IGSID1",
                                 params={"fields": "name,username", "access_token": "PAGE-TOKEN"})
    assert (status, body) == (200, {"name": "Grace Hopper", "username": "grace", "id": "IGSID1"})
    assert graph.profile_calls == {"PSID1": 1, "IGSID1": 1}
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/PSID9",
                                 token="PAGE-TOKEN", params={"fields": "first_name"})
    assert status == 400
    error = assert_graph_error(body, 100, 33, "GraphMethodException")
    assert error["message"].startswith("Unsupported get request. Object with ID 'PSID9'")
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/PSID1", token="x")
    assert status == 400
    assert_graph_error(body, 190)
    assert graph.profile_calls == {"PSID1": 1, "IGSID1": 1}


async def test_whatsapp_media_is_two_steps_and_needs_the_token(
        graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    data = b"\xff\xd8\xff\xe0 a tiny jpeg"
    media_id = graph.add_media(data, "image/jpeg")
    status, info, _ = await call(http, "GET", f"{graph.base_url}/v21.0/{media_id}",
                                 token="WA-TOKEN")
    assert status == 200
    assert info == {"messaging_product": "whatsapp",
                    "url": f"{graph.base_url}/whatsapp-media/{media_id}",
                    "mime_type": "image/jpeg", "sha256": hashlib.sha256(data).hexdigest(),
                    "file_size": len(data), "id": media_id}
    status, _, _ = await call(http, "GET", f"{graph.base_url}/v21.0/{media_id}",
                              token="PAGE-TOKEN")
    assert status == 401
    status, _, _ = await call(http, "GET", info["url"])
    assert status == 401
    status, _, _ = await call(http, "GET", info["url"], token="PAGE-TOKEN")
    assert status == 401
    async with http.get(info["url"], headers={"Authorization": "Bearer WA-TOKEN"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/jpeg"
        assert await r.read() == data
    assert graph.media_downloads == [(media_id, False), (media_id, False), (media_id, True)]
    graph.media["VOICE1"] = ("audio/ogg; codecs=opus", b"OggS")
    async with http.get(f"{graph.base_url}/whatsapp-media/VOICE1",
                        headers={"Authorization": "Bearer WA-TOKEN"}) as r:
        assert r.headers["Content-Type"] == "audio/ogg; codecs=opus"


async def test_cdn_needs_no_token(graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    graph.cdn["photo.jpg"] = ("image/jpeg", b"jpeg bytes")
    assert graph.cdn_url("photo.jpg") == f"{graph.base_url}/cdn/photo.jpg"
    async with http.get(graph.cdn_url("photo.jpg")) as r:
        assert (r.status, await r.read()) == (200, b"jpeg bytes")
    url = graph.add_cdn(b"%PDF", "application/pdf")
    async with http.get(url) as r:
        assert r.headers["Content-Type"] == "application/pdf"
    async with http.get(graph.cdn_url("expired.jpg")) as r:
        assert r.status == 404


async def test_own_nodes(graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/PAGE1",
                                 token="PAGE-TOKEN", params={"fields": "name"})
    assert (status, body) == (200, {"name": "Example Support", "id": "PAGE1"})
    status, body, _ = await call(http, "GET", f"{graph.base_url}/v21.0/PHONE1",
                                 token="WA-TOKEN", params={"fields": "display_phone_number"})
    assert (status, body) == (200, {"display_phone_number": "15550001111", "id": "PHONE1"})


async def test_start_and_stop_without_async_with(http: aiohttp.ClientSession) -> None:
    graph = FakeGraph(page_token="P2", whatsapp_token="W2", version="v19.0", page_id="PAGE2")
    await graph.start()
    try:
        assert graph.port > 0 and graph.base_url == f"http://127.0.0.1:{graph.port}"
        status, body, _ = await call(http, "POST", f"{graph.base_url}/v19.0/PAGE2/messages",
                                     token="P2", body=MESSENGER_SEND)
        assert (status, body["message_id"]) == (200, "m_1")
    finally:
        await graph.stop()
    await graph.stop()  # twice is harmless


# -- signatures and delivery --------------------------------------------------------------------


def test_sign_matches_hmac_sha256() -> None:
    # RFC 4231, test case 2
    assert sign("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    body = meta_json(page_payload("PAGE1", messenger_event("PSID1", text="h\u00e9llo")))
    expected = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(APP_SECRET, body) == "sha256=" + expected


def test_meta_json_escapes_like_meta() -> None:
    body = meta_json({"text": "äöå ❤", "url": "https://cdn.example/a"})
    assert body == (b'{"text":"\\u00e4\\u00f6\\u00e5 \\u2764",'
                    b'"url":"https:\\/\\/cdn.example\\/a"}')
    assert json.loads(body) == {"text": "äöå ❤", "url": "https://cdn.example/a"}


async def test_post_webhook_signs_the_bytes_it_sends(http: aiohttp.ClientSession) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            if request.query.get("hub.verify_token") != "VERIFY":
                return web.Response(status=403)
            return web.Response(text=request.query["hub.challenge"])
        received.append((await request.read(), dict(request.headers)))
        return web.Response(text="EVENT_RECEIVED")

    app = web.Application()
    app.router.add_route("*", "/webhooks/meta", handler)
    runner, port = await serve(app, shutdown_timeout=0.1)
    try:
        url = f"http://127.0.0.1:{port}/webhooks/meta"
        payload = page_payload("PAGE1", messenger_event("PSID1", text="Grüße"))
        assert await post_webhook(http, url, payload, "s3cret") == (200, "EVENT_RECEIVED")
        assert await post_webhook(http, url, payload, "s3cret", signature="sha256=00") == (
            200, "EVENT_RECEIVED")
        assert await verify_webhook(http, url, "VERIFY", challenge="42") == (200, "42")
        assert (await verify_webhook(http, url, "WRONG"))[0] == 403
    finally:
        await runner.cleanup()
    (body, headers), (_, forged) = received
    assert headers["X-Hub-Signature-256"] == sign("s3cret", body)
    assert headers["X-Hub-Signature"] == "sha1=" + hmac.new(b"s3cret", body,
                                                            hashlib.sha1).hexdigest()
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == payload and b"\\u00fc" in body
    assert forged["X-Hub-Signature-256"] == "sha256=00" and "X-Hub-Signature" not in forged


# -- webhook builders ---------------------------------------------------------------------------


def test_messenger_events() -> None:
    text = messenger_event("PSID1", text="hello", mid="m_abc", timestamp=1458692752478)
    assert text == {"sender": {"id": "PSID1"}, "recipient": {"id": "PAGE1"},
                    "timestamp": 1458692752478, "message": {"mid": "m_abc", "text": "hello"}}
    photo = messenger_event("PSID1", attachments=[("image", "https://cdn/x.jpg")])
    assert photo["message"]["attachments"] == [{"type": "image",
                                                "payload": {"url": "https://cdn/x.jpg"}}]
    quick = messenger_event("PSID1", text="Yes", quick_reply="YES")
    assert quick["message"]["quick_reply"] == {"payload": "YES"}
    postback = messenger_event("PSID1", postback=("Get Started", "GET_STARTED"))
    assert set(postback["postback"]) == {"title", "payload", "mid"}
    assert "message" not in postback
    echo = messenger_event("PSID1", text="from the page", echo=True)
    assert echo["sender"] == {"id": "PAGE1"} and echo["recipient"] == {"id": "PSID1"}
    assert echo["message"]["is_echo"] is True and echo["message"]["app_id"] == APP_ID
    reaction = messenger_event("PSID1", react_to="m_1")
    assert reaction["reaction"] == {"mid": "m_1", "action": "react", "reaction": "love",
                                    "emoji": "\u2764\ufe0f"}
    unreact = messenger_event("PSID1", react_to="m_1", action="unreact")
    assert unreact["reaction"] == {"mid": "m_1", "action": "unreact"}
    read = messenger_event("PSID1", read=1458668856253)
    assert read["read"] == {"watermark": 1458668856253} and "timestamp" in read
    delivery = messenger_event("PSID1", delivered=["m_1"], watermark=1458668856253)
    assert delivery["delivery"] == {"mids": ["m_1"], "watermark": 1458668856253}
    assert "timestamp" not in delivery  # as in Meta's message_deliveries example
    with pytest.raises(ValueError):
        messenger_event("PSID1", text="both", postback=("a", "b"))
    with pytest.raises(ValueError):
        messenger_event("PSID1")


def test_instagram_events() -> None:
    mention = instagram_event("IGSID1", story_mention="https://cdn/story.mp4")
    assert mention["recipient"] == {"id": "IG1"}
    assert mention["message"]["attachments"] == [{"type": "story_mention",
                                                  "payload": {"url": "https://cdn/story.mp4"}}]
    reply = instagram_event("IGSID1", text="love it", story_reply=("https://cdn/s.jpg", "S1"))
    assert reply["message"]["reply_to"] == {"story": {"url": "https://cdn/s.jpg", "id": "S1"}}
    assert reply["message"]["text"] == "love it"
    echo = instagram_event("IGSID1", text="thanks", echo=True)
    assert echo["sender"] == {"id": "IG1"} and "app_id" not in echo["message"]
    seen = instagram_event("IGSID1", read="m_9")
    assert seen["read"] == {"mid": "m_9"}


def test_page_and_instagram_payloads() -> None:
    first = messenger_event("PSID1", text="one")
    second = messenger_event("PSID2", text="two")
    payload = page_payload("PAGE1", [first, second], messenger_event("PSID3", text="three"))
    assert payload["object"] == "page"
    assert [e["id"] for e in payload["entry"]] == ["PAGE1", "PAGE1"]
    assert [len(e["messaging"]) for e in payload["entry"]] == [2, 1]
    assert all(isinstance(e["time"], int) for e in payload["entry"])
    ig = instagram_payload("IG1", instagram_event("IGSID1", text="hi"))
    assert ig["object"] == "instagram" and ig["entry"][0]["id"] == "IG1"


def test_whatsapp_payload_and_messages() -> None:
    text = wa_text("16315551234", "wamid.in1", "Hi", timestamp=1504902988)
    assert text == {"from": "16315551234", "id": "wamid.in1", "timestamp": "1504902988",
                    "type": "text", "text": {"body": "Hi"}}
    payload = whatsapp_payload("PHONE1", "15550001111", messages=[text],
                               contacts=[("16315551234", "Ada Lovelace")])
    assert payload == {"object": "whatsapp_business_account", "entry": [{
        "id": "WABA1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PHONE1"},
            "contacts": [{"profile": {"name": "Ada Lovelace"}, "wa_id": "16315551234"}],
            "messages": [text]}}]}]}
    derived = whatsapp_payload(messages=[text])["entry"][0]["changes"][0]["value"]
    assert derived["contacts"][0]["wa_id"] == "16315551234"

    doc = wa_media("1555", "w2", "MEDIA1", "application/pdf", kind="document",
                   filename="invoice.pdf", caption="my invoice")
    assert doc["type"] == "document"
    assert doc["document"]["filename"] == "invoice.pdf" and doc["document"]["id"] == "MEDIA1"
    voice = wa_media("1555", "w3", "MEDIA2", "audio/ogg; codecs=opus", kind="audio", voice=True)
    assert voice["audio"]["voice"] is True and "caption" not in voice["audio"]
    with pytest.raises(ValueError):
        wa_media("1555", "w4", "M", "x/y", kind="hologram")
    where = wa_location("1555", "w5", 52.52, 13.40, name="Office", address="Main St 1")
    assert where["location"] == {"latitude": 52.52, "longitude": 13.40, "name": "Office",
                                 "address": "Main St 1"}
    card = wa_contacts("1555", "w6", ("Grace Hopper", "+1 555 0100"))
    assert card["contacts"][0]["phones"][0]["wa_id"] == "15550100"
    assert card["contacts"][0]["name"]["formatted_name"] == "Grace Hopper"
    button = wa_button_reply("1555", "w7", "yes", "Yes", context_id="wamid.1")
    assert button["interactive"] == {"type": "button_reply",
                                     "button_reply": {"id": "yes", "title": "Yes"}}
    assert button["context"] == {"from": "15550001111", "id": "wamid.1"}
    row = wa_list_reply("1555", "w8", "billing", "Billing", "Invoices and payments")
    assert row["interactive"]["list_reply"] == {"id": "billing", "title": "Billing",
                                                "description": "Invoices and payments"}

    error = wa_error(131047, "Re-engagement message", "more than 24 hours")
    failed = wa_status("wamid.1", "failed", "1555", [error], timestamp=1700000000)
    assert failed == {"id": "wamid.1", "status": "failed", "timestamp": "1700000000",
                      "recipient_id": "1555",
                      "errors": [{"code": 131047, "title": "Re-engagement message",
                                  "message": "Re-engagement message",
                                  "error_data": {"details": "more than 24 hours"},
                                  "href": error["href"]}]}
    statuses = whatsapp_payload(statuses=[failed])["entry"][0]["changes"][0]["value"]
    assert "messages" not in statuses and "contacts" not in statuses
    assert statuses["statuses"] == [failed]
