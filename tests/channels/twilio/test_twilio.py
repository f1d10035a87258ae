"""The Twilio channel end to end: signed webhooks into the daemon's HTTP server, the real twilio
SDK sending to a loopback fake of Twilio's REST API, media and recordings fetched from it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree

import pytest
from sqlalchemy import func, select

from frontdesk.channels.twilio.voice import DONE_PATH, RECORDING_PATH, TRANSCRIPTION_PATH
from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.storage.models import Event, InboundJournal, Message, Outbox, PhoneOptOut
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio, sid
from tests.support.helpers import conversations, detail, eventually, processed

CUSTOMER = "+15557654321"
OURS = "+15550001111"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def twilio_settings(make_settings: Any, fake: FakeTwilio, database_url: str | None = None,
                    **sections: Any) -> Any:
    twilio = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "sms_from": OURS,
              "api_base_url": fake.base_url, **sections.pop("twilio", {})}
    return make_settings(database_url=database_url, http={"public_url": PUBLIC_URL},
                         twilio=twilio, **sections)


async def start(make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio,
                database_url: str | None = None, **sections: Any) -> Any:
    d = await daemon_factory(twilio_settings(make_settings, fake, database_url, **sections),
                             clock=clock)
    fake.daemon_port = d.http.port
    return d


async def journal_count(d: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(InboundJournal)))
                   .scalar_one())


async def settled(d: Any) -> bool:
    """Every journal row processed (there may be none)."""
    async with d.store.reader() as s:
        pending = (await s.execute(select(func.count()).select_from(InboundJournal)
                                   .where(InboundJournal.state == "pending"))).scalar_one()
    return pending == 0


async def text_in(fake: FakeTwilio, d: Any, body: str, **kw: Any) -> dict[str, str]:
    form = fake.inbound(body, **kw)
    status, answer = await fake.post("/webhooks/twilio/sms", form)
    assert (status, answer) == (200, EMPTY_TWIML)
    await eventually(lambda: processed(d.store))
    await eventually(lambda: settled(d))
    return form


async def reply(d: Any, clock: Any, conversation_id: int, text: str) -> int:
    async with d.store.session() as s:
        c = await get_conversation(s, conversation_id)
        m = await add_staff_reply(s, c, text, author="Grace", replies=d.replies, now=clock())
    d.outbox.kick()
    return m.id


async def message(d: Any, message_id: int) -> Message:
    async with d.store.reader() as s:
        return await s.get_one(Message, message_id)


async def status_is(d: Any, message_id: int, status: str) -> bool:
    return (await message(d, message_id)).delivery_status == status


# -- in ---------------------------------------------------------------------------------------

async def test_sms_becomes_a_conversation(database_url: str, make_settings: Any,
                                          daemon_factory: Any, clock: Any,
                                          fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    form = fake.inbound("Hi, my order 1234 has not arrived.", sender="+1 (555) 765-4321")
    status, body = await fake.post("/webhooks/twilio/sms", form)
    assert status == 200 and body == EMPTY_TWIML
    await eventually(lambda: processed(d.store))
    [conv] = await conversations(d.store)
    shown = await detail(d.store, conv.id)
    assert shown["channel"] == "sms" and shown["status"] == "open"
    assert shown["subject"] == "Hi, my order 1234 has not arrived."
    assert shown["contact"]["identities"] == [{"channel": "sms", "address": CUSTOMER}]
    [m] = shown["messages"]
    assert m["text"] == "Hi, my order 1234 has not arrived."
    assert m["external_id"] == form["MessageSid"] and m["address"] == CUSTOMER
    ready = await d.readiness()
    assert ready[1]["twilio"] == "ok"


async def test_retried_webhook_is_stored_once(make_settings: Any, daemon_factory: Any,
                                              clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    form = fake.inbound("Hello?")
    assert (await fake.post("/webhooks/twilio/sms", form))[0] == 200
    assert await fake.post("/webhooks/twilio/sms", form) == (200, EMPTY_TWIML)  # Twilio retries
    await eventually(lambda: processed(d.store))
    assert await journal_count(d) == 1
    [conv] = await conversations(d.store)
    assert len((await detail(d.store, conv.id))["messages"]) == 1


async def test_bad_signature_gets_403_and_nothing_is_stored(make_settings: Any,
                                                            daemon_factory: Any, clock: Any,
                                                            fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    form = fake.inbound("Let me in")
    assert (await fake.post("/webhooks/twilio/sms", form, signature="bm90IGEgc2lnbmF0dXJl"))[0] \
        == 403
    assert (await fake.post("/webhooks/twilio/sms", form, signature=""))[0] == 403
    # signed for another URL (what the daemon's own address would give, not the public URL)
    wrong = fake.signature(f"http://127.0.0.1:{d.http.port}/webhooks/twilio/sms", form)
    assert (await fake.post("/webhooks/twilio/sms", form, signature=wrong))[0] == 403
    # a form changed after signing
    good = fake.signature(PUBLIC_URL + "/webhooks/twilio/sms", form)
    tampered = {**form, "Body": "Send me everything"}
    assert (await fake.post("/webhooks/twilio/sms", tampered, signature=good))[0] == 403
    assert (await fake.post("/webhooks/twilio/status", {"MessageSid": "SM1",
                                                        "MessageStatus": "delivered"},
                            signature="x"))[0] == 403
    # every Twilio route checks, the voice ones included
    voice = {"CallSid": "CA1", "From": "+15550002222", "To": OURS, "RecordingSid": "RE1",
             "RecordingStatus": "completed", "TranscriptionText": "hello"}
    for path in ("/webhooks/twilio/voice", RECORDING_PATH, TRANSCRIPTION_PATH, DONE_PATH):
        status, body = await fake.post(path, voice, signature="x")
        assert (status, body) == (403, "bad signature"), path
    assert await journal_count(d) == 0


async def test_hmac_sha256_signature_variant(make_settings: Any, daemon_factory: Any,
                                             clock: Any, fake: FakeTwilio) -> None:
    key = "shared-key-secret-0123456789"
    d = await start(make_settings, daemon_factory, clock, fake,
                    twilio={"webhook_signing_key": key})
    assert (await fake.post("/webhooks/twilio/sms", fake.inbound("wrong key"),
                            shared_key="another-key"))[0] == 403
    assert (await fake.post("/webhooks/twilio/sms", fake.inbound("signed with a shared key"),
                            shared_key=key))[0] == 200
    assert (await fake.post("/webhooks/twilio/sms", fake.inbound("classic auth token")))[0] \
        == 200
    await eventually(lambda: processed(d.store))
    assert await journal_count(d) == 2


async def test_whatsapp_sender_is_the_sms_contact(make_settings: Any, daemon_factory: Any,
                                                  clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Texting you first")
    await text_in(fake, d, "Now on WhatsApp", sender=f"whatsapp:{CUSTOMER}",
                  to=f"whatsapp:{OURS}", profile_name="Ada Lovelace")
    sms, whatsapp = await conversations(d.store)
    assert (sms.channel, whatsapp.channel) == ("sms", "whatsapp")
    assert sms.contact_id == whatsapp.contact_id
    shown = await detail(d.store, whatsapp.id)
    assert shown["contact"]["name"] == "Ada Lovelace"
    assert shown["contact"]["identities"] == [{"channel": "sms", "address": CUSTOMER},
                                              {"channel": "whatsapp", "address": CUSTOMER}]
    assert shown["messages"][0]["author_name"] == "Ada Lovelace"


async def test_whatsapp_first_then_sms_is_one_contact(make_settings: Any, daemon_factory: Any,
                                                      clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hola", sender=f"whatsapp:{CUSTOMER}", to=f"whatsapp:{OURS}",
                  profile_name="Ada")
    await text_in(fake, d, "and by SMS")
    first, second = await conversations(d.store)
    assert first.contact_id == second.contact_id and second.channel == "sms"


async def test_mms_media_are_fetched_in_the_background(make_settings: Any, daemon_factory: Any,
                                                       clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    message_sid = sid("MM")
    photo = b"\xff\xd8\xff\xe0 a JPEG of a broken parcel " * 50
    url = fake.add_media(photo, "image/jpeg", message_sid)
    pdf = b"%PDF-1.4 receipt"
    url2 = fake.add_media(pdf, "application/pdf", message_sid)
    fake.media_failures[fake.path_of(url)] = 1  # the first download fails: retried
    await text_in(fake, d, "It arrived like this", message_sid=message_sid,
                  media=[(url, "image/jpeg"), (url2, "application/pdf")])
    [conv] = await conversations(d.store)
    await eventually(lambda: _outbox_attempts(d, "twilio_media", 1))
    clock.advance(seconds=5)  # past the retry backoff
    d.outbox.kick()

    async def attached() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await detail(d.store, conv.id))["messages"][0][
            "attachments"]
        return found if len(found) == 2 else []

    files = await eventually(attached)
    by_type = {a["content_type"]: a for a in files}
    assert by_type["image/jpeg"]["sha256"] == hashlib.sha256(photo).hexdigest()
    assert by_type["image/jpeg"]["filename"] == f"{message_sid}-0.jpg"
    assert by_type["application/pdf"]["size"] == len(pdf)
    stored = d.settings.daemon.data_dir + "/attachments/" + by_type["image/jpeg"]["sha256"][:2]
    with open(f"{stored}/{by_type['image/jpeg']['sha256']}", "rb") as fh:
        assert fh.read() == photo
    assert all(authorised for _, authorised in fake.media_requests)
    assert len([p for p, _ in fake.media_requests if p == fake.path_of(url)]) == 2
    assert len([p for p, _ in fake.media_requests if p == fake.path_of(url2)]) == 1


# -- opt-out ----------------------------------------------------------------------------------

async def test_stop_start_and_help(database_url: str, make_settings: Any, daemon_factory: Any,
                                   clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url,
                    twilio={"help_text": "Support line of Example Ltd. Reply STOP to opt out."})
    await text_in(fake, d, "Where is my order?")
    [conv] = await conversations(d.store)
    await text_in(fake, d, " stop ")
    assert len(await conversations(d.store)) == 1  # STOP opens no conversation
    assert len((await detail(d.store, conv.id))["messages"]) == 1
    async with d.store.reader() as s:
        row = await s.get_one(PhoneOptOut, CUSTOMER)
    assert row.opted_out and row.keyword == "STOP"

    first = await reply(d, clock, conv.id, "We found it!")
    await eventually(lambda: status_is(d, first, "failed"))
    assert "opted out" in ((await message(d, first)).failure_reason or "")
    await text_in(fake, d, "HELP")  # no help text to an opted-out number either
    await d.outbox.deliver_due()
    assert fake.messages == []

    await text_in(fake, d, "Start")
    second = await reply(d, clock, conv.id, "Sorry, here it is: we found your order.")
    await eventually(lambda: status_is(d, second, "sent"))
    await text_in(fake, d, "help")
    await eventually(lambda: _sent_count(fake, 2))
    assert [m["Body"] for m in fake.messages] == [
        "Sorry, here it is: we found your order.",
        "Support line of Example Ltd. Reply STOP to opt out."]
    assert len(await conversations(d.store)) == 1
    async with d.store.reader() as s:
        kinds = [e.kind for e in (await s.execute(select(Event).order_by(Event.id))).scalars()]
    assert {"opted_out", "opted_in", "help_requested"} <= set(kinds)


async def test_yes_is_an_ordinary_answer_unless_opted_out(make_settings: Any,
                                                          daemon_factory: Any, clock: Any,
                                                          fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Can you deliver on Monday?")
    await text_in(fake, d, "Yes")
    [conv] = await conversations(d.store)
    assert [m["text"] for m in (await detail(d.store, conv.id))["messages"]] == [
        "Can you deliver on Monday?", "Yes"]


async def test_opted_out_at_twilio_fails_with_the_reason(make_settings: Any,
                                                         daemon_factory: Any, clock: Any,
                                                         fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hello")
    [conv] = await conversations(d.store)
    fake.opted_out.add(CUSTOMER)
    mid = await reply(d, clock, conv.id, "Hello back")
    await eventually(lambda: status_is(d, mid, "failed"))
    reason = (await message(d, mid)).failure_reason or ""
    assert "opted out" in reason and "21610" in reason
    assert await d.store.ping()
    async with d.store.reader() as s:
        assert (await s.get_one(PhoneOptOut, CUSTOMER)).source == "twilio-21610"


# -- out --------------------------------------------------------------------------------------

async def test_staff_reply_reaches_twilio_and_status_callbacks_update_it(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    await text_in(fake, d, "Hello")
    [conv] = await conversations(d.store)
    mid = await reply(d, clock, conv.id, "Your parcel leaves today.")
    await eventually(lambda: status_is(d, mid, "sent"))
    [sent] = fake.messages
    assert sent["To"] == CUSTOMER and sent["From"] == OURS
    assert sent["Body"] == "Your parcel leaves today."
    assert sent["StatusCallback"] == PUBLIC_URL + "/webhooks/twilio/status"
    assert await fake.send_status(sent, "sent") == 200
    assert await fake.send_status(sent, "delivered") == 200
    assert await status_is(d, mid, "delivered")
    assert await fake.send_status(sent, "sent") == 200  # late and out of order: ignored
    assert await status_is(d, mid, "delivered")

    other = await reply(d, clock, conv.id, "And a second note.")
    await eventually(lambda: status_is(d, other, "sent"))
    await fake.send_status(fake.messages[-1], "undelivered", error_code="30003")
    shown = (await detail(d.store, conv.id))["messages"][-1]
    assert shown["delivery_status"] == "failed"
    assert "unreachable" in shown["failure_reason"] and "30003" in shown["failure_reason"]


async def test_status_callback_before_the_outbox_marks_sent(make_settings: Any,
                                                            daemon_factory: Any, clock: Any,
                                                            fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hello")
    [conv] = await conversations(d.store)
    # Twilio's callback arrives before its answer to the send: the status is kept for a message
    # the store does not know yet, and the reply ends up delivered, not merely sent.
    fake.status_during_create = "delivered"
    mid = await reply(d, clock, conv.id, "Quick one")
    await eventually(lambda: status_is(d, mid, "delivered"))


async def test_long_reply_is_split_in_order(make_settings: Any, daemon_factory: Any,
                                            clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Tell me everything")
    [conv] = await conversations(d.store)
    words = " ".join(f"w{i:04d}" for i in range(284))  # 1,703 characters
    assert len(words) > 1700
    mid = await reply(d, clock, conv.id, words)
    await eventually(lambda: status_is(d, mid, "sent"))
    bodies = [m["Body"] for m in fake.messages]
    assert len(bodies) == 2 and all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies) == words
    for sent in fake.messages:
        await fake.send_status(sent, "delivered")
    assert await status_is(d, mid, "delivered")


async def test_partly_sent_reply_resumes_without_repeating(make_settings: Any,
                                                           daemon_factory: Any, clock: Any,
                                                           fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hi")
    [conv] = await conversations(d.store)
    fake.fail_next = [None, "500"]  # the first part goes, the second hits a server error
    text = ("a" * 1500) + "\n\n" + ("b" * 1500)
    mid = await reply(d, clock, conv.id, text)
    await eventually(lambda: _outbox_attempts(d, "deliver", 1))
    assert [m["Body"][0] for m in fake.messages] == ["a"]
    async with d.store.reader() as s:
        row = (await s.execute(select(Outbox).where(Outbox.kind == "deliver"))).scalars().one()
    assert row.state == "pending" and "server error" in (row.last_error or "")
    clock.advance(seconds=5)
    await d.outbox.deliver_due()
    assert await status_is(d, mid, "sent")
    assert [m["Body"][0] for m in fake.messages] == ["a", "b"]


async def test_rate_limit_is_retried(make_settings: Any, daemon_factory: Any, clock: Any,
                                     fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hi")
    [conv] = await conversations(d.store)
    fake.fail_next = ["429"]
    mid = await reply(d, clock, conv.id, "Answer")
    await eventually(lambda: _outbox_attempts(d, "deliver", 1))
    assert (await message(d, mid)).delivery_status == "queued"
    clock.advance(seconds=5)
    await d.outbox.deliver_due()
    assert await status_is(d, mid, "sent") and len(fake.messages) == 1


async def test_twilio_unreachable_is_retried_not_fatal(make_settings: Any, daemon_factory: Any,
                                                       clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hi")
    [conv] = await conversations(d.store)
    await fake.__aexit__(None, None, None)  # Twilio is down
    await reply(d, clock, conv.id, "Answer")
    await eventually(lambda: _outbox_attempts(d, "deliver", 1))
    async with d.store.reader() as s:
        row = (await s.execute(select(Outbox).where(Outbox.kind == "deliver"))).scalars().one()
    assert row.state == "pending" and "could not reach Twilio" in (row.last_error or "")


async def test_whatsapp_reply_goes_from_the_whatsapp_sender(make_settings: Any,
                                                            daemon_factory: Any, clock: Any,
                                                            fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake,
                    twilio={"whatsapp_from": "whatsapp:+14155238886"})
    await text_in(fake, d, "Hi on WhatsApp", sender=f"whatsapp:{CUSTOMER}",
                  to="whatsapp:+14155238886")
    [conv] = await conversations(d.store)
    mid = await reply(d, clock, conv.id, "Hi back")
    await eventually(lambda: status_is(d, mid, "sent"))
    [sent] = fake.messages
    assert (sent["From"], sent["To"]) == ("whatsapp:+14155238886", f"whatsapp:{CUSTOMER}")


async def test_a_closed_whatsapp_window_sends_the_content_template_and_holds_the_reply(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    template = "HX" + "0123456789abcdef" * 2
    d = await start(make_settings, daemon_factory, clock, fake,
                    twilio={"whatsapp_from": "whatsapp:+14155238886",
                            "whatsapp_template_sid": template,
                            "whatsapp_template_variables": ["{reference}", "{first_name}"]})
    await text_in(fake, d, "Hi on WhatsApp", sender=f"whatsapp:{CUSTOMER}",
                  to="whatsapp:+14155238886", profile_name="Ada Lovelace")
    [conv] = await conversations(d.store)
    clock.advance(hours=25)
    mid = await reply(d, clock, conv.id, "Your parcel is on its way")
    await eventually(lambda: _true(bool(fake.messages)))
    [sent] = fake.messages
    assert sent["ContentSid"] == template and "Body" not in sent
    assert json.loads(sent["ContentVariables"]) == {"1": conv.reference, "2": "Ada"}
    assert (await message(d, mid)).delivery_status == "queued"  # held
    await text_in(fake, d, "Yes?", sender=f"whatsapp:{CUSTOMER}", to="whatsapp:+14155238886")
    await eventually(lambda: status_is(d, mid, "sent"))
    assert [m.get("Body") for m in fake.messages] == [None, "Your parcel is on its way"]


async def test_a_closed_whatsapp_window_without_a_template_fails_saying_why(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hi", sender=f"whatsapp:{CUSTOMER}", to=f"whatsapp:{OURS}")
    [conv] = await conversations(d.store)
    clock.advance(hours=25)
    mid = await reply(d, clock, conv.id, "Late")
    await eventually(lambda: status_is(d, mid, "failed"))
    reason = (await message(d, mid)).failure_reason or ""
    assert "24 hours" in reason and "whatsapp_template_sid" in reason
    assert fake.messages == []


async def _true(value: bool) -> bool:
    return value


# -- voicemail --------------------------------------------------------------------------------

def _twiml(xml: str) -> ElementTree.Element:
    return ElementTree.fromstring(xml)


async def _call(fake: FakeTwilio, caller: str = CUSTOMER) -> ElementTree.Element:
    call = {"CallSid": sid("CA"), "AccountSid": ACCOUNT_SID, "From": caller, "To": OURS,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    status, body = await fake.post("/webhooks/twilio/voice", call)
    assert status == 200
    return _twiml(body)


async def test_voice_greeting_depends_on_business_hours(make_settings: Any,
                                                        daemon_factory: Any, clock: Any,
                                                        fake: FakeTwilio) -> None:
    await start(make_settings, daemon_factory, clock, fake,
                sla={"business_hours": "Mon-Fri 09:00-17:00", "timezone": "UTC"},
                twilio={"voice_greeting_open": "We are open, speak after the tone.",
                        "voice_greeting_closed": "We are closed, speak after the tone."})
    open_call = await _call(fake)  # Monday 10:00 UTC
    assert open_call.findtext("Say") == "We are open, speak after the tone."
    record = open_call.find("Record")
    assert record is not None
    assert record.get("transcribe") == "true" and record.get("maxLength") == "120"
    assert record.get("transcribeCallback") == PUBLIC_URL + "/webhooks/twilio/voice/transcription"
    assert record.get("recordingStatusCallback", "").startswith(
        PUBLIC_URL + "/webhooks/twilio/voice/recording?caller=%2B15557654321")
    assert record.get("action") == PUBLIC_URL + "/webhooks/twilio/voice/done"
    clock.advance(hours=10)  # Monday 20:00
    closed = await _call(fake)
    assert closed.findtext("Say") == "We are closed, speak after the tone."
    status, body = await fake.post("/webhooks/twilio/voice/done", {"CallSid": "CA1"})
    assert status == 200 and _twiml(body).find("Hangup") is not None


async def _recording_callbacks(fake: FakeTwilio, call: ElementTree.Element,
                               audio: bytes) -> tuple[dict[str, str], dict[str, str], str]:
    record = call.find("Record")
    assert record is not None
    recording_sid, url = fake.add_recording(audio)
    recording = {"AccountSid": ACCOUNT_SID, "CallSid": sid("CA"), "RecordingSid": recording_sid,
                 "RecordingUrl": url, "RecordingStatus": "completed", "RecordingDuration": "14",
                 "RecordingChannels": "1", "RecordingSource": "RecordVerb",
                 "RecordingStartTime": "Mon, 23 Nov 2026 10:00:05 +0000"}
    transcription = {"AccountSid": ACCOUNT_SID, "CallSid": recording["CallSid"],
                     "RecordingSid": recording_sid, "RecordingUrl": url,
                     "TranscriptionSid": sid("TR"), "TranscriptionStatus": "completed",
                     "TranscriptionText": "Hi, this is Ada, please call me back about order 1234.",
                     "TranscriptionUrl": f"{url}/Transcriptions", "From": CUSTOMER, "To": OURS,
                     "CallStatus": "completed", "ApiVersion": "2010-04-01",
                     "Direction": "inbound"}
    path = fake.path_of(record.get("recordingStatusCallback", ""))
    return recording, transcription, path


async def test_voicemail_becomes_one_message_with_its_transcript(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, database_url)
    audio = b"ID3 fake mp3 of a voicemail" * 40
    recording, transcription, path = await _recording_callbacks(fake, await _call(fake), audio)
    assert (await fake.post(path, recording))[0] == 200
    await eventually(lambda: processed(d.store))
    [conv] = await conversations(d.store)
    shown = await detail(d.store, conv.id)
    assert shown["channel"] == "voice"
    assert shown["contact"]["identities"] == [{"channel": "voice", "address": CUSTOMER}]
    [m] = shown["messages"]
    assert "no transcript yet" in m["text"] and recording["RecordingUrl"] in m["text"]
    assert (await fake.post("/webhooks/twilio/voice/transcription", transcription))[0] == 200
    assert (await fake.post("/webhooks/twilio/voice/transcription", transcription))[0] == 200
    await eventually(lambda: settled(d))
    [m] = (await detail(d.store, conv.id))["messages"]
    assert m["text"].startswith("Hi, this is Ada, please call me back about order 1234.")
    assert recording["RecordingUrl"] in m["text"] and "14 s" in m["text"]

    async def audio_stored() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await detail(d.store, conv.id))["messages"][0][
            "attachments"]
        return found

    [a] = await eventually(audio_stored)
    assert a["content_type"] == "audio/mpeg" and a["sha256"] == hashlib.sha256(audio).hexdigest()


async def test_transcription_before_recording_still_one_message(make_settings: Any,
                                                                daemon_factory: Any,
                                                                clock: Any,
                                                                fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    recording, transcription, path = await _recording_callbacks(fake, await _call(fake), b"mp3")
    assert (await fake.post("/webhooks/twilio/voice/transcription", transcription))[0] == 200
    await eventually(lambda: processed(d.store))
    assert await conversations(d.store) == []
    assert (await fake.post(path, recording))[0] == 200
    await eventually(lambda: settled(d))
    [conv] = await conversations(d.store)
    [m] = (await detail(d.store, conv.id))["messages"]
    assert m["text"].startswith("Hi, this is Ada")


async def test_voicemail_caller_texting_later_is_the_same_contact(make_settings: Any,
                                                                  daemon_factory: Any,
                                                                  clock: Any,
                                                                  fake: FakeTwilio) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    recording, _, path = await _recording_callbacks(fake, await _call(fake), b"mp3")
    assert (await fake.post(path, recording))[0] == 200
    await eventually(lambda: processed(d.store))
    await text_in(fake, d, "I left you a voicemail")
    voice, sms = await conversations(d.store)
    assert voice.contact_id == sms.contact_id
    mid = await reply(d, clock, voice.id, "We got your voicemail.")  # answered by SMS
    await eventually(lambda: status_is(d, mid, "sent"))
    assert fake.messages[-1]["To"] == CUSTOMER and fake.messages[-1]["From"] == OURS


# -- configuration ----------------------------------------------------------------------------

def test_missing_credentials_disable_the_channel(make_settings: Any) -> None:
    def from_settings(settings: Any) -> Any:
        [result] = settings.twilio.build(settings)
        return result

    line = from_settings(make_settings())
    assert line == ("twilio channel (sms, whatsapp, voice) disabled: twilio.account_sid and "
                    "twilio.auth_token are not set")
    no_url = from_settings(make_settings(twilio={"account_sid": ACCOUNT_SID,
                                                 "auth_token": AUTH_TOKEN}))
    assert isinstance(no_url, str) and "http.public_url" in no_url
    assert AUTH_TOKEN not in no_url


async def test_secrets_stay_out_of_the_log(make_settings: Any, daemon_factory: Any, clock: Any,
                                           fake: FakeTwilio,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    d = await start(make_settings, daemon_factory, clock, fake)
    await text_in(fake, d, "Hi")
    [conv] = await conversations(d.store)
    mid = await reply(d, clock, conv.id, "Hello")
    await eventually(lambda: status_is(d, mid, "sent"))
    assert AUTH_TOKEN not in caplog.text
    assert re.search(r"sent outbox #\d+ \(deliver sms to \+15557654321\)", caplog.text)


async def _outbox_attempts(d: Any, kind: str, n: int) -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox).where(Outbox.kind == kind)
                                .order_by(Outbox.id))).scalars().all()
    return bool(rows) and rows[0].attempts >= n


async def _sent_count(fake: FakeTwilio, n: int) -> bool:
    return len(fake.messages) >= n
