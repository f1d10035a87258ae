"""Turn a raw email into the channel-neutral :class:`InboundMessage`.

Two entry points with different budgets:

* :func:`remote_id_for` runs on the SMTP hot path, before the 250: it only scans the header
  block (up to the first blank line) for the Message-ID and, when there is none, hashes the
  mail minus the trace headers relays add, so a resend through another relay keeps its key.
* :func:`parse_email` runs right after the journal commit, for every mail. It is pure (no I/O)
  and never raises for a damaged mail that is not empty: bad boundaries, truncated base64,
  unknown charsets and 8-bit header bytes give a best-effort message, and a mail that names no
  sender address (a bounce from ``Mail Delivery System <>``) is automated mail from the
  placeholder ``mailer-daemon@<the inbox domain>``. Its time and memory are bounded whatever
  the mail: at most ``email.max_mime_parts`` parts are read (the stdlib's tree parser is given
  a planned input, see "reading the MIME tree, bounded"), nested to any depth without
  recursion, and at most ``email.max_attachments`` attachments kept; what was left out is said
  in a note at the end of the text, which names the journal row that keeps the whole mail.

The MIME tree is parsed with ``email.policy.compat32`` and the few headers we need are decoded
here (RFC 2047 words, RFC 2231 parameters, 8-bit bytes), because ``policy.default`` costs
several times more per message. Body and attachment selection mirror what
``EmailMessage.get_body(('plain', 'html'))`` and ``iter_attachments`` would choose; the tests
check the two agree on a corpus of messages.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import logging
import mimetypes
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from email import policy as email_policy
from email.errors import HeaderParseError, MissingHeaderBodySeparatorDefect
from email.generator import BytesGenerator
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value, getaddresses
from html.parser import HTMLParser
from io import BytesIO
from typing import Any

from frontdesk.channels.base import ParseError
from frontdesk.channels.email import EmailConfig
from frontdesk.channels.email.auth_results import sender_verdict
from frontdesk.channels.email.automated import HEADERS as AUTOMATED_HEADERS
from frontdesk.channels.email.automated import automated_reason, is_null_sender
from frontdesk.channels.email.dsn import read_report
from frontdesk.channels.email.mime import Tree, later_text, read_tree
from frontdesk.channels.email.quotes import new_part
from frontdesk.domain.cc import MAX_CC, clean_address
from frontdesk.domain.messages import SENDER_CHECK, Attachment, InboundMessage

__all__ = ["html_to_text", "parse_email", "remote_id_for"]

log = logging.getLogger(__name__)

_PARSER = BytesParser(policy=email_policy.compat32)

# Column widths in storage/models.py: keep what we produce inside them (PostgreSQL enforces).
_MAX_ID = 500
_MAX_SUBJECT = 998
_MAX_NAME = 256
_MAX_FILENAME = 255
_MAX_CONTENT_TYPE = 255

# --- the idempotency key ------------------------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_HEADER_NAME = re.compile(rb"[!-9;-~]+")
_WSP_BYTES = re.compile(rb"[ \t]+")

# Headers that relays add or rewrite; left out of the content hash of a mail without Message-ID.
_TRACE_HEADERS = frozenset({
    b"received", b"return-path", b"delivered-to", b"x-original-to", b"dkim-signature",
    b"authentication-results", b"x-received", b"received-spf",
})
_TRACE_PREFIXES = (b"arc-", b"x-spam-")


def _split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """The header block (without the blank line) and the body, without parsing anything."""
    if raw.startswith(b"\n"):
        return b"", raw[1:]
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[: match.start()], raw[match.end():]


def _scan_headers(block: bytes) -> list[tuple[bytes, bytes, list[bytes]]]:
    """Unfolded headers of a raw header block as (lower-case name, value, original lines).

    Lines that are neither a header nor a continuation (a mbox "From " line, garbage) are
    dropped, and so are continuation lines that follow them.
    """
    headers: list[tuple[bytes, bytes, list[bytes]]] = []
    current: tuple[bytes, bytes, list[bytes]] | None = None
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current = (current[0], current[1] + line, current[2] + [line])
                headers[-1] = current
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            current = None
            continue
        current = (name.lower(), value, [line])
        headers.append(current)
    return headers


def _is_trace(name: bytes) -> bool:
    return name in _TRACE_HEADERS or name.startswith(_TRACE_PREFIXES)


def _msgid_from(value: str) -> str:
    """The id inside the first <...> (or the first word), whitespace removed."""
    start = value.find("<")
    if start != -1:
        end = value.find(">", start + 1)
        inner = value[start + 1 : end] if end != -1 else value[start + 1 :]
    else:
        words = value.split()
        inner = words[0] if words else ""
    return "".join(inner.split())


def _id_key(msgid: str) -> str:
    """Keep an id inside the column: an absurdly long one is replaced by its hash."""
    if len(msgid) <= _MAX_ID:
        return msgid
    digest = hashlib.sha256(msgid.encode("utf-8", "replace")).hexdigest()
    return f"sha256-{digest}@frontdesk.invalid"


def remote_id_for(raw: bytes) -> str:
    """The idempotency key of a raw mail: its Message-ID without brackets, else a content hash.

    Cheap on purpose (it runs before the SMTP 250): only the header block is scanned. Without a
    Message-ID the key is ``sha256-<hex>@frontdesk.invalid`` over the unfolded headers minus
    trace headers (Received, Return-Path, DKIM/ARC, ...) and the body, line ends normalised, so
    a copy that came through another relay maps to the same key.
    """
    block, body = _split_header_block(raw)
    match = _MESSAGE_ID.search(block)
    if match is not None:
        msgid = _msgid_from(match.group(1).decode("utf-8", "replace"))
        if msgid:
            return _id_key(msgid)
    digest = hashlib.sha256()
    for name, value, _lines in _scan_headers(block):
        if name == b"message-id" or _is_trace(name):
            continue
        digest.update(name + b":" + _WSP_BYTES.sub(b" ", value).strip() + b"\n")
    digest.update(b"\n")
    digest.update(body.replace(b"\r\n", b"\n").rstrip())
    return f"sha256-{digest.hexdigest()}@frontdesk.invalid"


# --- charsets and header decoding ---------------------------------------------------------------

# Labels that are routinely wrong in mail: decode with the superset (as browsers do).
_CHARSET_SUPERSETS = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "x-sjis": "cp932", "shift_jis": "cp932",
    "utf8": "utf-8", "x-unknown": "", "unknown-8bit": "", "x-user-defined": "",
}


@functools.lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """The Python codec for a declared charset, or None when missing or unknown."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_SUPERSETS.get(label, label)
    if not label:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, ... are not charsets
        return None
    return info.name


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, else UTF-8, then Windows-1252/Latin-1. Never raises."""
    codec = _codec(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError):
            pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None and codec not in ("ascii", "cp1252"):
        # A multi-byte charset with a few bad bytes: keep the rest of the text.
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, LookupError):
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _charset_param(part: Message) -> str | None:
    value = part.get_param("charset")
    if value is None:
        return None
    if isinstance(value, tuple):
        value = collapse_rfc2231_value(value)
    return str(value)


_FOLD = re.compile(r"\r?\n(?=[ \t])")
_WS = re.compile(r"\s+")


def _recover(value: Any) -> str:
    """A raw compat32 header value as text: 8-bit bytes decoded, folds removed."""
    text = str(value)
    if not text.isascii():
        # compat32 keeps 8-bit header bytes as surrogate escapes.
        text = _decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    if "\n" in text or "\r" in text:
        text = _FOLD.sub("", text).replace("\r", " ").replace("\n", " ")
    return text


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (any charset, never raising)."""
    if "=?" not in value:
        return value
    try:
        parts = decode_header(value)
    except (HeaderParseError, ValueError, LookupError):
        return value
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(_decode_bytes(chunk, charset.split("*", 1)[0]))
    return "".join(out)


