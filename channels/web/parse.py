"""What the website sends, as journal rows and as messages. Pure: no I/O.

A widget message and a form submission are journaled as one JSON object each (files inline,
base64), after every check; :func:`parse` turns a row back into an
:class:`~frontdesk.domain.messages.InboundMessage` and can be re-run on a dead letter.

* ``web``: ``{"kind": "web", "visitor", "client_id", "text", "email", "page", "language",
  "files": [{"name", "type", "data"}]}``; journal key ``<visitor>:<client_id>`` (a repeat of
  the same message is stored once); the sender is the visitor id (a hash of the browser's
  token, never the token itself).
* ``form``: ``{"kind": "form", "name", "email", "subject", "message", "page", "files"}``;
  journal key a hash of what was submitted (the same submission again is stored once); the
  sender is the ``email`` identity of the address given, which nobody verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from frontdesk.channels.base import ParseError
from frontdesk.channels.chat import preview
from frontdesk.domain.messages import SENDER_CHECK, Attachment, InboundMessage

WEB_EMAIL = "X-Frontdesk-Web-Email"
"""The header key (in a web message's stored headers) of the address the visitor gave."""
WEB_PAGE = "X-Frontdesk-Web-Page"
"""The header key of the page the visitor wrote from (linked in the offline mail)."""
WEB_LANGUAGE = "Content-Language"
"""The visitor's browser language (the acknowledgement's language)."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[^@\s<>()\[\],;:\".]+(\.[^@\s<>()\[\],;:\".]+)+$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def visitor_id(token: str) -> str | None:
    """The visitor id of a browser's token (43 base64url characters: 256 random bits), or None
    for anything else. The id is a hash: knowing it (staff see it) does not give the token."""
    if not _TOKEN.match(token):
        return None
    digest = hashlib.sha256(b"frontdesk-web-visitor:" + token.encode()).digest()
    return "v-" + base64.b32encode(digest[:20]).decode().lower().rstrip("=")


def valid_client_id(value: object) -> bool:
    return isinstance(value, str) and bool(_CLIENT_ID.match(value))


def clean_email(value: object) -> str | None:
    """A plausible address, lower-cased, or None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if len(text) <= 254 and _EMAIL.match(text) else None


def clean_text(value: object, limit: int) -> str:
    """Text as a person typed it: control characters other than newline and tab dropped,
    CRLF made LF, at most ``limit`` characters (ValueError past it)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be text")
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if len(text) > limit:
        raise ValueError(f"is longer than {limit} characters")
    return text


def clean_page(value: object) -> str:
    """The page a visitor wrote from: an http(s) URL of at most 2,000 characters, else ""."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if len(text) > 2000 or not re.match(r"^https?://[^\s<>\"]+$", text):
        return ""
    return text


def clean_language(value: str | None) -> str:
    """The first language of an ``Accept-Language`` header (``de-AT``), or ""."""
    first = (value or "").split(",")[0].split(";")[0].strip()
    return first if _LANGUAGE.match(first) and first != "*" else ""


def encode_files(files: Sequence[Attachment]) -> list[dict[str, str]]:
    return [{"name": f.filename, "type": f.content_type,
             "data": base64.b64encode(f.data).decode()} for f in files]


def web_row(*, visitor: str, client_id: str, text: str, email: str | None, page: str,
            language: str, files: Sequence[Attachment]) -> tuple[str, bytes]:
    """(journal key, raw row) of a visitor's message."""
    raw = {"kind": "web", "visitor": visitor, "client_id": client_id, "text": text,
           "email": email, "page": page, "language": language, "files": encode_files(files)}
    return f"{visitor}:{client_id}", json.dumps(raw, ensure_ascii=False).encode()


def form_row(*, name: str, email: str, subject: str, message: str, page: str, language: str,
             files: Sequence[Attachment]) -> tuple[str, bytes]:
    """(journal key, raw row) of a contact form submission."""
    digest = hashlib.sha256()
    for part in (name, email, subject, message):
        digest.update(part.encode() + b"\x00")
    for f in files:
        digest.update(hashlib.sha256(f.data).digest())
    raw = {"kind": "form", "name": name, "email": email, "subject": subject,
           "message": message, "page": page, "language": language,
           "files": encode_files(files)}
    return f"form-{digest.hexdigest()[:40]}", json.dumps(raw, ensure_ascii=False).encode()


def form_message_id(remote_id: str) -> str:
    """The stored id of a form submission, shaped like a Message-ID (mail replies name it in
    In-Reply-To)."""
    return f"<{remote_id}@form.frontdesk.invalid>"


def _files(raw: Mapping[str, Any]) -> tuple[Attachment, ...]:
    out = []
    for item in raw.get("files") or ():
        try:
            data = base64.b64decode(item["data"], validate=True)
            out.append(Attachment(filename=str(item["name"])[:255] or "file",
                                  content_type=str(item["type"]), data=data))
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ParseError(f"a file of the row cannot be read: {exc}") from None
    return tuple(out)


def parse(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"not a website row: {exc}") from None
    if not isinstance(data, dict):
        raise ParseError("not a website row: not an object")
    kind = data.get("kind")
    language = str(data.get("language") or "")
    files = _files(data)
    if kind == "web":
        visitor, client_id = data.get("visitor"), data.get("client_id")
        if not isinstance(visitor, str) or not valid_client_id(client_id):
            raise ParseError("a web row without its visitor or client id")
        text = str(data.get("text") or "")
        headers = {}
        if email := clean_email(data.get("email")):
            headers[WEB_EMAIL] = email
        if page := clean_page(data.get("page")):
            headers[WEB_PAGE] = page
        if language:
            headers[WEB_LANGUAGE] = language
        subject = preview(text) if text else (files[0].filename if files else "")
        return InboundMessage(
            channel="web", external_id=f"{visitor}:{client_id}", sender_address=visitor,
            subject=subject, text=text, attachments=files, headers=headers)
    if kind == "form":
        email = clean_email(data.get("email"))
        if email is None:
            raise ParseError("a form row without a valid email")
        remote = str(meta.get("remote_id") or "")
        headers = {SENDER_CHECK: "unverified"}
        if page := clean_page(data.get("page")):
            headers[WEB_PAGE] = page
        if language:
            headers[WEB_LANGUAGE] = language
        message = str(data.get("message") or "")
        return InboundMessage(
            channel="form", external_id=form_message_id(remote or _digest(raw)),
            sender_address=email, sender_name=str(data.get("name") or ""),
            subject=str(data.get("subject") or "") or preview(message),
            text=message, attachments=files, headers=headers, identity_channel="email",
            standalone=True)
    raise ParseError(f"not a website row: kind {kind!r}")


def _digest(raw: bytes) -> str:
    return "form-" + hashlib.sha256(raw).hexdigest()[:40]
