"""The website's gate: which origins may call, who the client is, how often, what files.

* Origin: a browser names the page's origin on every cross-origin request and on every POST;
  one not in ``web.allowed_origins`` (nor the daemon's own ``http.public_url``) gets 403, and
  only allowed ones get CORS headers.
* Client address: the connecting IP; ``X-Forwarded-For`` only when that IP is one of
  ``http.trusted_proxies`` (then the last address in it that is no trusted proxy).
* Rate limits: sliding windows counted in this process, per key (a visitor, an address).
* Files: the type is read from the bytes, not from what the browser claims; images, PDF, plain
  text and office documents are taken, anything else (HTML, SVG, programs) is refused.
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterable, Sequence

from aiohttp import web

from frontdesk.channels.connections import client_key, networks_matcher
from frontdesk.config.schema import parse_rate


class OriginPolicy:
    """The origins allowed to embed the widget and post to the website routes."""

    def __init__(self, allowed: Iterable[str], own: str = "") -> None:
        self.allowed = frozenset(allowed) | ({own} if own else frozenset())

    def refused(self, request: web.Request) -> bool:
        """A request from a browser page of another origin (no ``Origin``: not a browser's
        cross-origin call, nothing to refuse)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return False
        return origin not in self.allowed and origin != _own_origin(request)

    def cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not self.refused(request):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Max-Age"] = "600"
        response.headers["Vary"] = "Origin"


def _own_origin(request: web.Request) -> str:
    """The origin the daemon is reached at (``/web/demo`` on a daemon without public_url)."""
    return f"{request.scheme}://{request.host}"


class ClientAddress:
    """The client's address: the peer, or through a trusted proxy its X-Forwarded-For."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._trusted = networks_matcher(trusted_proxies)
        self._any = bool(trusted_proxies)

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or ""
        if not self._any or not self._trusted(peer):
            return client_key(peer)
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._trusted(hop):
                return client_key(hop)
        return client_key(peer)


class RateWindows:
    """At most N events per window per key, for each of several rates ("20/1m", "200/1h").

    A key keeps the times of its last N events at most (N the largest count): enough to decide
    every rate, found by bisection, so a flood costs the same per request as a trickle."""

    def __init__(self, rates: Sequence[str], *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._rates = [(n, window.total_seconds()) for n, window in map(parse_rate, rates)]
        self._keep = max((n for n, _ in self._rates), default=0)
        self._longest = max((w for _, w in self._rates), default=0.0)
        self._events: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._clock = clock
        self._max_keys = max_keys

    def take(self, key: str) -> float | None:
        """Count one event for ``key``; None if allowed, else the seconds until one is."""
        if not self._rates:
            return None
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = []
            if len(self._events) > self._max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        wait = 0.0
        for limit, window in self._rates:
            recent = len(events) - bisect.bisect_right(events, now - window)
            if recent >= limit:
                wait = max(wait, events[len(events) - limit] + window - now)
        if wait > 0:
            return wait
        events.append(now)
        if len(events) > 2 * self._keep or (events and events[0] <= now - self._longest
                                            and len(events) > 64):
            start = max(len(events) - self._keep,
                        bisect.bisect_right(events, now - self._longest))
            del events[:start]
        return None


# -- file types -----------------------------------------------------------------------------------

_OFFICE_ZIP = {".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
               ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
               ".pptx": "application/vnd.openxmlformats-officedocument.presentationml"
                        ".presentation",
               ".odt": "application/vnd.oasis.opendocument.text",
               ".ods": "application/vnd.oasis.opendocument.spreadsheet"}
_OLE = {".doc": "application/msword", ".xls": "application/vnd.ms-excel",
        ".ppt": "application/vnd.ms-powerpoint"}
_TEXT = {".txt": "text/plain", ".csv": "text/csv", ".log": "text/plain"}


def file_type(name: str, data: bytes) -> str | None:
    """The content type of an upload read from its first bytes (and, for containers, its
    name), or None when it is not an image, PDF, text or office document."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "image/heic"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if head.startswith(b"PK\x03\x04") and suffix in _OFFICE_ZIP:
        return _OFFICE_ZIP[suffix]
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") and suffix in _OLE:
        return _OLE[suffix]
    if suffix in _TEXT and _plain_text(data):
        return _TEXT[suffix]
    return None


def _plain_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    start = text[:1024].lstrip().lower()
    return not start.startswith(("<!doctype", "<html", "<svg", "<?xml", "<script"))
