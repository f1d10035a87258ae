"""Twilio webhook forms to :class:`InboundMessage`: pure, no I/O, re-runnable on a dead letter.

Three kinds of journal rows come from Twilio (``meta["kind"]``):

* ``message``: the messaging webhook (SMS, MMS, WhatsApp). ``From`` is ``+15550001111`` for SMS
  and ``whatsapp:+15550001111`` for WhatsApp: the same E.164 number on channel ``whatsapp``.
  MMS media (``NumMedia``, ``MediaUrl{i}``, ``MediaContentType{i}``) are not fetched here; the
  fields are kept in the message's headers and fetched by a background job.
* ``recording``: the voicemail's recording status callback. It carries no caller number, so the
  caller rides in the callback URL the voice webhook wrote (``meta["caller"]``).
* ``transcription``: the transcription callback, which fills in the voicemail's text.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import phonenumbers
from multidict import MultiDict

from frontdesk.channels.base import ParseError
from frontdesk.channels.chat import preview
from frontdesk.domain.messages import InboundMessage

KIND = "Twilio-Kind"
"""The header naming what a stored Twilio message is: message, recording or transcription."""

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

MAX_MEDIA = 10
"""Twilio sends at most 10 media with a message: a larger ``NumMedia`` is read as 10 (a count
taken from a request must never drive a loop unbounded, here or when a journal row is parsed
again at the next start)."""

_KEPT = ("MessageSid", "AccountSid", "MessagingServiceSid", "From", "To", "NumMedia",
         "NumSegments", "WaId", "ProfileName", "FromCountry", "FromCity")


def form_pairs(raw: bytes) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as (name, value) pairs in order: exactly
    what ``urllib.parse.parse_qsl(text, keep_blank_values=True)`` gives (``+`` is a space,
    ``%XX`` escapes decoded as UTF-8 with replacement, a field without ``=`` has the value ""),
    at half its cost for the fields that need no decoding, which are most of Twilio's."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"the Twilio form is not UTF-8: {exc}") from None
    pairs = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "+" in name or "%" in name:
            name = unquote(name.replace("+", " "))
        if "+" in value or "%" in value:
            value = unquote(value.replace("+", " "))
        pairs.append((name, value))
    return pairs


def parse_form(raw: bytes) -> MultiDict[str]:
    """An ``application/x-www-form-urlencoded`` body, every value kept (in order)."""
    return MultiDict(form_pairs(raw))


def strip_whatsapp(value: str) -> str:
    value = value.strip()
    return value[len("whatsapp:"):].strip() if value.lower().startswith("whatsapp:") else value


def e164(value: str, default_region: str | None = None) -> str | None:
    """``"+1 (555) 000-1111"`` or ``"whatsapp:+15550001111"`` → ``"+15550001111"``; None when
    it is no phone number (a short code, an alphanumeric sender, "anonymous")."""
    number = strip_whatsapp(value)
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def region_of(number: str) -> str | None:
    """The region of an E.164 number (to read a sender written without a country code)."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(strip_whatsapp(number)))
    except phonenumbers.NumberParseException:
        return None


def address_of(value: str, to: str = "") -> str:
    """The identity address of a sender: E.164 when it is a phone number, else as given."""
    return e164(value, region_of(to) if to else None) or strip_whatsapp(value)


def keyword(text: str) -> str | None:
    """The opt-out/opt-in/help keyword a message consists of, upper-cased, else None."""
    word = text.strip().rstrip(".!").strip().upper()
    if word in STOP_WORDS or word in START_WORDS or word in HELP_WORDS:
        return word
    return None


def media_count(value: Any) -> int:
    """``NumMedia`` as a count from 0 to :data:`MAX_MEDIA`; 0 for what is no count."""
    text = str(value or "0").strip()
    if not text.isdigit() or not text.isascii():
        return 0
    digits = text.lstrip("0") or "0"
    return MAX_MEDIA if len(digits) > 2 else min(int(digits), MAX_MEDIA)  # never a huge int


def media_items(headers: Mapping[str, Any]) -> list[dict[str, str]]:
    """The MMS media of a stored message as job items (url, content_type, filename)."""
    count = media_count(headers.get("NumMedia"))
    sid = str(headers.get("MessageSid", "message"))
    items = []
    for i in range(count):
        url = str(headers.get(f"MediaUrl{i}", ""))
        if not url:
            continue
        content_type = str(headers.get(f"MediaContentType{i}") or "application/octet-stream")
        ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
        items.append({"url": url, "content_type": content_type, "filename": f"{sid}-{i}{ext}"})
    return items