def _display(value: str, limit: int | None = None) -> str:
    text = _WS.sub(" ", _decode_words(value)).strip().replace("\x00", "")
    return text[:limit] if limit else text


def _addr(value: str) -> str:
    address = "".join(value.split()).strip("<>").lower()
    return address if "@" in address.strip("@") else ""


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """(decoded display name, lower-case address) pairs of address headers; junk skipped."""
    out = []
    for name, address in getaddresses(list(values)):
        address = _addr(address)
        if address:
            out.append((_display(name, _MAX_NAME), address))
    return out


def _envelope_address(value: Any) -> str:
    return _addr(str(value)) if value else ""


_BARE_LOCAL = re.compile(r"[a-z0-9][a-z0-9._+-]*")


def _unaddressed_sender(values: Iterable[str]) -> tuple[str, str]:
    """(display name, bare local part) of a From/Sender without an address: ``Mail Delivery
    System <>`` gives the name, ``MAILER-DAEMON`` (no domain) the local part."""
    for name, address in getaddresses(list(values)):
        local = "".join(address.split()).strip("<>").lower()
        if name.strip() or local:
            return (_display(name, _MAX_NAME),
                    local if _BARE_LOCAL.fullmatch(local) else "")
    return "", ""


_PLACEHOLDER_LOCAL = "mailer-daemon"
"""The local part of the sender identity given to mail with no sender address at all."""
_PLACEHOLDER_NAME = "Mail Delivery System"
_PLACEHOLDER_FALLBACK_DOMAIN = "frontdesk.invalid"


