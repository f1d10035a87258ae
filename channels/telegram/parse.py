"""Telegram updates (Bot API JSON) to :class:`InboundMessage`: pure, no I/O.

Only ``message`` updates from private chats are customer messages; edits are not journaled
(``allowed_updates`` asks Telegram for new messages only), so an edited message is never stored
twice. The journal key is the chat and message id (``message:<chat>:<message>``): the same in
polling and webhook mode, and unlike update ids it is never reused.

Photos, documents, voice notes, audio and video are not downloaded here: their file ids are
kept in the message's headers and fetched by a background job (getFile, then the file URL).

Nothing from an update is trusted to have the type Telegram gives it: ids must be integers
below 2**63 (not floats, booleans or 1e999), texts strings, at most :data:`MAX_FILES` files and
a few photo sizes are looked at. :func:`parse_message` raises only :class:`ParseError`, and the
webhook and the poller run it before journaling, so what is journaled parses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from frontdesk.channels.base import ParseError
from frontdesk.channels.chat import preview
from frontdesk.domain.messages import InboundMessage

COMMAND = "Telegram-Command"

_FILE_KINDS = (
    # (field, filename prefix, default extension, default content type)
    ("document", "document", "", "application/octet-stream"),
    ("voice", "voice", ".ogg", "audio/ogg"),
    ("audio", "audio", ".mp3", "audio/mpeg"),
    ("video", "video", ".mp4", "video/mp4"),
    ("video_note", "video-note", ".mp4", "video/mp4"),
    ("animation", "animation", ".mp4", "video/mp4"),
)
_DESCRIBE = {"photo": "Photo", "document": "Document", "voice": "Voice message",
             "audio": "Audio", "video": "Video", "video_note": "Video message",
             "animation": "Animation"}


MAX_ID = 2**63 - 1
"""Telegram's ids fit a signed 64-bit integer (chat ids have at most 52 significant bits)."""
MAX_FILES = 10
_MAX_PHOTO_SIZES = 20  # Telegram sends a handful of sizes of one photo
_MAX_FILE_ID = 512


