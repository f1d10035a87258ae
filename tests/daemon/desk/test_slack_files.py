"""Files through the Slack desk, both ways: a file attached to a thread reply reaches the
customer (fetched from Slack's ``url_private_download`` with the bot token), and a customer's
files are uploaded into the conversation's thread with Slack's external upload flow
(files.getUploadURLExternal, the bytes, files.completeUploadExternal), once, those over
``slack.upload_max`` named instead. Real SMTP in and out, the real slack_sdk against the fake."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from typing import Any

from sqlalchemy import func, select

from frontdesk.domain.files import size_words
from frontdesk.storage.models import Attachment, Message, Outbox
from tests.daemon.desk.test_slack_desk import (
    SUPPORT,
    _thread,
    _thread_record,
    desk_settings,
    events_url,
    start,
)
from tests.daemon.desk.test_slack_desk import root_of as posted_root
from tests.fakes.slack import FakeSlack, thread_message
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import detail, eventually, mail, send

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)) * 8 + b"%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def mail_with(*files: tuple[str, str, bytes], **kw: Any) -> EmailMessage:
    m = mail(**kw)
    for name, kind, data in files:
        maintype, _, subtype = kind.partition("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m


async def root_of(slack: FakeSlack, d: Any | None = None) -> dict[str, Any]:
    """The conversation's root in Slack, once the daemon has recorded it (a thread reply before
    that would not find its conversation: Slack's people are never that quick)."""
    root = await posted_root(slack)
    if d is not None:
        await eventually(lambda: _thread_record(d, 1))
    return root


async def _sent(sink: SmtpSink, n: int = 1) -> bool:
    return len(sink.messages) >= n


async def _shared(slack: FakeSlack, n: int = 1) -> list[dict[str, Any]]:
    return slack.shared if len(slack.shared) >= n else []


async def _count(d: Any, model: Any, *where: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(model).where(*where)))
                   .scalar_one())


# -- staff to customer -----------------------------------------------------------------------------

async def test_a_thread_reply_with_a_pdf_reaches_the_customers_email_as_an_attachment(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack, sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack, d)
    label = slack.staff_file("return-label.pdf", PDF, "application/pdf")
    invoice = slack.staff_file("invoice.txt", b"Invoice 1234: 25.00 EUR\n", "text/plain",
                               only_id=True)  # Slack sends some files by id only: files.info
    status, _ = await slack.event(events_url(d), thread_message(
        SUPPORT, root["ts"], "Here is your return label.", subtype="file_share",
        files=[label, invoice], ts="1790000300.000001"))
    assert status == 200
    await eventually(lambda: _sent(sink))
    sent = sink.parsed(0)
    assert "Here is your return label." in sent.get_body(("plain",)).get_content()
    parts = {p.get_filename(): p for p in sent.iter_attachments()}
    assert set(parts) == {"return-label.pdf", "invoice.txt"}
    assert parts["return-label.pdf"].get_content_type() == "application/pdf"
    assert parts["return-label.pdf"].get_content() == PDF
    assert parts["invoice.txt"].get_content().strip() == "Invoice 1234: 25.00 EUR"
    # fetched from Slack with the bot token, the id-only file through files.info
    assert [authorised for _, authorised in slack.downloads] == [True, True]
    assert slack.called("files.info")
    reply = await eventually(lambda: _reply_with(d, "sent"))
    assert [(a["filename"], a["size"], a["sha256"]) for a in reply["attachments"]] == [
        ("return-label.pdf", len(PDF), hashlib.sha256(PDF).hexdigest()),
        ("invoice.txt", 24, hashlib.sha256(b"Invoice 1234: 25.00 EUR\n").hexdigest())]
    assert (d.attachments.path_for(hashlib.sha256(PDF).hexdigest())).read_bytes() == PDF


async def test_a_file_slack_does_not_hand_over_keeps_the_reply_and_says_why(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack, d)
    gone = {**slack.staff_file("label.pdf", PDF), "mode": "tombstone"}
    await slack.event(events_url(d), thread_message(
        SUPPORT, root["ts"], "Label attached", subtype="file_share", files=[gone],
        ts="1790000300.000002"))
    [warning] = await eventually(lambda: _thread(slack, root["ts"]))
    assert warning["text"].startswith(":warning: Not sent to the customer: Slack no longer "
                                      "shows label.pdf")
    assert sink.messages == []
    assert await _count(d, Message, Message.direction == "out") == 0


