"""Hostile Twilio webhooks against a running daemon (issue 14): counts taken from a request are
bounded (one NumMedia=999999999 must not hang the loop, at once or at the next start), and MMS
media are fetched only from Twilio's media hosts, never from the daemon itself or a private
address, redirects included, with Twilio's credentials sent to Twilio alone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from frontdesk.channels.twilio.parse import media_items, parse_twilio
from frontdesk.storage.db import Store
from frontdesk.storage.models import Attachment, Event, InboundJournal, Outbox
from tests.channels.twilio.test_twilio import EMPTY_TWIML, OURS, start, twilio_settings
from tests.fakes.media import FakeMediaHost
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, sid
from tests.support.helpers import conversations, detail, eventually, processed

HUGE = "999999999"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def _finishes_within(seconds: float, work: Callable[[], Any]) -> bool:
    """Run ``work`` in a daemon thread: False when it is still running after ``seconds`` (a
    hang then costs this test ``seconds``, not the whole run: the thread is abandoned)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def _huge_form(fake: FakeTwilio, media: list[tuple[str, str]], **extra: str) -> dict[str, str]:
    form = fake.inbound("Look at this", media=media)
    form["NumMedia"] = HUGE
    form.update(extra)
    return form


def _parse_is_bounded() -> None:
    """Guard: the parser and the media job's item list return at once for NumMedia=999999999;
    when they do not, the end-to-end tests below would hold the event loop for minutes."""
    raw = urlencode({"MessageSid": "MM1", "From": "+15557654321", "To": OURS, "Body": "hi",
                     "NumMedia": HUGE, "MediaUrl0": "https://api.twilio.com/m/0"}).encode()
    assert _finishes_within(1.0, lambda: parse_twilio(raw, {"kind": "message"})), \
        "parsing a form with NumMedia=999999999 does not finish within a second"
    assert _finishes_within(1.0, lambda: media_items({"MessageSid": "MM1", "NumMedia": HUGE})), \
        "listing the media of a message with NumMedia=999999999 does not finish within a second"


def test_a_huge_media_count_is_bounded_to_what_twilio_sends() -> None:
    _parse_is_bounded()
    form = {"MessageSid": "MM1", "From": "+15557654321", "To": OURS, "Body": "",
            "NumMedia": HUGE}
    for i in range(15):
        form[f"MediaUrl{i}"] = f"https://api.twilio.com/m/{i}"
        form[f"MediaContentType{i}"] = "image/jpeg"
    message = parse_twilio(urlencode(form).encode(), {"kind": "message"})
    assert sorted(k for k in message.headers if k.startswith("MediaUrl")) == \
        sorted(f"MediaUrl{i}" for i in range(10))  # Twilio sends at most 10
    assert [i["url"] for i in media_items(message.headers)] == \
        [f"https://api.twilio.com/m/{i}" for i in range(10)]
    for junk in ("-5", "1e9", "", "abc", "x" * 5000):
        assert media_items({**message.headers, "NumMedia": junk}) == [], junk
    assert len(media_items({**message.headers, "NumMedia": "9" * 5000})) == 10


async def _healthz(port: int) -> float:
    """How long /healthz takes to answer (it must answer 200 each time): the fastest of three
    tries, one after the other. A loop held up by a hostile message is slow for all three; one
    try alone can meet a pause of the test process itself (0.8 s once, late in a full run,
    where the same check took milliseconds run alone)."""
    took = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            began = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/healthz",
                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
                assert r.status == 200
            took.append(time.monotonic() - began)
    return min(took)


async def test_num_media_999999999_is_answered_at_once_and_health_keeps_answering(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    _parse_is_bounded()
    d = await start(make_settings, daemon_factory, clock, fake)
    message_sid = sid("MM")
    photo = b"\xff\xd8\xff\xe0 a real photo " * 20
    url = fake.add_media(photo, "image/jpeg", message_sid)
    form = _huge_form(fake, [(url, "image/jpeg")], MessageSid=message_sid, SmsSid=message_sid,
                      SmsMessageSid=message_sid)
    began = time.monotonic()
    assert await fake.post("/webhooks/twilio/sms", form) == (200, EMPTY_TWIML)
    assert time.monotonic() - began < 1.0
    for _ in range(5):
        assert await _healthz(d.http.port) < 0.5
        await asyncio.sleep(0.05)
    await eventually(lambda: processed(d.store), timeout=3)
    [conv] = await conversations(d.store)

    async def attached() -> list[dict[str, Any]]:
        return list((await detail(d.store, conv.id))["messages"][0]["attachments"])

    [stored] = await eventually(attached, timeout=5)  # the one real file, fetched as usual
    assert stored["size"] == len(photo)
    assert await _healthz(d.http.port) < 0.5


async def test_a_pending_journal_row_with_num_media_999999999_is_processed_at_start(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    """The restart loop of the issue: the row is still pending after a kill -9, and the next
    start must process it quickly instead of hanging again."""
    _parse_is_bounded()
    settings = twilio_settings(make_settings, fake)
    store = Store(settings.database.url)
    await store.ensure_schema()
    form = _huge_form(fake, [("https://api.twilio.com/2010-04-01/x", "image/jpeg")])
    async with store.session() as s:
        s.add(InboundJournal(channel="sms", remote_id=form["MessageSid"],
                             raw=urlencode(form).encode(), meta={"kind": "message"},
                             state="pending"))
    await store.dispose()

    began = time.monotonic()
    d = await daemon_factory(settings, clock=clock)
    fake.daemon_port = d.http.port
    started = time.monotonic()
    await eventually(lambda: processed(d.store), timeout=3, interval=0.01)
    assert time.monotonic() - started < 1.0  # the row, once the daemon runs (not a hang)
    assert time.monotonic() - began < 2.0  # the start itself is not held up either
    async with d.store.reader() as s:
        row = (await s.execute(select(InboundJournal))).scalars().one()
    assert row.state == "done"
    assert await _healthz(d.http.port) < 0.5


async def test_a_form_with_more_fields_than_twilio_ever_sends_is_refused_unread(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio,
        caplog: pytest.LogCaptureFixture) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    body = b"a=&" * 300_000  # 900 KB of empty fields: sorting them for the signature is slow
    caplog.clear()
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{d.http.port}/webhooks/twilio/sms", data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}) as r:
        assert r.status == 413
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and len(lines[0]) < 300, lines


# -- media hosts (SSRF) ---------------------------------------------------------------------------


class Site(FakeMediaHost):
    """A host (Twilio, a CDN, an internal one) as the fake media host, its requests recorded as
    (path, whether it carried an Authorization): all these tests ask of them."""

    def record(self, request: web.Request) -> tuple[str, bool]:
        return request.path, "Authorization" in request.headers


async def _media_job(d: Any) -> Outbox:
    async def failed() -> Outbox | None:
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox).where(Outbox.kind == "twilio_media"))
                   ).scalars().first()
        return row if row is not None and row.state in ("failed", "done") else None
    return await eventually(failed, timeout=8)