def _placeholder_address(inbox_address: str | None, inbox_addresses: Sequence[str],
                         own_domains: Sequence[str]) -> str:
    """``mailer-daemon@<the inbox domain>``: the domain of the inbox address the mail was sent
    to, else of the first inbox address, else of our own mail, else ``frontdesk.invalid``."""
    for address in (inbox_address, *inbox_addresses):
        domain = (address or "").rpartition("@")[2].strip().lower()
        if domain:
            return f"{_PLACEHOLDER_LOCAL}@{domain}"
    domain = next((d.strip().lower() for d in own_domains if d.strip()),
                  _PLACEHOLDER_FALLBACK_DOMAIN)
    return f"{_PLACEHOLDER_LOCAL}@{domain}"


def _copied(addressed: Iterable[str], inboxes: Mapping[str, str],
            sender: str) -> tuple[str, ...]:
    """The other people a mail was written to (its To, then Cc addresses), for the
    conversation's CC list: plain addresses only (:func:`~frontdesk.domain.cc.clean_address`),
    never our inbox addresses or their plus-addresses, nor the sender; at most ``MAX_CC``."""
    out: list[str] = []
    for address in addressed:
        local, _, domain = address.rpartition("@")
        if address in inboxes or f"{local.partition('+')[0]}@{domain}" in inboxes:
            continue
        clean = clean_address(address)
        if clean is None or clean == sender or clean in out:
            continue
        out.append(clean)
        if len(out) >= MAX_CC:
            break
    return tuple(out)


# --- the MIME tree ------------------------------------------------------------------------------

_BODY_TYPES = ("plain", "html")


def _subparts(part: Message) -> list[Message]:
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [sub for sub in payload if isinstance(sub, Message)]


def _related_root(part: Message) -> Message | None:
    subparts = _subparts(part)
    start = part.get_param("start")
    if start:
        for sub in subparts:
            if sub.get("content-id") == start:
                return sub
    return subparts[0] if subparts else None


def _find_bodies(msg: Message) -> tuple[Message | None, Message | None]:
    """The first inline text/plain and text/html parts, as ``EmailMessage.get_body`` walks
    (depth first, at any depth: the walks of the tree here never recurse)."""
    found: dict[str, Message] = {}
    todo = [msg]
    while todo and len(found) < 2:
        part = todo.pop()
        if part.get_content_disposition() == "attachment":
            continue
        maintype, _, subtype = part.get_content_type().partition("/")
        if maintype == "text":
            if subtype in _BODY_TYPES:
                found.setdefault(subtype, part)
            continue
        if maintype != "multipart" or not part.is_multipart():
            continue
        if subtype == "related":
            root = _related_root(part)
            if root is not None:
                todo.append(root)
            continue
        todo.extend(reversed(_subparts(part)))
    return found.get("plain"), found.get("html")


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    return _decode_bytes(data, _charset_param(part))


