"""Meta's webhooks, split and parsed. Pure: no I/O.

One POST carries ``{"object": "page" | "instagram" | "whatsapp_business_account", "entry":
[...]}`` with any number of entries and events. :func:`split` turns it into

* :class:`Row` s: one per customer message (Messenger and Instagram ``messaging`` items with a
  ``message`` or ``postback``; WhatsApp ``messages``), each journaled under its own id (``mid``,
  WhatsApp ``id``) as a small JSON object of its own, and
* :class:`Note` s: what is not a customer message (echoes of the page's own sends, delivery and
  read receipts, WhatsApp ``statuses``, reactions), applied to the store, never journaled as
  messages.

:func:`parse` turns a journaled row back into an
:class:`~frontdesk.domain.messages.InboundMessage` (and can be re-run on a dead letter).
Attachments are named in the ``X-Meta-Media`` header (a JSON list) and fetched afterwards by a
background job; the webhook never waits for a download.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from frontdesk.channels.base import ParseError
from frontdesk.channels.chat import preview
from frontdesk.domain.messages import InboundMessage

MEDIA = "X-Meta-Media"
"""Header key of a stored message's files still to fetch (a JSON list of items)."""
PAYLOAD = "X-Meta-Payload"
"""Header key of a quick reply's or postback's payload (the button's data, for staff)."""
OBJECTS = {"page": "messenger", "instagram": "instagram", "whatsapp_business_account": "whatsapp"}


class Row(NamedTuple):
    """A customer message to journal (a tuple: made for every message at ingest speed)."""

    channel: str
    remote_id: str
    raw: bytes
    owner: str = ""
    """The page, Instagram account or WhatsApp phone number id the message was sent to."""


@dataclass(frozen=True)
class Note:
    """Something a webhook said that is not a customer message."""

    kind: str  # status | reaction | echo | read | dropped
    channel: str
    data: Mapping[str, Any] = field(default_factory=dict)


class BadPayload(ValueError):
    """The body is no Meta webhook at all (400)."""