async def _attachments(d: Any) -> list[Attachment]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Attachment))).scalars())


async def test_a_media_url_at_the_daemon_itself_or_another_local_port_is_not_fetched(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    async with Site() as other:
        d = await start(make_settings, daemon_factory, clock, fake)
        message_sid = sid("MM")
        good = fake.add_media(b"GIF89a a real picture", "image/gif", message_sid)
        secret = other.file("/internal/secret", b"internal secret")
        media = [(f"http://127.0.0.1:{d.http.port}/metrics", "text/plain"),
                 (f"http://localhost:{d.http.port}/metrics", "text/plain"),
                 (secret, "image/jpeg"),  # same address as Twilio's api_base_url, another port
                 (good, "image/gif")]
        form = fake.inbound("see attached", message_sid=message_sid, media=media)
        assert await fake.post("/webhooks/twilio/sms", form) == (200, EMPTY_TWIML)
        await eventually(lambda: processed(d.store))
        job = await _media_job(d)
        assert other.requests == []  # nothing went there, and so no credentials either
        [stored] = await _attachments(d)
        assert stored.content_type == "image/gif"  # the Twilio-hosted file still came in
        assert job.state == "failed" and job.attempts == 1  # not retried forever
        reason = job.last_error or ""
        assert "3 of 4 file(s)" in reason and "twilio.media_hosts" in reason, reason
        async with d.store.reader() as s:
            event = (await s.execute(select(Event).where(Event.kind == "delivery_failed"))
                     ).scalars().one()
        assert event.data["reason"] == reason


async def test_redirects_are_followed_only_to_media_hosts_and_credentials_stay_with_twilio(
        make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    async with Site() as twilio, Site() as cdn, Site() as inside:
        base = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM1/Media"
        photo = b"\xff\xd8\xff a photo served by the CDN"
        cdn.file("/cdn/photo", photo)
        inside.file("/admin", b"internal admin page")
        followed = twilio.redirect(f"{base}/ME1", f"http://localhost:{cdn.port}/cdn/photo")
        off_host = twilio.redirect(f"{base}/ME2", f"http://127.0.0.1:{inside.port}/admin")
        loop = twilio.redirect(f"{base}/ME3", f"{base}/ME3")
        settings = make_settings(
            http={"public_url": "https://support.example.com"},
            twilio={"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                    "sms_from": OURS, "api_base_url": f"http://127.0.0.1:{twilio.port}",
                    "media_hosts": [f"localhost:{cdn.port}"]})
        d = await daemon_factory(settings, clock=clock)
        fake = FakeTwilio()
        fake.daemon_port = d.http.port
        form = fake.inbound("three pictures", message_sid="MM1",
                            media=[(followed, "image/jpeg"), (off_host, "image/jpeg"),
                                   (loop, "image/jpeg")])
        assert await fake.post("/webhooks/twilio/sms", form) == (200, EMPTY_TWIML)
        await eventually(lambda: processed(d.store))
        job = await _media_job(d)
        [stored] = await _attachments(d)
        assert stored.size == len(photo)
        assert inside.requests == []  # the redirect off the media hosts was not followed
        assert cdn.requests == [("/cdn/photo", False)]  # no Twilio credentials to the CDN
        assert all(auth for _path, auth in twilio.requests)  # Twilio's own host gets them
        assert len([p for p, _ in twilio.requests if p.endswith("/ME3")]) <= 6  # a few hops
        reason = job.last_error or ""
        assert job.state == "failed" and "2 of 3 file(s)" in reason, reason
        assert "redirect" in reason.lower()