_PATH_SEPARATORS = re.compile(r"[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _filename(part: Message) -> str:
    """The decoded filename of a part (RFC 2231, RFC 2047, 8-bit), path components removed."""
    value: Any = part.get_param("filename", None, "content-disposition")
    if value is None:
        value = part.get_param("name", None, "content-type")
    if value is None:
        return ""
    if isinstance(value, tuple):
        charset, _language, text = value
        if _codec(charset) is not None:
            name = collapse_rfc2231_value(value)
        else:  # unknown charset: recover the bytes, decode them our way
            name = _decode_bytes(str(text).encode("latin-1", "replace"), None)
    else:
        name = collapse_rfc2231_value(value)
    name = _decode_words(_recover(name))
    name = _PATH_SEPARATORS.split(name)[-1]
    name = _CONTROL.sub("", name).strip()
    return name[:_MAX_FILENAME]


_EXTENSIONS = {
    "application/octet-stream": ".bin", "application/pdf": ".pdf", "image/jpeg": ".jpg",
    "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp", "text/plain": ".txt",
    "text/html": ".html", "text/calendar": ".ics", "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml", "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt", "audio/mpeg": ".mp3", "video/mp4": ".mp4",
}


def _extension(content_type: str) -> str:
    ext = _EXTENSIONS.get(content_type)
    if ext is None:
        ext = mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return ext


_MAX_GENERATOR_DEPTH = 64
"""``BytesGenerator`` recurses a few frames per level: a forwarded mail nested deeper than this
is written out by :func:`_flatten`, which does not."""


def _deeper_than(part: Message, limit: int) -> bool:
    todo = [(part, 1)]
    while todo:
        part, depth = todo.pop()
        if depth > limit:
            return True
        todo.extend((sub, depth + 1) for sub in _subparts(part))
    return False


def _as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # compat32 keeps 8-bit bytes as surrogates


def _flatten(msg: Message, linesep: str) -> bytes:
    """A message as ``BytesGenerator`` writes it, near enough (headers as they came, payloads
    as they are), without recursing."""
    nl = linesep.encode()
    out: list[bytes] = []
    todo: list[Message | bytes] = [msg]
    while todo:
        item = todo.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        out += [_as_bytes(f"{name}: {value}") + nl for name, value in item.raw_items()]
        out.append(nl)
        payload = getattr(item, "_payload", None)  # as read (get_payload() decodes 8-bit text)
        if not isinstance(payload, list):
            out.append(_as_bytes(str(payload or "")))
            continue
        subs = [sub for sub in payload if isinstance(sub, Message)]
        then: list[Message | bytes] = []
        if item.get_content_maintype() == "multipart":
            marker = b"--" + _as_bytes(item.get_boundary() or "")
            if item.preamble is not None:
                then.append(_as_bytes(item.preamble) + nl)
            for index, sub in enumerate(subs):
                then += [(nl if index else b"") + marker + nl, sub]
            then.append(nl + marker + b"--" + nl)
            if item.epilogue is not None:
                then.append(_as_bytes(item.epilogue))
        else:
            for index, sub in enumerate(subs):
                then += [nl, sub] if index else [sub]
        todo.extend(reversed(then))
    return b"".join(out)


def _message_bytes(part: Message, linesep: str) -> bytes:
    """The bytes of a message/* part's payload (a forwarded mail, a delivery status)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""
    subs = [sub for sub in payload if isinstance(sub, Message)]
    if not any(_deeper_than(sub, _MAX_GENERATOR_DEPTH) for sub in subs):
        buffer = BytesIO()
        generator = BytesGenerator(buffer, mangle_from_=False,
                                   policy=email_policy.compat32.clone(linesep=linesep))
        try:
            for sub in subs:
                generator.flatten(sub, linesep=linesep)
            return buffer.getvalue()
        except RecursionError:  # called on a deep stack already
            pass
    return b"".join(_flatten(sub, linesep) for sub in subs)


def _collect_attachments(msg: Message, bodies: tuple[Message | None, ...], linesep: str,
                         limit: int) -> tuple[list[Attachment], int]:
    """Every leaf that is not the chosen body, in document order (message/* not entered): the
    first ``limit`` of them, and how many there are."""
    attachments: list[Attachment] = []
    count = 0
    todo = [(msg, False)]
    while todo:
        part, under_alternative = todo.pop()
        content_type = part.get_content_type()
        maintype, _, subtype = content_type.partition("/")
        if maintype == "multipart":
            under = under_alternative or subtype == "alternative"
            todo.extend((sub, under) for sub in reversed(_subparts(part)))
            continue
        if any(part is body for body in bodies):
            continue
        filename = _filename(part)
        # An alternative rendering is not an attachment; an extra inline text part
        # (a body split around an image, a list footer) is kept so nothing is lost.
        if (maintype == "text" and subtype in _BODY_TYPES and under_alternative
                and not filename and part.get_content_disposition() != "attachment"):
            continue
        count += 1
        if len(attachments) >= limit:
            continue
        if maintype == "message":
            data = _message_bytes(part, linesep)
            if subtype == "rfc822" and not filename:
                filename = "forwarded.eml"
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
        if not filename:
            filename = f"attachment-{len(attachments) + 1}{_extension(content_type)}"
        attachments.append(Attachment(filename, content_type[:_MAX_CONTENT_TYPE], data))
    return attachments, count


# --- HTML to text -------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template"})
_PARAGRAPH_TAGS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "dl", "hr",
    "address", "figure", "fieldset",
})
_LINE_TAGS = frozenset({
    "div", "li", "tr", "dt", "dd", "section", "article", "aside", "header", "footer", "nav",
    "main", "center", "form", "caption", "figcaption", "details", "summary", "tbody", "thead",
    "tfoot", "dir", "menu",
})
_CELL_TAGS = frozenset({"td", "th"})


class _TextExtractor(HTMLParser):
    """Collects the readable text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._newlines = 0  # how many newlines the output ends with
        self._space = True  # the output ends with whitespace (or is empty)
        self._skip: list[str] = []
        self._pre = 0
        self._links: list[tuple[str, int]] = []

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        stripped = text.rstrip("\n")
        self._newlines = len(text) - len(stripped) if stripped else self._newlines + len(text)
        self._space = text[-1].isspace()

    def _break(self, count: int) -> None:
        if self.parts and self._newlines < count:
            self._emit("\n" * (count - self._newlines))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip.clear()  # a <head> that was never closed
            return
        if tag in _SKIP_TAGS:
            self._skip.append(tag)
            return
        if self._skip:
            return
        if tag == "br":
            self._emit("\n")
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self._pre += 1
            elif tag == "hr":
                self._emit("----")
                self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)
            if tag == "li":
                self._emit("- ")
        elif tag in _CELL_TAGS:
            if not self._space:
                self._emit(" ")
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self._links.append((href.strip(), len(self.parts)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            if tag in self._skip:
                del self._skip[len(self._skip) - 1 - self._skip[::-1].index(tag):]
            return
        if self._skip:
            return
        if tag in _PARAGRAPH_TAGS:
            if tag == "pre" and self._pre:
                self._pre -= 1
            self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            target = href[7:] if href.lower().startswith("mailto:") else href
            if (label and href.lower().startswith(("http://", "https://", "mailto:"))
                    and label not in (href, target)):
                self._emit(f" ({target})")

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._pre:
            self._emit(data.replace("\r\n", "\n"))
            return
        text = _WS.sub(" ", data)
        if self._space:
            text = text.lstrip(" ")
        self._emit(text)


_TAG = re.compile(r"<[^>]*>")
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: scripts, styles and the head dropped, block elements and
    ``<br>`` as line breaks, entities decoded, whitespace tidied."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
        text = "".join(extractor.parts)
    except Exception:  # html.parser is lenient, but never fail a mail on its markup
        log.debug("html.parser gave up; stripping tags", exc_info=True)
        import html as html_module

        text = html_module.unescape(_TAG.sub(" ", html))
    lines = [line.replace("\xa0", " ").rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


# --- subject, references, automation -----------------------------------------------------------

_TOKEN = re.compile(r"\[FD-(\d{1,18})\]", re.IGNORECASE)
_PREFIX = re.compile(r"^(?:(?:re|fwd?|fw|aw|wg|sv)(?:\s*\[\d+\]|\s*\(\d+\))?\s*:\s*)+",
                     re.IGNORECASE)
_PLUS_TAG = re.compile(r"fd-(\d{1,18})", re.IGNORECASE)


def _clean_subject(subject: str) -> str:
    subject = _TOKEN.sub(" ", subject)
    subject = _WS.sub(" ", subject).strip()
    return _PREFIX.sub("", subject).strip()


def _message_ids(values: Iterable[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        found = re.findall(r"<([^<>]*)>", value)
        if not found:
            found = [word for word in re.split(r"[\s,]+", value) if "@" in word]
        for item in found:
            msgid = _id_key("".join(item.split()))
            if msgid and msgid not in ids:
                ids.append(msgid)
    return ids


# --- what could not be read -------------------------------------------------------------------
_BOUNDARY_LINE = re.compile(r"--\S+\s*")
_MAX_RAW_TEXT = 100_000


def _unread_tree(raw: bytes) -> Tree:
    """The tree of a mail whose structure could not be read at all (a safety net; it takes a
    bug): its top headers, and as text its raw body without boundary lines and part headers."""
    block, body = _split_header_block(raw)
    tree = Tree(_PARSER.parsebytes(block + b"\n\n", headersonly=True))
    lines: list[str] = []
    in_headers = False
    for line in _decode_bytes(body[:_MAX_RAW_TEXT], None).splitlines():
        if _BOUNDARY_LINE.fullmatch(line):
            in_headers = True
        elif in_headers:
            in_headers = bool(line.strip())
        else:
            lines.append(line)
    tree.raw_text = "\n".join(lines)
    return tree


def _limits_note(tree: Tree, max_parts: int, attachments: int, max_attachments: int,
                 journal_id: Any) -> str | None:
    """What the staff should know was left out (the raw mail has it all), or None."""
    said: list[str] = []
    if tree.raw_text is not None:
        said.append("the MIME structure of this mail could not be read; the text above is "
                    "its raw body.")
    if tree.cut:
        said.append(f"this mail has more than {max_parts:,} MIME parts; only the first "
                    f"{max_parts:,} were read.")
    if attachments > max_attachments:
        left = attachments - max_attachments
        if tree.cut:
            said.append(f"Of the {attachments:,} attachments read, only the first "
                        f"{max_attachments:,} are attached here ({left:,} left out).")
        else:
            said.append(f"this mail has {attachments:,} attachments; only the first "
                        f"{max_attachments:,} are attached here ({left:,} left out).")
    if not said:
        return None
    said.append(f"The whole mail is kept as journal #{journal_id}." if journal_id is not None
                else "The whole mail is kept in the journal.")
    return "[frontdesk: " + " ".join(said) + "]"


# --- parse_email --------------------------------------------------------------------------------

_WANTED = frozenset({
    "from", "sender", "to", "cc", "subject", "message-id", "date", "in-reply-to", "references",
    "reply-to", "auto-submitted", "precedence", "list-id", "list-unsubscribe", "x-autoreply",
    "x-autorespond", "x-autoresponse", "x-auto-response-suppress", "x-failed-recipients",
    "return-path", "x-loop", "original-message-id", "authentication-results",
}) | AUTOMATED_HEADERS
_KEPT_HEADERS = (
    ("message-id", "Message-ID"), ("from", "From"), ("to", "To"), ("cc", "Cc"),
    ("subject", "Subject"), ("date", "Date"), ("in-reply-to", "In-Reply-To"),
    ("references", "References"), ("reply-to", "Reply-To"), ("auto-submitted", "Auto-Submitted"),
    ("precedence", "Precedence"), ("list-id", "List-Id"),
)


def _parse_tree(raw: bytes, max_parts: int) -> Tree:
    tree = read_tree(raw, max_parts)
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in tree.root.defects):
        cleaned = _without_garbage_header_lines(raw)
        if cleaned is not None:
            tree = read_tree(cleaned, max_parts)
    return tree


def _without_garbage_header_lines(raw: bytes) -> bytes | None:
    """The mail without junk lines in its header block, if real headers follow the junk
    (otherwise the junk is the body's first line after a missing blank line: keep it)."""
    block, body = _split_header_block(raw)
    sep = b"\r\n" if b"\r\n" in block else b"\n"
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    kept: list[bytes] = []
    garbage = False
    header_after_garbage = False
    previous_kept = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if previous_kept:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        if colon and _HEADER_NAME.fullmatch(name):
            kept.append(line)
            previous_kept = True
            header_after_garbage = header_after_garbage or garbage
        else:
            garbage = True
            previous_kept = False
    if not header_after_garbage:
        return None
    return sep.join(kept) + sep + sep + body


def _clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").rstrip()
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a broken escape
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _received_at(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            log.warning("meta received_at %r is not an ISO date; ignored", value)
    return None


def parse_email(raw: bytes, meta: Mapping[str, Any], inbox_addresses: Sequence[str], *,
                own_domains: Sequence[str] = (),
                reply_languages: Sequence[str] = ("en",),
                trusted_authserv_ids: Sequence[str] = (),
                max_mime_parts: int = 1000, max_attachments: int = 100) -> InboundMessage:
    """Parse a raw mail into an :class:`InboundMessage` (pure, no I/O).

    ``meta`` may hold ``mail_from`` (envelope sender; ``"<>"``/``""`` is the null sender),
    ``rcpt_tos``, ``received_at`` (ISO string) and ``journal_id``; mail read over IMAP has no
    envelope. ``own_domains`` are the domains of frontdesk's own Message-IDs (mail of ours that
    comes back is automated); ``trusted_authserv_ids`` are the authserv-ids of the mail servers
    in front whose ``Authentication-Results`` count (the verdict is kept in the headers under
    :data:`SENDER_CHECK`); ``reply_languages`` are the languages of the quote headers looked
    for to split off a reply's new part. Raises :class:`ParseError` only for an empty mail.

    The sender is the first address of From, else of Sender, else the envelope sender (over
    IMAP, which has no envelope: the Return-Path). Mail with no sender address at all (a bounce
    with the null sender and ``From: Mail Delivery System <>``, ``From: MAILER-DAEMON`` or no
    From) is nobody's to answer: it gets the placeholder identity
    ``mailer-daemon@<the inbox domain>`` (named "Mail Delivery System" unless its From gives a
    name) and is automated.

    Time and memory are bounded whatever the mail (``email.max_mime_parts`` and
    ``email.max_attachments``): at most ``max_mime_parts`` MIME parts are read, nested to any
    depth, and at most ``max_attachments`` attachments kept; what was left out is said in a
    note at the end of the text, which names the journal row that keeps the whole mail.
    """
    if not raw or not raw.strip():
        raise ParseError("empty message")
    args = (meta, inbox_addresses, own_domains, reply_languages, trusted_authserv_ids,
            max_mime_parts, max_attachments)
    try:
        return _message(raw, _parse_tree(raw, max_mime_parts), *args)
    except Exception as exc:  # a damaged mail is stored, never made a dead letter
        log.warning("journal #%s: the MIME structure of the mail could not be read (%s: %s); "
                    "its text is the raw body", meta.get("journal_id"), type(exc).__name__,
                    str(exc)[:200], exc_info=not isinstance(exc, RecursionError | MemoryError))
        return _message(raw, _unread_tree(raw), *args)


def _message(raw: bytes, tree: Tree, meta: Mapping[str, Any], inbox_addresses: Sequence[str],
             own_domains: Sequence[str], reply_languages: Sequence[str],
             trusted_authserv_ids: Sequence[str], max_mime_parts: int,
             max_attachments: int) -> InboundMessage:
    msg = tree.root
    headers: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key in _WANTED:
            headers.setdefault(key, []).append(_recover(value))

    envelope = meta.get("mail_from")
    envelope_str = None if envelope is None else str(envelope)
    sender_name, sender_address = "", ""
    for key in ("from", "sender"):
        found = _addresses(headers.get(key, ()))
        if found:
            sender_name, sender_address = found[0]
            break
    if not sender_address:
        sender_address = _envelope_address(
            envelope_str if envelope_str is not None else
            next(iter(headers.get("return-path", [])), None))
    unaddressed = not sender_address
    robot_sender = sender_address  # what the automation and bounce checks look at
    if unaddressed:
        sender_name, robot_sender = _unaddressed_sender(
            headers.get("from", []) + headers.get("sender", []))

    subject_raw = _display(headers["subject"][0]) if "subject" in headers else ""
    token = _TOKEN.search(subject_raw)
    subject = _clean_subject(subject_raw)[:_MAX_SUBJECT]

    recipients: list[str] = []
    addressed = [a for _n, a in _addresses(headers.get("to", []) + headers.get("cc", []))]
    for address in addressed:
        if address not in recipients:
            recipients.append(address)
    for rcpt in meta.get("rcpt_tos") or ():
        address = _envelope_address(rcpt)
        if address and address not in recipients:
            recipients.append(address)

    inboxes = {address.strip().lower(): address.strip() for address in inbox_addresses}
    inbox_address: str | None = None
    hint: int | None = None
    for address in recipients:
        local, _, domain = address.rpartition("@")
        base_local, plus, tag = local.partition("+")
        base = inboxes.get(address) or inboxes.get(f"{base_local}@{domain}")
        if base is None:
            continue
        if inbox_address is None:
            inbox_address = base
        if hint is None and plus and f"{base_local}@{domain}" in inboxes:
            match = _PLUS_TAG.fullmatch(tag)
            if match:
                hint = int(match.group(1))

    copied = _copied(addressed, inboxes, sender_address)

    plain_part, html_part = _find_bodies(msg)
    if plain_part is None and html_part is None and tree.rest:
        later = later_text(tree.rest, max_mime_parts)  # text in what was not read
        if later is not None and later.get_content_subtype() == "html":
            html_part = later
        elif later is not None:
            plain_part = later
    text = _clean_text(_part_text(plain_part)) if plain_part is not None else ""
    html = _clean_text(_part_text(html_part)) if html_part is not None else None
    if not text and html:
        text = html_to_text(html)
    if (plain_part is None and html_part is None and msg.get_content_maintype() == "multipart"
            and not msg.is_multipart()):
        # A multipart whose boundary never appears: show what is there rather than nothing.
        text = _clean_text(_part_text(msg))
    if not text and tree.raw_text:
        text = _clean_text(tree.raw_text)

    first_line = raw[: raw.find(b"\n") + 1]
    linesep = "\r\n" if first_line.endswith(b"\r\n") else "\n"  # for regenerated parts
    attachments, attachment_count = _collect_attachments(msg, (plain_part, html_part), linesep,
                                                         max_attachments)

    kept = {}
    for key, label in _KEPT_HEADERS:
        values = headers.get(key)
        if values:
            joined = ", ".join(values) if key in ("to", "cc") else values[0]
            kept[label] = _display(joined)

    kept[SENDER_CHECK] = ("unverified" if unaddressed else sender_verdict(
        headers.get("authentication-results", ()), trusted_authserv_ids, sender_address)
        or "unverified")
    reason = automated_reason(
        headers, msg, envelope=envelope_str, envelope_address=_envelope_address(envelope_str),
        sender=robot_sender, sender_name=sender_name, subject=subject_raw, text=text,
        message_ids=_message_ids(headers.get("message-id", [])), own_domains=own_domains)
    if unaddressed:  # nobody to answer: a placeholder identity, and never acknowledged
        reason = reason or "no sender address"
        sender_address = _placeholder_address(inbox_address, inbox_addresses, own_domains)
        sender_name = sender_name or _PLACEHOLDER_NAME
    report = read_report(msg, headers, text, sender=robot_sender,
                         null_sender=is_null_sender(envelope_str, headers), subject=subject_raw,
                         sender_name=sender_name)
    thread_refs = _message_ids(headers.get("in-reply-to", []) + headers.get("references", []))
    if report is not None:
        thread_refs += [i for i in report.original_ids if i not in thread_refs]
    journal_id = meta.get("journal_id")
    text_new = new_part(text, reply_languages)
    note = _limits_note(tree, max_mime_parts, attachment_count, max_attachments, journal_id)
    if note is not None:  # the staff see what was left out (the desk shows text_new first)
        text = f"{text}\n\n{note}" if text else note
        text_new = f"{text_new}\n\n{note}" if text_new is not None else None
    return InboundMessage(
        channel="email",
        external_id=remote_id_for(raw),
        sender_address=sender_address,
        sender_name=sender_name,
        subject=subject,
        text=text,
        html=html,
        attachments=tuple(attachments),
        thread_refs=tuple(thread_refs),
        conversation_hint=hint,
        subject_token=int(token.group(1)) if token else None,
        recipients=tuple(recipients),
        inbox_address=inbox_address,
        received_at=_received_at(meta.get("received_at")),
        automated=reason is not None,
        automated_reason=reason,
        headers=kept,
        raw_ref=int(journal_id) if journal_id is not None else None,
        text_new=text_new,
        delivery_report=report,
        cc=copied,
    )


def email_parser(config: EmailConfig,
                 own_domains: Sequence[str]) -> Callable[[bytes, Mapping[str, Any]],
                                                         InboundMessage]:
    """:func:`parse_email` with the ``[email]`` settings (the same for mail that came in over
    SMTP and mail read from an IMAP mailbox)."""
    return functools.partial(
        _parse_with, inbox_addresses=tuple(config.inbox_addresses),
        own_domains=tuple(own_domains), reply_languages=tuple(config.reply_languages),
        trusted_authserv_ids=tuple(config.trusted_authserv_ids),
        max_mime_parts=config.max_mime_parts, max_attachments=config.max_attachments)


def _parse_with(raw: bytes, meta: Mapping[str, Any], *, inbox_addresses: Sequence[str],
                **options: Any) -> InboundMessage:
    return parse_email(raw, meta, inbox_addresses, **options)
