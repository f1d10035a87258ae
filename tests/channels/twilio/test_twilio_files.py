"""Files staff send by SMS (MMS) and WhatsApp through Twilio: ``frontdesk reply --attach`` queues
them, the daemon hands Twilio a signed link (MediaUrl) on ``http.public_url``, and the link
serves the stored bytes until it expires; a forged or expired link gets nothing. Twilio's limits
(MMS 5 MB in all, WhatsApp's media types) are checked before anything is sent."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from frontdesk.storage.clock import utcnow
from tests.channels.twilio.test_twilio import fake as fake
from tests.channels.twilio.test_twilio import start, text_in
from tests.fakes.twilio import PUBLIC_URL, FakeTwilio
from tests.support.helpers import cli_config, detail, eventually, run_cli

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


async def _sent(fake: FakeTwilio, n: int = 1) -> list[dict[str, str]]:
    return fake.messages if len(fake.messages) >= n else []


async def _get(d: Any, url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Fetch a link as Twilio would: ``http.public_url`` is the daemon, behind a proxy."""
    assert url.startswith(PUBLIC_URL + "/files/"), url
    parts = urlsplit(url)
    async with aiohttp.ClientSession() as session, session.request(
            method, f"http://127.0.0.1:{d.http.port}{parts.path}") as r:
        return r.status, dict(r.headers), await r.read()


async def _reply(d: Any, status: str) -> dict[str, Any] | None:
    shown = await detail(d.store, 1)
    return next((m for m in shown["messages"] if m["direction"] == "out"
                 and m["delivery_status"] == status), None)


async def test_reply_attach_sends_a_media_url_frontdesk_serves_until_it_expires(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        fake: FakeTwilio, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    await text_in(fake, d, "Can you send me a return label?")
    label = tmp_path / "label.pdf"
    label.write_bytes(PDF)
    config = cli_config(d, tmp_path)
    code, out, err = await run_cli(capsys, "reply", "FD-1", "Here", "--attach",
                                   str(tmp_path / "missing.pdf"), "-c", config)
    assert (code, out) == (1, "")
    assert err.strip().endswith(f"--attach {tmp_path / 'missing.pdf'}: No such file or directory")
    code, out, err = await run_cli(capsys, "reply", "FD-1", "Here is your label.", "--attach",
                                   str(label), "-c", config)
    assert (code, err) == (0, "")
    clock.now = utcnow() + timedelta(seconds=1)  # the command line queued it on the real clock
    d.outbox.kick()
    assert out.startswith("queued reply #2 to +15557654321 on FD-1 with 1 file(s)")
    [sent] = await eventually(lambda: _sent(fake))
    assert sent["Body"] == "Here is your label." and sent["To"] == "+15557654321"
    [url] = fake.media_urls[sent["Sid"]]

    status, headers, body = await _get(d, url)
    assert (status, body) == (200, PDF)
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].startswith('inline; filename="label.pdf"')
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = await _get(d, url, "HEAD")  # Twilio checks the type with HEAD first
    assert (status, headers["Content-Type"]) == (200, "application/pdf")

    shown = await eventually(lambda: _reply(d, "sent"))
    assert shown["attachments"] == [{"filename": "label.pdf", "content_type": "application/pdf",
                                     "size": len(PDF),
                                     "sha256": hashlib.sha256(PDF).hexdigest()}]
    code, out, _ = await run_cli(capsys, "show", "FD-1", "-c", config)
    assert f"attachment: label.pdf (application/pdf, {len(PDF)} bytes)" in out

    # a link someone changed, or made up, is not one of ours: 404, nothing said of the file
    token = urlsplit(url).path.removeprefix("/files/")
    number, expires, sha256, signature = token.split(".")
    forged = [f"{number}.{int(expires) + 3600}.{sha256}.{signature}",
              f"{number}.{expires}.{'0' * 64}.{signature}",
              f"{int(number) + 1}.{expires}.{sha256}.{signature}",
              f"{number}.{expires}.{sha256}.{signature[:-2]}AA", "nonsense"]
    for bad in forged:
        status, _, body = await _get(d, f"{PUBLIC_URL}/files/{bad}")
        assert (status, body) == (404, b"no such file\n"), bad
    # a good link past its lifetime: 410
    clock.advance(hours=4, seconds=1)
    status, _, body = await _get(d, url)
    assert (status, body) == (410, b"this link has expired\n")


