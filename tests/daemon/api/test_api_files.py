"""Files through the REST API: ``POST /api/v1/conversations/{ref}/replies`` with
``attachments`` (base64) sends them on the customer's channel (here: an email attachment, to a
real SMTP sink), lists them on the queued message, and refuses what is no file (422); the
OpenAPI document declares them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.daemon.api.test_api import Api, _conversation, _token
from tests.daemon.api.test_api import http as http
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import eventually

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


@pytest.fixture
async def api(make_settings: Callable[..., Any], daemon_factory: Any, database_url: str,
              http: aiohttp.ClientSession, sink: SmtpSink) -> Api:
    d = await daemon_factory(make_settings(database_url=database_url,
                                           api={"enabled": True, "rate_limit": "1000/1m"},
                                           email={"outbound": {"port": sink.port}}))
    return Api(http, d, await _token(d, "shop", "write"))


async def test_a_reply_with_attachments_goes_out_as_an_email_attachment(
        api: Api, sink: SmtpSink) -> None:
    ref = await _conversation(api)
    status, body, _ = await api.call("POST", f"/api/v1/conversations/{ref}/replies", json={
        "text": "Your invoice is attached.", "author": "Grace",
        "attachments": [{"filename": "invoice-1843.pdf", "content_type": "application/pdf",
                         "content_base64": base64.b64encode(PDF).decode()}]})
    assert status == 202, body
    assert body["attachments"] == [{"filename": "invoice-1843.pdf",
                                    "content_type": "application/pdf", "size": len(PDF),
                                    "sha256": hashlib.sha256(PDF).hexdigest()}]
    await eventually(lambda: _sent(sink))
    [part] = list(sink.parsed(0).iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("invoice-1843.pdf", PDF)


async def test_what_is_no_file_is_refused(api: Api) -> None:
    ref = await _conversation(api)
    path = f"/api/v1/conversations/{ref}/replies"
    status, body, _ = await api.call("POST", path, json={
        "text": "x", "author": "Grace",
        "attachments": [{"filename": "a.pdf", "content_base64": "not base64!"}]})
    assert (status, body["error"]) == (422, "attachments[0].content_base64 is not base64")
    status, body, _ = await api.call("POST", path, json={
        "text": "x", "author": "Grace", "attachments": [{"filename": "a.pdf"}]})
    assert status == 422
    status, body, _ = await api.call("POST", path, json={
        "text": "x", "author": "Grace",
        "attachments": [{"filename": "empty.txt", "content_base64": ""}]})
    assert status == 422


async def test_the_openapi_document_declares_the_attachments(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/api/openapi.json", token="")
    assert status == 200
    schemas = doc["components"]["schemas"]
    reply = schemas["ReplyIn"]["properties"]["attachments"]
    assert reply["type"] == "array" and reply["maxItems"] == 10
    assert set(schemas["FileIn"]["required"]) == {"filename", "content_base64"}


async def _sent(sink: SmtpSink) -> bool:
    return bool(sink.messages)


async def test_a_file_alone_is_a_reply_and_nothing_at_all_is_refused(
        api: Api, sink: SmtpSink) -> None:
    ref = await _conversation(api)
    path = f"/api/v1/conversations/{ref}/replies"
    status, body, _ = await api.call("POST", path, json={
        "author": "Grace", "attachments": [{"filename": "return-label.pdf",
                                            "content_base64": base64.b64encode(PDF).decode()}]})
    assert status == 202, body
    assert (body["text"], body["attachments"][0]["content_type"]) == ("", "application/pdf")
    await eventually(lambda: _sent(sink))
    [part] = list(sink.parsed(0).iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("return-label.pdf", PDF)
    status, body, _ = await api.call("POST", path, json={"text": "  ", "author": "Grace"})
    assert status == 422 and "text or attachments" in str(body), body
    assert len(sink.messages) == 1
