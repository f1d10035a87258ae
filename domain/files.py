"""Files staff send to customers: named and typed sensibly, stored once, reachable by signed
links.

A file given to a staff reply (attached to a Slack thread reply, ``frontdesk reply --attach``,
the REST API's ``attachments``) goes through :func:`store_files`: its name loses any folders and
control characters, its content type is the one given when that is a type, else the one its name
suggests, and its bytes go into the attachment store once (named by their SHA-256). The reply
composer then makes it an ``attachments`` row of the outbound message and names it in the
outbox payload (:class:`~frontdesk.domain.messages.OutboundFile`). Each channel checks its own
size and type limits when it sends.

Providers that fetch a file by URL (Twilio MMS and WhatsApp, Meta) are given a signed link on
``http.public_url`` (:class:`FileLinks`): ``/files/<attachment id>.<expiry>.<sha256>.<HMAC>``,
valid for :data:`LINK_LIFETIME`. The HMAC key is made with the first link and kept in the store
(:func:`load_link_key`), so every instance and every restart serves the links the others made.
A link whose HMAC does not match is answered 404 (a forgery cannot even learn whether a file
exists), an expired one 410.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from frontdesk.domain.messages import Attachment, OutboundFile
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Store
from frontdesk.storage.models import ChannelCheckpoint

MAX_FILES = 10
"""Files one staff reply may carry."""
MAX_FILE_BYTES = 100 * 1024 * 1024
"""The largest file a staff reply takes (the most any channel sends: WhatsApp documents); each
channel checks its own, smaller limit when it sends."""
LINK_PATH = "/files/"
LINK_LIFETIME = timedelta(hours=4)
"""How long a signed link works: as long as Twilio keeps a queued message (its default validity
period), so a provider that fetches late still finds the file."""
KEY_NAME = "frontdesk:file-links"
"""The ``channel_checkpoints`` row that keeps the links' HMAC key (made on first use)."""

_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_SPACES = re.compile(r"\s+")


class FileProblem(ValueError):
    """A file that cannot be sent, in words for the person who gave it."""


def clean_filename(name: str) -> str:
    """A file name fit to show and to send: no folders, no control characters, no leading dots,
    at most 200 characters (the extension kept); ``"file"`` when nothing is left."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = "".join(" " if unicodedata.category(c).startswith("C") else c
                   for c in unicodedata.normalize("NFC", base))
    base = _SPACES.sub(" ", base).strip().lstrip(".").strip()
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:200 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else base[:200]
    return base or "file"


def content_type_of(filename: str, given: str = "") -> str:
    """The content type to send a file as: ``given`` (without parameters) when it is one and more
    than ``application/octet-stream``, else the type its name suggests, else
    ``application/octet-stream``."""
    kind = (given or "").split(";", 1)[0].strip().lower()
    if _TYPE.match(kind) and kind != "application/octet-stream":
        return kind
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def store_files(files: Sequence[Attachment], store: AttachmentStore) -> list[OutboundFile]:
    """Check staff files (how many, how large, not empty), write their bytes to the attachment
    store (once: a file already there is not written again) and describe them. Blocking I/O:
    run it in a worker thread. Raises :class:`FileProblem`."""
    if len(files) > MAX_FILES:
        raise FileProblem(f"a reply carries at most {MAX_FILES} files, not {len(files)}")
    out = []
    for f in files:
        name = clean_filename(f.filename)
        if not f.data:
            raise FileProblem(f"{name} is empty")
        if len(f.data) > MAX_FILE_BYTES:
            raise FileProblem(f"{name} is {size_words(len(f.data))}, more than the "
                              f"{size_words(MAX_FILE_BYTES)} a reply's file may be")
        out.append(OutboundFile(filename=name, content_type=content_type_of(name, f.content_type),
                                size=len(f.data), sha256=store.put(f.data)))
    return out


def size_words(n: int) -> str:
    """``5242880`` → ``"5 MB"``, ``1536`` → ``"1.5 KB"`` (one decimal at most)."""
    for unit, size in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= size:
            return f"{round(n / size, 1):g} {unit}"
    return f"{n} bytes"


def file_words(file: OutboundFile | tuple[str, int]) -> str:
    """``"label.pdf (1.2 MB)"``."""
    name, size = (file.filename, file.size) if isinstance(file, OutboundFile) else file
    return f"{name} ({size_words(size)})"


# --- signed links --------------------------------------------------------------------------------

async def load_link_key(store: Store, now: datetime, *, make: bool = True) -> bytes | None:
    """The links' HMAC key, read from the store; with ``make``, made (32 random bytes) when no
    instance has made it yet. None when there is none and ``make`` is false."""
    async with store.session() as s:
        if make:
            insert = sqlite.insert if s.get_bind().dialect.name == "sqlite" else postgresql.insert
            made = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            await s.execute(insert(ChannelCheckpoint).values(
                name=KEY_NAME, value={"key": made}, updated_at=now).on_conflict_do_nothing(
                index_elements=["name"]))
        value = (await s.execute(select(ChannelCheckpoint.value).where(
            ChannelCheckpoint.name == KEY_NAME))).scalar()
    return base64.b64decode(str(value["key"])) if value else None


class LinkRefused(LookupError):
    """A link that does not give a file: ``status`` 404 (not one of ours) or 410 (expired)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class LinkedFile:
    """What a good link names: the attachments row and the file's SHA-256."""

    attachment_id: int
    sha256: str


