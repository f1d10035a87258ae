"""The hosted contact form: statuses and shapes exactly as CONTRACT.md says, the sender is the
email contact of the address given, acknowledgements and replies go by email."""

from __future__ import annotations

from typing import Any

import aiohttp
from sqlalchemy import select

from frontdesk.storage.models import Attachment, Identity, InboundJournal, Message
from tests.channels.web.conftest import base_of
from tests.channels.web.test_web_chat import PNG, staff_reply
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, send

JSON = {"Accept": "application/json"}


def form(**fields: str) -> dict[str, str]:
    return {"name": "Ada Lovelace", "email": "ada@example.org", "subject": "Broken hinge",
            "message": "The hinge of my cabinet broke after a week.", **fields}


async def test_a_submission_answers_its_reference_and_is_the_email_contact(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession,
        sink: SmtpSink) -> None:
    d = await daemon_factory(web_settings(scheduler={"enabled": True, "interval": "1s"},
                                          acknowledgement={"delay": "0s"}))
    await send(d.email.smtp.port, mail(subject="Order 9", body="an earlier mail"))
    await eventually(lambda: _count(d, 1))
    async with http.post(f"{base_of(d)}/web/contact", data=form(), headers=JSON) as r:
        assert r.status == 201
        body = await r.json()
    reference = body["reference"]
    assert reference.startswith("FD-") and reference != "FD-1"
    shown = await detail(d.store, reference)
    assert shown["channel"] == "form" and shown["subject"] == "Broken hinge"
    async with d.store.reader() as s:
        identities = (await s.execute(select(Identity))).scalars().all()
    assert [(i.channel, i.address) for i in identities] == [("email", "ada@example.org")]
    assert len({c.contact_id for c in await conversations(d.store)}) == 1  # same contact

    async def acknowledged() -> Any:
        found = [sink.parsed(i) for i in range(len(sink.messages))
                 if reference in str(sink.parsed(i)["Subject"])]
        return found[0] if found else None

    ack = await eventually(acknowledged, timeout=15)
    text = ack.get_content()
    assert reference in text
    assert "Ada" not in text and "Broken hinge" not in str(ack["Subject"])  # unverified: neutral
    before = len(sink.messages)
    await staff_reply(d, reference, "We'll send a new hinge today.")

    async def replied() -> bool:
        return len(sink.messages) > before and any(
            "new hinge" in sink.parsed(i).get_content() for i in range(before,
                                                                      len(sink.messages)))

    await eventually(replied, timeout=10)
    last = sink.parsed(-1)
    assert sink.messages[-1][1] == ["ada@example.org"]
    assert reference in str(last["Subject"])
    # answered by mail: the same conversation
    answer = mail(subject=f"Re: {last['Subject']}", body="Thanks!", msgid="<m2@example.org>")
    answer["In-Reply-To"] = last["Message-ID"]
    await send(d.email.smtp.port, answer)

    async def joined() -> bool:
        shown = await detail(d.store, reference)
        return any(m["text"].startswith("Thanks!") for m in shown["messages"])

    await eventually(joined)


async def _count(d: Any, n: int) -> bool:
    return len(await conversations(d.store)) == n