async def test_a_file_too_big_for_mms_fails_the_reply_with_the_reason(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Please send the manual")
    manual = tmp_path / "manual.pdf"
    manual.write_bytes(PDF * 520)  # 5.1 MB
    config = cli_config(d, tmp_path)
    code, _, _ = await run_cli(capsys, "reply", "FD-1", "The manual", "--attach", str(manual),
                               "-c", config)
    assert code == 0
    clock.now = utcnow() + timedelta(seconds=1)  # the command line queued it on the real clock
    d.outbox.kick()
    shown = await eventually(lambda: _reply(d, "failed"))
    assert shown["failure_reason"] == ("manual.pdf (5.1 MB) cannot go by MMS: it takes at most "
                                       "5 MB in all")
    assert fake.messages == []  # nothing half-sent: not even the text
    code, out, _ = await run_cli(capsys, "show", "FD-1", "-c", config)
    assert "   failed: manual.pdf (5.1 MB) cannot go by MMS: it takes at most 5 MB in all" \
        in out


async def test_whatsapp_sends_each_file_in_a_message_of_its_own_and_refuses_other_types(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    from frontdesk.domain.conversations import add_staff_reply, get_conversation
    from frontdesk.domain.files import store_files
    from frontdesk.domain.messages import Attachment

    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hello", sender="whatsapp:+15557654321")
    files = store_files([Attachment("label.pdf", "", PDF),
                         Attachment("box.png", "image/png", b"\x89PNG\r\n\x1a\n" * 10)],
                        d.attachments)
    async with d.store.session() as s:
        c = await get_conversation(s, 1)
        await add_staff_reply(s, c, "Two files", author="Grace", replies=d.replies,
                              now=clock(), files=files)
    d.outbox.kick()
    sent = await eventually(lambda: _sent(fake, 3))
    assert [(m.get("Body", ""), len(fake.media_urls[m["Sid"]])) for m in sent] \
        == [("Two files", 0), ("", 1), ("", 1)]
    assert all(m["From"] == "whatsapp:+15550001111" for m in sent)

    setup = store_files([Attachment("setup.exe", "application/x-msdownload", b"MZ" * 50)],
                        d.attachments)
    async with d.store.session() as s:
        c = await get_conversation(s, 1)
        await add_staff_reply(s, c, "The installer", author="Grace", replies=d.replies,
                              now=clock(), files=setup)
    d.outbox.kick()
    shown = await eventually(lambda: _reply(d, "failed"))
    assert shown["failure_reason"].startswith(
        "setup.exe cannot go by WhatsApp: it takes JPEG and PNG images, audio (OGG, AMR, MP3, "
        "AAC), MP4 video, PDF, Word, Excel and PowerPoint documents and vCards, not "
        "application/x-msdownload")
    assert len(fake.messages) == 3
    assert json.dumps(shown)  # the reason is plain text


async def test_a_file_alone_goes_as_mms_without_text(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Can you send me a return label?")
    label = tmp_path / "label.pdf"
    label.write_bytes(PDF)
    config = cli_config(d, tmp_path)
    code, out, err = await run_cli(capsys, "reply", "FD-1", "--attach", str(label), "-c", config)
    assert out.startswith("queued reply #2 to +15557654321 on FD-1 with 1 file(s)"), out
    assert (code, err) == (0, ""), err
    clock.now = utcnow() + timedelta(seconds=1)
    d.outbox.kick()
    [sent] = await eventually(lambda: _sent(fake))
    assert sent.get("Body", "") == "" and len(fake.media_urls[sent["Sid"]]) == 1
    code, _, err = await run_cli(capsys, "reply", "FD-1", "-c", config)
    assert code == 1 and "the reply is empty" in err