class FileLinks:
    """Signs and checks the links to files staff send (see the module docstring). The key is
    read from the store on first use (made by the first link any instance makes)."""

    def __init__(self, public_url: str, *, store: Store, clock: Callable[[], datetime],
                 lifetime: timedelta = LINK_LIFETIME) -> None:
        self.public_url = public_url.rstrip("/")
        self._store = store
        self._clock = clock
        self._lifetime = lifetime
        self._key: bytes | None = None

    async def _key_for(self, *, make: bool) -> bytes | None:
        if self._key is None:
            self._key = await load_link_key(self._store, self._clock(), make=make)
        return self._key

    @staticmethod
    def _sign(key: bytes, body: str) -> str:
        mac = hmac.new(key, f"frontdesk-file:{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    async def url(self, file: OutboundFile) -> str:
        """A link to ``file`` on ``http.public_url``, valid for the links' lifetime. Raises
        :class:`FileProblem` when there is no public URL to link to."""
        if not self.public_url:
            raise FileProblem("http.public_url is not set, and the provider fetches the file "
                              "from there")
        if not file.id:
            raise FileProblem(f"{file.filename} is not a stored attachment")
        key = await self._key_for(make=True)
        assert key is not None
        expires = int((self._clock() + self._lifetime).timestamp())
        body = f"{file.id}.{expires}.{file.sha256}"
        return f"{self.public_url}{LINK_PATH}{body}.{self._sign(key, body)}"

    async def check(self, token: str) -> LinkedFile:
        """The file a link's token names; raises :class:`LinkRefused` (404 when it is not a
        token this store signed, 410 when it has expired)."""
        parts = token.split(".")
        if len(parts) != 4:
            raise LinkRefused(404, "no such file")
        number, expires, sha256, signature = parts
        if not (number.isascii() and number.isdigit() and len(number) <= 18
                and expires.isascii() and expires.isdigit() and len(expires) <= 12
                and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
            raise LinkRefused(404, "no such file")
        key = await self._key_for(make=False)
        if key is None:  # no link was ever made
            raise LinkRefused(404, "no such file")
        expected = self._sign(key, f"{number}.{expires}.{sha256}")
        if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
            raise LinkRefused(404, "no such file")
        if int(expires) < self._clock().timestamp():
            raise LinkRefused(410, "this link has expired")
        return LinkedFile(int(number), sha256)