async def test_the_browser_form_redirects_to_a_page_naming_the_reference(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    data = aiohttp.FormData()
    for key, value in form().items():
        data.add_field(key, value)
    data.add_field("attachment", PNG, filename="hinge.png", content_type="image/png")
    data.add_field("attachment", b"order 1234\n", filename="order.txt",
                   content_type="text/plain")
    async with http.post(f"{base_of(d)}/web/contact", data=data,
                         allow_redirects=False) as r:
        assert r.status == 303
        location = r.headers["Location"]
    assert location.startswith("/web/contact/sent?reference=FD-")
    async with http.get(f"{base_of(d)}{location}") as r:
        page = await r.text()
        assert r.status == 200 and location.split("=")[1] in page
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    async with d.store.reader() as s:
        names = (await s.execute(select(Attachment.filename).order_by(Attachment.id))
                 ).scalars().all()
    assert names == ["hinge.png", "order.txt"]


async def test_bad_fields_get_400_naming_them(web_settings: Any, daemon_factory: Any,
                                              http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    url = f"{base_of(d)}/web/contact"
    async with http.post(url, data=form(email="nope", message=""), headers=JSON) as r:
        assert r.status == 400
        errors = (await r.json())["errors"]
    assert set(errors) == {"email", "message"}
    async with http.post(url, data=form(email="")) as r:
        assert r.status == 400
        page = await r.text()
        assert r.content_type == "text/html"
        assert "Your email" in page and 'aria-invalid="true"' in page
        assert "The hinge of my cabinet" in page  # what they wrote is kept
    hostile = form(name='<script>alert("x")</script>', email="bad")
    async with http.post(url, data=hostile) as r:
        page = await r.text()
        assert "<script>alert" not in page and "&lt;script&gt;" in page
    data = aiohttp.FormData()
    for key, value in form().items():
        data.add_field(key, value)
    data.add_field("attachment", b"MZ\x90\x00binary", filename="tool.exe")
    async with http.post(url, data=data, headers=JSON) as r:
        assert r.status == 400 and "attachment" in (await r.json())["errors"]
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None


async def test_a_filled_honeypot_looks_like_success_and_stores_nothing(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    url = f"{base_of(d)}/web/contact"
    async with http.post(url, data=form(website="http://spam.example"), headers=JSON) as r:
        assert (r.status, await r.json()) == (201, {"reference": None})
    async with http.post(url, data=form(website="x"), allow_redirects=False) as r:
        assert r.status == 303
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None


async def test_oversized_and_too_frequent_submissions_are_refused(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings(web={"max_upload_bytes": 2048,
                                               "form_rate_limits": ["2/10m"]}))
    url = f"{base_of(d)}/web/contact"
    data = aiohttp.FormData()
    for key, value in form().items():
        data.add_field(key, value)
    data.add_field("attachment", PNG + b"\x00" * 4096, filename="big.png")
    async with http.post(url, data=data, headers=JSON) as r:
        assert r.status == 413
    statuses = []
    for n in range(3):
        async with http.post(url, data=form(message=f"message {n}"), headers=JSON) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) > 0
    assert statuses == [201, 201, 429]


async def test_the_form_page_works_without_javascript_and_refuses_other_origins(
        web_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    async with http.get(f"{base_of(d)}/web/contact") as r:
        page = await r.text()
        assert r.status == 200 and "Example Shop" in page
        assert "<script" not in page
        for name in ("name", "email", "subject", "message", "attachment", "website"):
            assert f'name="{name}"' in page
        assert 'for="email"' in page  # labelled fields
        policy = r.headers["Content-Security-Policy"]
        assert "script-src" not in policy and "form-action 'self'" in policy
    async with http.post(f"{base_of(d)}/web/contact", data=form(),
                         headers={**JSON, "Origin": "https://evil.example"}) as r:
        assert r.status == 403
    async with http.post(f"{base_of(d)}/web/contact", data=form(),
                         headers={**JSON, "Origin": base_of(d)}) as r:
        assert r.status == 201  # the daemon's own page


async def test_the_widget_and_demo_are_served(web_settings: Any, daemon_factory: Any,
                                              http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(web_settings())
    async with http.get(f"{base_of(d)}/web/widget.js") as r:
        assert r.status == 200 and r.content_type == "text/javascript"
        script = await r.text()
        etag = r.headers["ETag"]
    assert 'attachShadow({ mode: "open" })' in script or "attachShadow({mode:" in script \
        or "attachShadow" in script
    async with http.get(f"{base_of(d)}/web/widget.js", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    async with http.get(f"{base_of(d)}/web/demo") as r:
        page = await r.text()
        assert '<script src="/web/widget.js" async></script>' in page
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in r.headers["Content-Security-Policy"]


async def test_a_disabled_website_channel_says_so_and_serves_nothing(
        make_settings: Any, daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(make_settings())
    assert any("web.enabled is false" in line for line in d.disabled)
    async with http.get(f"{base_of(d)}/web/contact") as r:
        assert r.status == 404


def test_bad_web_settings_are_refused(make_settings: Any) -> None:
    import pytest
    from pydantic import ValidationError

    for bad in ({"allowed_origins": ["www.example.com"]},
                {"allowed_origins": ["https://example.com/shop"]},
                {"ask_email": "sometimes"}, {"max_upload_bytes": 10},
                {"form_rate_limits": ["often"]}):
        with pytest.raises(ValidationError):
            make_settings(web={"enabled": True, **bad})
    ok = make_settings(web={"allowed_origins": ["https://WWW.Example.com:443/"]})
    assert ok.web.allowed_origins == ["https://www.example.com"]


async def test_a_web_message_row_parses_again_from_the_journal() -> None:
    from frontdesk.channels.web.parse import form_row, parse, web_row

    key, raw = web_row(visitor="v-abc", client_id="client-0001", text="hi", email=None,
                       page="", language="fr", files=())
    message = parse(raw, {"remote_id": key})
    assert (message.channel, message.external_id, message.sender_address) == (
        "web", "v-abc:client-0001", "v-abc")
    key, raw = form_row(name="Ada", email="ada@example.org", subject="", message="hello",
                        page="", language="", files=())
    message = parse(raw, {"remote_id": key})
    assert message.identity_channel == "email" and message.standalone
    assert message.headers["X-Frontdesk-Sender-Check"] == "unverified"
    _ = Message  # the stored shape is checked end to end above