def decode(raw: bytes) -> Any:
    """A webhook body or journal row as JSON; :class:`ParseError` for what is not JSON (not
    UTF-8, invalid, or nested deeper than the parser goes)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ParseError(f"the Telegram update is not JSON ({type(exc).__name__})") from None


def _int(value: Any, *, low: int = -MAX_ID, high: int = MAX_ID) -> int | None:
    """An integer Telegram could have sent (not a bool, a float or a huge number), else None."""
    if type(value) is not int or not low <= value <= high:
        return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def update_id(update: Any) -> int | None:
    """The ``update_id`` of an update when it is one Telegram could have sent (a positive
    integer below 2**63), else None: then the body is no update at all."""
    return _int(update.get("update_id"), low=1) if isinstance(update, dict) else None


def journal_key(update: Any) -> str | None:
    """The journal's remote id for an update worth storing, else None (edits, group chats,
    channel posts, bots and the like). Raises :class:`ParseError` for a message whose chat,
    sender or ids are not what Telegram sends."""
    if not isinstance(update, dict):
        raise ParseError("the Telegram update is not a JSON object")
    message = update.get("message")
    if message is None:
        return None
    if not isinstance(message, dict):
        raise ParseError("the update's message is not an object")
    chat, sender = message.get("chat"), message.get("from")
    if not isinstance(chat, dict) or not isinstance(sender, dict | None):
        raise ParseError("the message's chat or sender is not an object")
    if chat.get("type") != "private" or not sender or sender.get("is_bot"):
        return None
    chat_id, sender_id = _int(chat.get("id")), _int(sender.get("id"))
    message_id = _int(message.get("message_id"), low=1)
    if chat_id is None or sender_id is None or message_id is None:
        raise ParseError("the message's chat id, sender id or message id is not an integer "
                         "Telegram could have sent")
    return f"message:{chat_id}:{message_id}"


def display_name(user: Mapping[str, Any]) -> str:
    name = " ".join(_text(user.get(k)).strip() for k in ("first_name", "last_name")).strip()
    if name:
        return name
    username = _text(user.get("username")).strip()
    return f"@{username}" if username else ""


def _size(item: Mapping[str, Any], key: str) -> int:
    return _int(item.get(key), low=0) or 0


def _file_id(item: Any) -> str:
    file_id = item.get("file_id") if isinstance(item, dict) else None
    return file_id if isinstance(file_id, str) and 0 < len(file_id) <= _MAX_FILE_ID else ""


def _files(message: Mapping[str, Any]) -> list[dict[str, str]]:
    files: list[dict[str, str]] = []
    photos = message.get("photo")
    sizes = [p for p in photos[:_MAX_PHOTO_SIZES] if _file_id(p)] \
        if isinstance(photos, list) else []
    if sizes:
        best = max(sizes, key=lambda p: (_size(p, "width") * _size(p, "height"),
                                         _size(p, "file_size")))
        uid = (_text(best.get("file_unique_id")) or best["file_id"])[:64]
        files.append({"kind": "photo", "file_id": best["file_id"],
                      "filename": f"photo-{uid}.jpg", "content_type": "image/jpeg"})
    for field, prefix, ext, default_type in _FILE_KINDS:
        item = message.get(field)
        if not isinstance(item, dict) or not _file_id(item):
            continue
        uid = (_text(item.get("file_unique_id")) or item["file_id"])[:64]
        name = _text(item.get("file_name")).replace("/", "_").strip()[:255]
        files.append({"kind": field, "file_id": item["file_id"],
                      "filename": name or f"{prefix}-{uid}{ext}",
                      "content_type": _text(item.get("mime_type"))[:255] or default_type})
    return files


def _extra_text(message: Mapping[str, Any]) -> str:
    """Words for what has no text of its own (a sticker, a location, a shared contact)."""
    if isinstance(message.get("sticker"), dict):
        return f"[sticker {_text(message['sticker'].get('emoji'))}]".replace(" ]", "]")
    if isinstance(message.get("location"), dict):
        loc = message["location"]
        lat, lon = loc.get("latitude"), loc.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            return f"[location {lat}, {lon}]"
        return "[location]"
    if isinstance(message.get("contact"), dict):
        c = message["contact"]
        return f"[contact {display_name(c)} {_text(c.get('phone_number'))}]".strip()
    return ""


def file_items(headers: Mapping[str, Any]) -> list[dict[str, str]]:
    """The files of a stored message as job items (file_id, filename, content_type)."""
    count = str(headers.get("NumFiles") or "0")
    if not count.isascii() or not count.isdigit() or len(count) > 3:
        return []
    items = []
    for i in range(min(int(count), MAX_FILES)):
        file_id = str(headers.get(f"FileId{i}", ""))
        if file_id:
            items.append({"file_id": file_id, "filename": str(headers.get(f"FileName{i}", "")),
                          "content_type": str(headers.get(f"FileType{i}", ""))})
    return items


def parse_update(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    """A journaled update → :class:`InboundMessage`; :class:`ParseError` for anything else."""
    return parse_message(decode(raw))


def parse_message(update: Any) -> InboundMessage:
    """A decoded update → :class:`InboundMessage`. Only :class:`ParseError` is raised, for an
    update that is no customer message or whose fields are not what Telegram sends: the
    webhook and the poller run this before journaling, so a journaled row always parses."""
    if journal_key(update) is None:
        raise ParseError("the Telegram update is not a message from a private chat")
    message = update["message"]
    user = message["from"]
    chat_id = int(message["chat"]["id"])
    text = _text(message.get("text")) or _text(message.get("caption")) or _extra_text(message)
    uid = update_id(update)
    headers: dict[str, str] = {"update_id": str(uid) if uid is not None else "",
                               "chat_id": str(chat_id), "message_id": str(message["message_id"])}
    if _text(user.get("username")):
        headers["username"] = user["username"]
    if text.startswith("/"):
        command = text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if text[1:] else ""
        if command:
            headers[COMMAND] = command
    files = _files(message)[:MAX_FILES]
    headers["NumFiles"] = str(len(files))
    for i, f in enumerate(files):
        headers[f"FileId{i}"] = f["file_id"]
        headers[f"FileName{i}"] = f["filename"]
        headers[f"FileType{i}"] = f["content_type"]
        headers[f"FileKind{i}"] = f["kind"]
    if text.strip():
        subject = preview(text)
    elif files:
        subject = _DESCRIBE.get(files[0]["kind"], "File")
    else:
        subject = "Telegram message"
    received_at = None
    date = _int(message.get("date"), low=0)
    if date is not None:
        try:
            received_at = datetime.fromtimestamp(date, UTC)
        except (OverflowError, ValueError, OSError):
            received_at = None
    return InboundMessage(
        channel="telegram", external_id=f"{chat_id}:{message['message_id']}",
        sender_address=str(int(user["id"])), sender_name=display_name(user), subject=subject,
        text=text, received_at=received_at, headers=headers,
    )
