"""``GET /files/{token}``: the files staff send, for providers that fetch a file by URL.

Twilio (MMS, WhatsApp) and Meta (Messenger, Instagram, WhatsApp) are handed a signed link on
``http.public_url`` (:class:`~frontdesk.domain.files.FileLinks`) and fetch the file from here
(Twilio asks with HEAD, then GET). A token this store did not sign is a 404, an expired one a
410; so is (404) a file no longer stored (its contact was erased). A good link gets the stored
bytes with the Content-Type the file was sent as (providers check it against the bytes), its
name in Content-Disposition, and headers that keep a browser from running anything in it.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from frontdesk.domain.files import LINK_PATH, FileLinks, LinkRefused
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Store
from frontdesk.storage.models import Attachment

log = logging.getLogger(__name__)

_SHOWN = ("image/", "audio/", "video/", "application/pdf", "text/plain")
"""Types served ``inline`` (a phone shows them); anything else is a download."""
_ACTIVE = ("text/html", "application/xhtml", "image/svg", "text/xml", "application/xml",
           "text/javascript", "application/javascript")
"""Types a browser would run or render as a page: served as bytes to download."""


class FileRoute:
    """The route; see the module docstring."""

    def __init__(self, links: FileLinks, store: Store, files: AttachmentStore) -> None:
        self._links = links
        self._store = store
        self._files = files

    def routes(self) -> list[web.RouteDef]:
        return [web.get(LINK_PATH + "{token}", self.handle)]  # HEAD too (Twilio checks it)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            linked = await self._links.check(request.match_info["token"])
        except LinkRefused as exc:
            return web.Response(status=exc.status, text=f"{exc}\n")
        async with self._store.reader() as s:
            row = await s.get(Attachment, linked.attachment_id)
            found = (row.filename, row.content_type) if row is not None \
                and row.sha256 == linked.sha256 else None
        path = self._files.path_for(linked.sha256)
        if found is None or not path.is_file():
            return web.Response(status=404, text="this file is no longer here\n")
        filename, content_type = found
        kind = (content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
        if kind.startswith(_ACTIVE) or "/" not in kind:
            kind = "application/octet-stream"
        how = "inline" if kind.startswith(_SHOWN) else "attachment"
        ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                             for c in filename) or "file"
        response = web.FileResponse(path)
        response.headers["Content-Type"] = kind
        response.headers["Content-Disposition"] = (
            f"{how}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        log.debug("served file %d (%s) by its signed link to %s", linked.attachment_id, kind,
                  request.remote)
        return response
