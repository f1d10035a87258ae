"""Telegram updates (Bot API JSON) to :class:`InboundMessage`: pure, no I/O.

Only ``message`` updates from private chats are customer messages; edits are not journaled
(``allowed_updates`` asks Telegram for new messages only), so an edited message is never stored
twice. The journal key is the chat and message id (``message:<chat>:<message>``): the same in
polling and webhook mode, and unlike update ids it is never reused.

Photos, documents, voice notes, audio and video are not downloaded here: their file ids are
kept in the message's headers and fetched by a background job (getFile, then the file URL).
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


def journal_key(update: Mapping[str, Any]) -> str | None:
    """The journal's remote id for an update worth storing, else None (edits, group chats,
    channel posts and the like)."""
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    chat = message.get("chat") or {}
    sender = message.get("from") or {}
    if chat.get("type") != "private" or not sender or sender.get("is_bot"):
        return None
    try:
        return f"message:{int(chat['id'])}:{int(message['message_id'])}"
    except (KeyError, TypeError, ValueError):
        return None


def display_name(user: Mapping[str, Any]) -> str:
    name = " ".join(str(user.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
    if name:
        return name
    username = str(user.get("username") or "").strip()
    return f"@{username}" if username else ""


def _files(message: Mapping[str, Any]) -> list[dict[str, str]]:
    files: list[dict[str, str]] = []
    photos = message.get("photo")
    if isinstance(photos, list) and photos:
        best = max(photos, key=lambda p: (int(p.get("width", 0)) * int(p.get("height", 0)),
                                          int(p.get("file_size", 0))))
        uid = str(best.get("file_unique_id") or best.get("file_id", ""))[:64]
        files.append({"kind": "photo", "file_id": str(best["file_id"]),
                      "filename": f"photo-{uid}.jpg", "content_type": "image/jpeg"})
    for field, prefix, ext, default_type in _FILE_KINDS:
        item = message.get(field)
        if not isinstance(item, dict) or "file_id" not in item:
            continue
        uid = str(item.get("file_unique_id") or item["file_id"])[:64]
        name = str(item.get("file_name") or "").replace("/", "_").strip()
        files.append({"kind": field, "file_id": str(item["file_id"]),
                      "filename": name or f"{prefix}-{uid}{ext}",
                      "content_type": str(item.get("mime_type") or default_type)})
    return files


def _extra_text(message: Mapping[str, Any]) -> str:
    """Words for what has no text of its own (a sticker, a location, a shared contact)."""
    if isinstance(message.get("sticker"), dict):
        return f"[sticker {message['sticker'].get('emoji', '')}]".replace(" ]", "]")
    if isinstance(message.get("location"), dict):
        loc = message["location"]
        return f"[location {loc.get('latitude')}, {loc.get('longitude')}]"
    if isinstance(message.get("contact"), dict):
        c = message["contact"]
        return f"[contact {display_name(c)} {c.get('phone_number', '')}]".strip()
    return ""


def file_items(headers: Mapping[str, Any]) -> list[dict[str, str]]:
    """The files of a stored message as job items (file_id, filename, content_type)."""
    try:
        count = int(headers.get("NumFiles") or 0)
    except ValueError:
        return []
    items = []
    for i in range(count):
        file_id = str(headers.get(f"FileId{i}", ""))
        if file_id:
            items.append({"file_id": file_id, "filename": str(headers.get(f"FileName{i}", "")),
                          "content_type": str(headers.get(f"FileType{i}", ""))})
    return items


def parse_update(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    try:
        update = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"the Telegram update is not JSON: {exc}") from None
    if not isinstance(update, dict) or journal_key(update) is None:
        raise ParseError("the Telegram update is not a message from a private chat")
    message = update["message"]
    user = message["from"]
    chat_id = int(message["chat"]["id"])
    text = str(message.get("text") or message.get("caption") or "") or _extra_text(message)
    headers: dict[str, str] = {"update_id": str(update.get("update_id", "")),
                               "chat_id": str(chat_id), "message_id": str(message["message_id"])}
    if user.get("username"):
        headers["username"] = str(user["username"])
    if text.startswith("/"):
        command = text[1:].split(maxsplit=1)[0].split("@", 1)[0].lower() if text[1:] else ""
        if command:
            headers[COMMAND] = command
    files = _files(message)
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
    try:
        received_at = datetime.fromtimestamp(int(message["date"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        received_at = None
    return InboundMessage(
        channel="telegram", external_id=f"{chat_id}:{message['message_id']}",
        sender_address=str(int(user["id"])), sender_name=display_name(user), subject=subject,
        text=text, received_at=received_at, headers=headers,
    )