def voicemail_text(*, duration: str, url: str, transcript: str | None = None,
                   status: str = "") -> str:
    """A voicemail message's text: the transcript first, then the recording link."""
    seconds = f"{duration} s" if duration else "no length given"
    link = f"Recording: {url}" if url else "No recording link."
    if transcript and transcript.strip():
        return f"{transcript.strip()}\n\n(Voicemail, {seconds}. {link})"
    if status == "failed":
        return f"Voicemail ({seconds}); the transcription failed.\n{link}"
    if status == "completed":
        return f"Voicemail ({seconds}); nothing could be transcribed.\n{link}"
    return f"Voicemail ({seconds}), no transcript yet.\n{link}"


def parse_twilio(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    """A journaled Twilio webhook form → :class:`InboundMessage`."""
    form = parse_form(raw)
    kind = str(meta.get("kind", "message"))
    if kind == "message":
        return _message(form)
    if kind == "recording":
        return _recording(form, meta)
    if kind == "transcription":
        return _transcription(form, meta)
    raise ParseError(f"unknown kind of Twilio webhook: {kind!r}")


def _message(form: MultiDict[str]) -> InboundMessage:
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    sender = form.get("From", "")
    if not sid or not sender:
        raise ParseError("the Twilio message has no MessageSid or From")
    channel = "whatsapp" if sender.strip().lower().startswith("whatsapp:") else "sms"
    body = form.get("Body", "")
    headers: dict[str, str] = {KIND: "message"}
    for key in _KEPT:
        if key in form:
            headers[key] = form[key]
    headers["MessageSid"] = sid
    count = media_count(form.get("NumMedia"))
    for i in range(count):
        for field in (f"MediaUrl{i}", f"MediaContentType{i}"):
            if field in form:
                headers[field] = form[field]
    if body.strip():
        subject = preview(body)
    elif count:
        subject = "Picture message" if channel == "sms" else "WhatsApp media"
    else:
        subject = "Text message" if channel == "sms" else "WhatsApp message"
    return InboundMessage(
        channel=channel, external_id=sid, sender_address=address_of(sender, form.get("To", "")),
        sender_name=form.get("ProfileName", "").strip(), subject=subject, text=body,
        recipients=(strip_whatsapp(form.get("To", "")),), headers=headers,
    )


def _caller(form: MultiDict[str], meta: Mapping[str, Any]) -> tuple[str, str]:
    caller = str(meta.get("caller") or form.get("From") or form.get("Caller") or "")
    called = str(meta.get("called") or form.get("To") or form.get("Called") or "")
    if not caller:
        raise ParseError("the voicemail callback names no caller")
    address = address_of(caller, called)
    if not address.startswith("+"):
        # a withheld number ("anonymous"): one contact per call, never one for all of them
        address = f"{address or 'unknown'}:{form.get('CallSid', '')}"
    return address, called


def _recording(form: MultiDict[str], meta: Mapping[str, Any]) -> InboundMessage:
    sid = form.get("RecordingSid", "")
    if not sid:
        raise ParseError("the recording callback has no RecordingSid")
    address, called = _caller(form, meta)
    duration = form.get("RecordingDuration", "")
    url = form.get("RecordingUrl", "")
    headers = {KIND: "recording", "RecordingSid": sid, "RecordingUrl": url,
               "RecordingDuration": duration, "CallSid": form.get("CallSid", ""),
               "From": address, "To": called}
    return InboundMessage(
        channel="voice", external_id=sid, sender_address=address,
        subject=f"Voicemail from {address}", text=voicemail_text(duration=duration, url=url),
        recipients=(called,) if called else (), headers=headers,
    )


def _transcription(form: MultiDict[str], meta: Mapping[str, Any]) -> InboundMessage:
    recording = form.get("RecordingSid", "")
    if not recording:
        raise ParseError("the transcription callback has no RecordingSid")
    address, called = _caller(form, meta)
    headers = {KIND: "transcription", "RecordingSid": recording,
               "TranscriptionSid": form.get("TranscriptionSid", ""),
               "TranscriptionStatus": form.get("TranscriptionStatus", ""),
               "CallSid": form.get("CallSid", "")}
    return InboundMessage(
        channel="voice", external_id=f"transcription:{recording}", sender_address=address,
        text=form.get("TranscriptionText", ""), recipients=(called,) if called else (),
        headers=headers,
    )