async def test_a_reply_too_large_for_the_relay_fails_with_the_reason_in_the_thread(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    settings = desk_settings(make_settings, slack, sink)
    settings.email.outbound.max_message_bytes = 4096  # what this relay takes
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack, d)
    await slack.event(events_url(d), thread_message(
        SUPPORT, root["ts"], "The manual", subtype="file_share",
        files=[slack.staff_file("manual.pdf", PDF * 2)], ts="1790000300.000003"))
    shown = await eventually(lambda: _failed_reply(d))
    assert f"manual.pdf ({size_words(len(PDF) * 2)})" in shown["failure_reason"]
    assert "email.outbound.max_message_bytes" in shown["failure_reason"]
    [line] = await eventually(lambda: _thread(slack, root["ts"]))
    assert line["text"].startswith(":warning: The reply by *Grace Hopper* could not be "
                                   "delivered to ada@example.org (Email): the email with its "
                                   "files (manual.pdf")
    assert sink.messages == []


async def _reply_with(d: Any, status: str) -> dict[str, Any] | None:
    shown = await detail(d.store, "FD-1")
    return next((m for m in shown["messages"] if m["direction"] == "out"
                 and m["delivery_status"] == status), None)


async def _failed_reply(d: Any) -> dict[str, Any] | None:
    return await _reply_with(d, "failed")


# -- customer to staff -----------------------------------------------------------------------------

async def test_a_customers_png_and_pdf_are_uploaded_into_the_thread(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail_with(("box.png", "image/png", PNG),
                                            ("receipt.pdf", "application/pdf", PDF)))
    root = await root_of(slack)
    [shared] = await eventually(lambda: _shared(slack))
    assert (shared["channel"], shared["thread_ts"]) == (SUPPORT, root["ts"])
    assert [(f["name"], f["data"]) for f in shared["files"]] == [("box.png", PNG),
                                                                 ("receipt.pdf", PDF)]
    # Slack's external upload flow: a URL per file, the bytes, one completion into the thread
    methods = [c.method for c in slack.calls if c.method.startswith("files.")]
    assert methods == ["files.getUploadURLExternal", "files.getUploadURLExternal",
                       "files.completeUploadExternal"]
    assert [c.args["length"] for c in slack.called("files.getUploadURLExternal")] == [
        str(len(PNG)), str(len(PDF))]
    assert slack.upload_posts == 2
    [upload] = [m for m in slack.thread(root["ts"]) if m.get("files")]
    assert [f["name"] for f in upload["files"]] == ["box.png", "receipt.pdf"]
    assert "box.png, receipt.pdf" in str(root["blocks"])  # the card names them, as before

    # a later mail's files come after its thread line
    await send(d.email.smtp.port, mail_with(("second.pdf", "application/pdf", PDF),
                                            subject="Re: Order 1234 never arrived",
                                            msgid="<m2@example.org>",
                                            In_Reply_To="<m1@example.org>"))
    await eventually(lambda: _shared(slack, 2))
    later = [m for m in slack.thread(root["ts"])][-2:]
    assert "*Ada Lovelace* (Email)" in later[0]["text"] and ":paperclip: second.pdf" in \
        later[0]["text"]
    assert [f["name"] for f in later[1]["files"]] == ["second.pdf"]


async def test_an_attachment_over_the_upload_cap_is_only_named(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(
        make_settings, slack, slack_keys={"upload_max": 4096}), clock)
    big = PDF * 3
    big_words = size_words(len(big))
    await send(d.email.smtp.port, mail_with(("photo.png", "image/png", PNG),
                                            ("scan.pdf", "application/pdf", big)))
    root = await root_of(slack)
    [shared] = await eventually(lambda: _shared(slack))
    assert [f["name"] for f in shared["files"]] == ["photo.png"]
    assert f"scan.pdf ({big_words}, too large to upload here)" in str(root["blocks"])
    await d.outbox.deliver_due()
    assert len(slack.called("files.getUploadURLExternal")) == 1

    # a mail whose only file is over the cap uploads nothing: the line names it with its size
    await send(d.email.smtp.port, mail_with(("scan2.pdf", "application/pdf", big),
                                            subject="Re: Order 1234 never arrived",
                                            msgid="<m2@example.org>",
                                            In_Reply_To="<m1@example.org>"))
    [line] = (await eventually(lambda: _thread(slack, root["ts"], 2)))[1:]
    assert f":paperclip: scan2.pdf ({big_words}, too large to upload here)" in line["text"]
    await d.outbox.deliver_due()
    assert len(slack.shared) == 1