def split(payload: Any) -> tuple[list[Row], list[Note]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise BadPayload("not a Meta webhook (an object with an entry list)")
    channel = OBJECTS.get(str(payload.get("object")))
    if channel is None:
        return [], [Note("dropped", str(payload.get("object"))[:40],
                         {"why": "an object frontdesk does not read"})]
    rows: list[Row] = []
    notes: list[Note] = []
    for entry in payload["entry"]:
        if not isinstance(entry, dict):
            continue
        if channel == "whatsapp":
            _whatsapp_entry(entry, rows, notes)
        else:
            _messaging_entry(channel, entry, rows, notes)
    return rows, notes


def _row(channel: str, remote_id: str, data: dict[str, Any], owner: str) -> Row:
    data["channel"] = channel
    return Row(channel, remote_id[:250], orjson.dumps(data), owner)


def _messaging_entry(channel: str, entry: Mapping[str, Any], rows: list[Row],
                     notes: list[Note]) -> None:
    owner = str(entry.get("id", ""))
    events = entry.get("messaging")
    if not isinstance(events, list):
        return
    for event in events:  # at ingest speed: one pass, no helper per event
        if not isinstance(event, dict):
            continue
        sender = event.get("sender")
        sender = str(sender.get("id", "")) if isinstance(sender, dict) else ""
        message = event.get("message")
        if isinstance(message, dict):
            mid = str(message.get("mid") or "")
            if message.get("is_echo"):
                notes.append(Note("echo", channel, {"mid": mid, "app_id": message.get("app_id")}))
            elif mid and sender:
                rows.append(_row(channel, mid, {"owner": owner, "event": event}, owner))
            continue
        postback = event.get("postback")
        if isinstance(postback, dict) and sender:
            mid = str(postback.get("mid") or f"postback-{sender}-{event.get('timestamp', '')}")
            rows.append(_row(channel, mid, {"owner": owner, "event": event}, owner))
        elif isinstance(event.get("reaction"), dict):
            notes.append(Note("reaction", channel, {"sender": sender, **event["reaction"]}))
        elif isinstance(event.get("delivery"), dict):
            notes.append(Note("delivered", channel,
                              {"mids": [str(m) for m in event["delivery"].get("mids") or []],
                               "sender": sender}))
        elif isinstance(event.get("read"), dict):
            notes.append(Note("read", channel, {"sender": sender,
                                                "watermark": event["read"].get("watermark")}))


def _whatsapp_entry(entry: Mapping[str, Any], rows: list[Row], notes: list[Note]) -> None:
    for change in _dicts(entry.get("changes")):
        value = change.get("value")
        if change.get("field") != "messages" or not isinstance(value, dict):
            continue
        metadata = _dict(value.get("metadata"))
        contacts = {str(c.get("wa_id")): c for c in _dicts(value.get("contacts"))}
        for message in _dicts(value.get("messages")):
            wamid, sender = str(message.get("id") or ""), str(message.get("from") or "")
            if message.get("type") == "reaction":
                notes.append(Note("reaction", "whatsapp", {"sender": sender,
                                                           **(message.get("reaction") or {})}))
            elif wamid and sender:
                number = str(metadata.get("phone_number_id", ""))
                rows.append(_row("whatsapp", wamid, {
                    "phone_number_id": number, "message": message,
                    "contact": contacts.get(sender, {})}, number))
        for status in _dicts(value.get("statuses")):
            notes.append(Note("status", "whatsapp", {
                "id": str(status.get("id", "")), "status": str(status.get("status", "")),
                "phone_number_id": str(metadata.get("phone_number_id", "")),
                "errors": list(_dicts(status.get("errors")))}))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


# -- parse ---------------------------------------------------------------------------------------

def parse(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    try:
        data = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"not a Meta row: {exc}") from None
    if not isinstance(data, dict):
        raise ParseError("not a Meta row")
    channel = data.get("channel")
    if channel in ("messenger", "instagram"):
        return _parse_messaging(channel, data)
    if channel == "whatsapp":
        return _parse_whatsapp(data)
    raise ParseError(f"not a Meta row: channel {channel!r}")


def _parse_messaging(channel: str, data: Mapping[str, Any]) -> InboundMessage:
    event = data.get("event")
    if not isinstance(event, dict):
        raise ParseError("a Meta row without its event")
    sender = str((event.get("sender") or {}).get("id", ""))
    headers: dict[str, str] = {}
    media: list[dict[str, str]] = []
    lines: list[str] = []
    message = event.get("message")
    if isinstance(message, dict):
        external = str(message.get("mid", ""))
        if text := str(message.get("text") or ""):
            lines.append(text)
        quick = message.get("quick_reply")
        if isinstance(quick, dict) and quick.get("payload"):
            headers[PAYLOAD] = str(quick["payload"])[:1000]
            if not text:
                lines.append(str(quick["payload"]))
        story = (message.get("reply_to") or {}).get("story") if isinstance(
            message.get("reply_to"), dict) else None
        if isinstance(story, dict):
            lines.append(f"(in reply to your story: {story.get('url', '')})")
        for n, attachment in enumerate(_dicts(message.get("attachments")), start=1):
            kind = str(attachment.get("type", "file"))
            url = str((attachment.get("payload") or {}).get("url") or "")
            if kind == "story_mention":
                lines.append(f"(mentioned you in their story: {url})")
            elif kind in ("image", "video", "audio", "file") and url:
                media.append({"url": url, "filename": _name(kind, n, url),
                              "content_type": _type(kind, url)})
            elif kind == "fallback" or url:
                lines.append(f"({kind}: {url})" if url else f"({kind})")
    else:
        postback = event.get("postback") or {}
        external = str(postback.get("mid") or f"postback-{sender}-{event.get('timestamp', '')}")
        title, payload = str(postback.get("title") or ""), str(postback.get("payload") or "")
        if payload:
            headers[PAYLOAD] = payload[:1000]
        lines.append(title or payload or "(a button)")
    if media:
        headers[MEDIA] = json.dumps(media)
    text = "\n".join(lines)
    subject = preview(text) if text else {"messenger": "Messenger message",
                                          "instagram": "Instagram message"}[channel]
    return InboundMessage(channel=channel, external_id=external, sender_address=sender,
                          subject=subject, text=text, headers=headers,
                          recipients=(str(data.get("owner", "")),))


def _name(kind: str, n: int, url: str) -> str:
    path = url.split("?", 1)[0].rsplit("/", 1)[-1]
    if "." in path and len(path) <= 120:
        return path
    extension = {"image": ".jpg", "video": ".mp4", "audio": ".mp4"}.get(kind, "")
    return f"{kind}-{n}{extension}"


def _type(kind: str, url: str) -> str:
    guessed = mimetypes.guess_type(url.split("?", 1)[0])[0]
    return guessed or {"image": "image/jpeg", "video": "video/mp4",
                       "audio": "audio/mp4"}.get(kind, "application/octet-stream")


def _parse_whatsapp(data: Mapping[str, Any]) -> InboundMessage:
    message = data.get("message")
    if not isinstance(message, dict):
        raise ParseError("a WhatsApp row without its message")
    wa_id = str(message.get("from", ""))
    digits = "".join(ch for ch in wa_id if ch.isdigit())
    if not digits:
        raise ParseError(f"a WhatsApp sender that is no number: {wa_id!r}")
    contact = _dict(data.get("contact"))
    name = str((contact.get("profile") or {}).get("name") or "")
    kind = str(message.get("type", "text"))
    body = _dict(message.get(kind))
    headers: dict[str, str] = {}
    lines: list[str] = []
    media: list[dict[str, str]] = []
    if kind == "text":
        lines.append(str(body.get("body") or ""))
    elif kind in ("image", "video", "audio", "document", "sticker"):
        if body.get("caption"):
            lines.append(str(body["caption"]))
        if body.get("id"):
            mime = str(body.get("mime_type") or "application/octet-stream").split(";")[0]
            extension = mimetypes.guess_extension(mime) or ""
            media.append({"media_id": str(body["id"]), "content_type": mime,
                          "filename": str(body.get("filename") or f"{kind}{extension}")})
    elif kind == "location":
        place = ", ".join(str(body[k]) for k in ("name", "address") if body.get(k))
        lines.append(f"Location: {place + ' ' if place else ''}({body.get('latitude')}, "
                     f"{body.get('longitude')})")
    elif kind == "contacts":
        for shared in _dicts(message.get("contacts")):
            who = str((shared.get("name") or {}).get("formatted_name") or "a contact")
            phones = ", ".join(str(p.get("phone")) for p in _dicts(shared.get("phones")))
            lines.append(f"Contact: {who}" + (f" ({phones})" if phones else ""))
    elif kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        lines.append(str(reply.get("title") or reply.get("id") or "(a button)"))
        if reply.get("id"):
            headers[PAYLOAD] = str(reply["id"])[:1000]
    elif kind == "button":
        button = _dict(message.get("button"))
        lines.append(str(button.get("text") or button.get("payload") or "(a button)"))
    else:
        lines.append(f"(a WhatsApp {kind} message frontdesk cannot show)")
    if media:
        headers[MEDIA] = json.dumps(media)
    context = _dict(message.get("context"))
    text = "\n".join(line for line in lines if line)
    return InboundMessage(
        channel="whatsapp", external_id=str(message.get("id", "")),
        sender_address=f"+{digits}", sender_name=name,
        subject=preview(text) if text else "WhatsApp message", text=text, headers=headers,
        thread_refs=(str(context["id"]),) if context.get("id") else (),
        recipients=(str(data.get("phone_number_id", "")),))
