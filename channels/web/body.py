"""Reading what a browser posts, within bounds: JSON, urlencoded forms and multipart uploads.

Files count against ``max_upload_bytes`` per request, read as they stream in (nothing larger is
held in memory); fields are bounded separately (``FIELD_BYTES`` in all), so a request over
either is refused with 413 before it is read whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import BodyPartReader, web

from frontdesk.domain.messages import Attachment

FIELD_BYTES = 256 * 1024
"""All the text fields of one request together (a message is at most 100,000 characters)."""
MAX_FILES = 10


class BodyError(Exception):
    def __init__(self, status: int, reason: str, fieldname: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = fieldname


@dataclass
class Posted:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[Attachment] = field(default_factory=list)


def _too_large(max_upload_bytes: int) -> BodyError:
    return BodyError(413, f"the files are larger than {max_upload_bytes} bytes in all "
                          "(the limit of one message)")


def check_length(request: web.Request, max_upload_bytes: int) -> None:
    length = request.content_length
    if length is not None and length > max_upload_bytes + FIELD_BYTES:
        raise _too_large(max_upload_bytes)


async def _read_limited(request: web.Request, limit: int, what: BodyError) -> bytes:
    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
        if len(data) > limit:
            raise what
    return bytes(data)


async def read_json(request: web.Request) -> Any:
    raw = await _read_limited(request, FIELD_BYTES,
                              BodyError(413, f"the message is larger than {FIELD_BYTES} bytes"))
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BodyError(400, "the request body is not valid JSON") from None


async def read_posted(request: web.Request, *, max_upload_bytes: int,
                      file_fields: tuple[str, ...]) -> Posted:
    """The fields (the first value of each) and files of an urlencoded or multipart POST."""
    check_length(request, max_upload_bytes)
    kind = request.content_type
    posted = Posted()
    if kind == "application/x-www-form-urlencoded":
        raw = await _read_limited(request, FIELD_BYTES,
                                  BodyError(413, f"the form is larger than {FIELD_BYTES} bytes"))
        try:
            values = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise BodyError(400, "the form is not valid UTF-8 url-encoded data") from None
        posted.fields = {k: v[0] for k, v in values.items()}
        return posted
    if kind != "multipart/form-data":
        raise BodyError(415, "send the form as multipart/form-data or "
                             "application/x-www-form-urlencoded")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError):
        raise BodyError(400, "the multipart body cannot be read") from None
    field_bytes = 0
    file_bytes = 0
    parts = 0
    while True:
        try:
            part = await reader.next()
        except (ValueError, AssertionError):
            raise BodyError(400, "the multipart body cannot be read") from None
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BodyError(400, "nested multipart bodies are not accepted")
        parts += 1
        if parts > 60:
            raise BodyError(400, "too many parts in one form")
        name = part.name or ""
        if name in file_fields and part.filename is not None:
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                data += chunk
                file_bytes += len(chunk)
                if file_bytes > max_upload_bytes:
                    raise _too_large(max_upload_bytes)
            if not data and not part.filename:
                continue  # an empty file input
            if len(posted.files) >= MAX_FILES:
                raise BodyError(400, f"at most {MAX_FILES} files in one message", name)
            posted.files.append(Attachment(filename=_file_name(part.filename),
                                           content_type="", data=bytes(data)))
            continue
        value = bytearray()
        while chunk := await part.read_chunk(16384):
            value += chunk
            field_bytes += len(chunk)
            if field_bytes > FIELD_BYTES:
                raise BodyError(413, f"the form's fields are larger than {FIELD_BYTES} bytes")
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError(400, "is not valid UTF-8 text", name) from None
        posted.fields.setdefault(name, text)
    return posted


def _file_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*')[:200]
    return cleaned.strip(" .") or "file"