async def test_uploads_are_retried_and_happen_once_across_a_restart(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    settings = desk_settings(make_settings, slack, database_url=database_url)
    slack.fail_next["files.completeUploadExternal"] = [
        (500, {"ok": False, "error": "internal_error"}, {})]
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail_with(("box.png", "image/png", PNG)))
    await root_of(slack)
    await eventually(lambda: _upload_row(d, "failed_once"))
    clock.advance(seconds=5)  # past the retry's backoff
    d.outbox.kick()
    [shared] = await eventually(lambda: _shared(slack))
    assert shared["files"][0]["data"] == PNG
    await eventually(lambda: _upload_row(d, "done"))
    assert len(slack.called("files.completeUploadExternal")) == 2

    d.request_stop()
    await d.stop()
    again = await start(daemon_factory, settings, clock)
    await again.outbox.deliver_due()
    assert len(slack.shared) == 1
    assert len(slack.called("files.completeUploadExternal")) == 2
    assert await _count(again, Attachment) == 1


async def _upload_row(d: Any, state: str) -> bool:
    async with d.store.reader() as s:
        row = (await s.execute(select(Outbox).where(Outbox.payload["op"].as_string() == "files"))
               ).scalars().first()
    if row is None:
        return False
    if state == "failed_once":
        return row.state == "pending" and row.attempts == 1
    return row.state == state


async def test_a_chat_channels_files_fetched_later_are_uploaded_and_the_large_ones_named(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    from tests.fakes.telegram import BOT_TOKEN, FakeTelegram

    async with FakeTelegram() as telegram:
        settings = desk_settings(
            make_settings, slack, slack_keys={"upload_max": 4096},
            http={"public_url": "https://support.example.com"},
            telegram={"bot_token": BOT_TOKEN, "api_base_url": telegram.base_url,
                      "poll_timeout": "1s"})
        d = await start(daemon_factory, settings, clock)
        photo = b"\xff\xd8\xff\xe0 a photo of the damaged box " * 40  # 1.6 KB
        scan = b"%PDF-1.7 " + bytes(range(256)) * 20  # 5 KB: over the cap
        photo_id, scan_id = telegram.add_file(photo), telegram.add_file(scan, "documents", "pdf")
        await telegram.push(telegram.message_update(4242, None, caption="See?",
                                                    photo=telegram.photo(photo_id, len(photo))))
        root = await root_of(slack)
        await telegram.push(telegram.message_update(4242, None, caption="And the receipt",
                                                    document={"file_id": scan_id,
                                                              "file_unique_id": "AgADs",
                                                              "file_name": "receipt.pdf",
                                                              "mime_type": "application/pdf",
                                                              "file_size": len(scan)}))
        [shared] = await eventually(lambda: _shared(slack))
        assert shared["thread_ts"] == root["ts"]
        assert [(f["name"], f["data"]) for f in shared["files"]] == [("photo-AQADl.jpg", photo)]
        named = await eventually(lambda: _named(slack, root["ts"]))
        assert named["text"] == (f":paperclip: receipt.pdf ({size_words(len(scan))}): too large "
                                 "to upload here (over the 4 KB of slack.upload_max); "
                                 "`frontdesk show` lists them")
        thread = [m for m in slack.thread(root["ts"]) if not m.get("external")]
        assert thread.index(named) > next(i for i, m in enumerate(thread)
                                          if "And the receipt" in m["text"])
        await d.outbox.deliver_due()
        assert len(slack.shared) == 1


async def _named(slack: FakeSlack, ts: str) -> dict[str, Any] | None:
    return next((m for m in slack.thread(ts) if "too large to upload" in m.get("text", "")),
                None)
