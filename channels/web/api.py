"""The widget's API under ``/web/api/`` (the widget itself: ``static/widget.js``).

Every call carries ``Authorization: Bearer <token>``: the browser's random token (256 bits,
kept in its localStorage). The store knows a visitor only by a hash of it
(:func:`~frontdesk.channels.web.parse.visitor_id`), and every read is limited to that visitor's
own conversations. Calls from a page of an origin not allowed get 403 and no CORS headers.

* ``GET session``: the title, whether someone is there (and when we reply if not), the email
  asked for, the conversation so far.
* ``POST messages``: one message (JSON, or multipart with files); answered 201 only after the
  journal commit (200 for a repeat of the same ``client_id``: stored once).
* ``GET stream``: Server-Sent Events, one ``message`` event per message (its id as the event
  id; ``Last-Event-ID`` resumes), a comment line every ``heartbeat`` seconds so proxies keep it.
* ``POST seen``: the staff messages the open widget showed.
* ``GET files/{id}``: an attachment of the visitor's conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from frontdesk.channels.base import Accept
from frontdesk.channels.web import WebConfig
from frontdesk.channels.web.body import BodyError, Posted, read_json, read_posted
from frontdesk.channels.web.guard import ClientAddress, OriginPolicy, RateWindows, file_type
from frontdesk.channels.web.hub import StreamHub
from frontdesk.channels.web.parse import (
    clean_email,
    clean_language,
    clean_page,
    clean_text,
    valid_client_id,
    visitor_id,
    web_row,
)
from frontdesk.channels.web.records import WebRecords
from frontdesk.domain import notices
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.messages import Attachment
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.clock import Clock

log = logging.getLogger(__name__)

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def error(status: int, text: str, **extra: Any) -> web.Response:
    return web.json_response({"error": text, **extra}, status=status)


class VisitorApi:
    heartbeat = 15.0

    def __init__(self, config: WebConfig, *, records: WebRecords, hub: StreamHub,
                 origins: OriginPolicy, client: ClientAddress, files: AttachmentStore,
                 calendar: BusinessCalendar, first_response_due: Callable[[datetime], datetime],
                 clock: Clock, accept: Callable[[], Accept | None]) -> None:
        self._config = config
        self._records = records
        self._hub = hub
        self._origins = origins
        self._client = client
        self._files = files
        self._calendar = calendar
        self._due = first_response_due
        self._clock = clock
        self._accept = accept
        self._per_visitor = RateWindows(config.visitor_rate_limits)
        self._per_address = RateWindows(config.address_rate_limits)

    def routes(self) -> list[web.RouteDef]:
        return [web.options("/web/api/{tail:.*}", self._preflight),
                web.get("/web/api/session", self._guarded(self._session)),
                web.post("/web/api/messages", self._guarded(self._message)),
                web.get("/web/api/stream", self._guarded(self._stream)),
                web.post("/web/api/seen", self._guarded(self._seen)),
                web.get(r"/web/api/files/{id:\d{1,18}}", self._guarded(self._file))]

    # -- the gate --------------------------------------------------------------------------------

    async def _preflight(self, request: web.Request) -> web.Response:
        if self._origins.refused(request):
            return error(403, "this site may not use the chat (its origin is not allowed)")
        response = web.Response(status=204)
        self._origins.cors(request, response)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = \
            "Authorization, Content-Type, Last-Event-ID"
        return response

    def _guarded(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._origins.refused(request):
                log.info("web: refused a call from origin %r (not in web.allowed_origins)",
                         request.headers.get("Origin", "")[:100])
                return error(403, "this site may not use the chat (its origin is not allowed)")
            auth = request.headers.get("Authorization", "")
            visitor = visitor_id(auth[7:].strip()) if auth[:7].lower() == "bearer " else None
            if visitor is None:
                response: web.StreamResponse = error(
                    401, "no visitor token (Authorization: Bearer <43 base64url characters>)")
            else:
                try:
                    response = await handler(request, visitor)
                except BodyError as exc:
                    response = error(exc.status, exc.reason,
                                     **({"field": exc.field} if exc.field else {}))
            if not response.prepared:
                self._origins.cors(request, response)
                response.headers["Access-Control-Expose-Headers"] = "Retry-After"
                response.headers["Cache-Control"] = "no-store"
            return response

        return guarded

    # -- routes ----------------------------------------------------------------------------------

    async def _session(self, request: web.Request, visitor: str) -> web.Response:
        history = await self._records.history(visitor)
        now = self._clock()
        is_open = self._calendar.is_open(now)
        notice = None
        if not is_open:
            language = clean_language(request.headers.get("Accept-Language")) or "en"
            notice, _ = notices.expectation(self._due(now), now, self._calendar, language)
        return web.json_response({
            "title": self._config.title, "ask_email": self._config.ask_email, "open": is_open,
            "notice": notice, "max_upload_bytes": self._config.max_upload_bytes,
            "email": history.email, "conversation": history.reference,
            "messages": history.messages})

    def _limited(self, visitor: str, address: str) -> web.Response | None:
        wait = self._per_visitor.take(visitor) or self._per_address.take(address)
        if wait is None:
            return None
        response = error(429, "you are sending messages too fast; please wait a moment")
        response.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return response

    async def _message(self, request: web.Request, visitor: str) -> web.Response:
        accept = self._accept()
        if accept is None:
            return error(503, "the chat is starting or stopping; please try again")
        posted = await self._read(request)
        fields = posted.fields
        client_id = fields.get("client_id")
        if not valid_client_id(client_id):
            return error(400, "client_id must be 8 to 64 characters of A-Z, a-z, 0-9, _ and -",
                         field="client_id")
        assert isinstance(client_id, str)
        try:
            text = clean_text(fields.get("text"), self._config.max_message_chars)
        except ValueError as exc:
            return error(400, f"the message {exc}", field="text")
        if not text and not posted.files:
            return error(400, "the message is empty", field="text")
        email = None
        if self._config.ask_email != "off" and (given := (fields.get("email") or "").strip()):
            email = clean_email(given)
            if email is None:
                return error(400, "that is not an email address", field="email")
        if self._config.ask_email == "required" and email is None \
                and (await self._records.history(visitor, limit=1)).email is None:
            return error(400, "please give your email address", field="email")
        files = []
        for f in posted.files:
            kind = file_type(f.filename, f.data)
            if kind is None:
                return error(415, f"{f.filename}: only images, PDF, text and office documents "
                                  "can be sent", field="file")
            files.append(Attachment(f.filename, kind, f.data))
        if (limited := self._limited(visitor, self._client(request))) is not None:
            return limited
        key, raw = web_row(visitor=visitor, client_id=client_id, text=text, email=email,
                           page=clean_page(fields.get("page")),
                           language=clean_language(request.headers.get("Accept-Language")),
                           files=files)
        try:
            new = await accept("web", key, raw, {"remote_id": key})
        except Exception as exc:  # noqa: BLE001 - the widget retries with the same client_id
            log.warning("web: could not journal a visitor's message: %s", exc)
            return error(503, "we could not take your message just now; it will be retried")
        return web.json_response({"client_id": client_id, "state": "sent"},
                                 status=201 if new else 200)

    async def _read(self, request: web.Request) -> Posted:
        if request.content_type == "application/json":
            data = await read_json(request)
            if not isinstance(data, dict):
                raise BodyError(400, "the request body must be a JSON object")
            return Posted(fields={k: v for k, v in data.items() if isinstance(v, str)})
        return await read_posted(request, max_upload_bytes=self._config.max_upload_bytes,
                                 file_fields=("file",))

    async def _seen(self, request: web.Request, visitor: str) -> web.Response:
        data = await read_json(request)
        ids = data.get("ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in ids):
            return error(400, 'send {"ids": [message ids]}')
        await self._records.mark_seen(visitor, ids)
        return web.Response(status=204)

    async def _file(self, request: web.Request, visitor: str) -> web.StreamResponse:
        attachment = await self._records.attachment(visitor, int(request.match_info["id"]))
        if attachment is None:
            return error(404, "no such file in your conversation")
        path = self._files.path_for(attachment.sha256)
        if not path.exists():
            return error(404, "the file is not available (yet)")
        name = attachment.filename.replace('"', "").replace("\\", "")
        response = web.FileResponse(path)
        response.headers["Content-Type"] = attachment.content_type or "application/octet-stream"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    async def _stream(self, request: web.Request, visitor: str) -> web.StreamResponse:
        if self._accept() is None:  # a stream opened now would hold up the daemon's stop
            return error(503, "the chat is starting or stopping; please try again")
        try:
            after = int(request.headers.get("Last-Event-ID", "0") or 0)
        except ValueError:
            after = 0
        async with self._records.reader() as s:
            conversations = await self._records.conversations(s, visitor)
        sub = self._hub.subscribe(visitor, conversations)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no"})
        try:
            self._origins.cors(request, response)
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            sent: set[int] = set()
            if after or conversations:
                history = await self._records.history(visitor, after=after,
                                                      conversations=conversations)
                for view in history.messages:
                    sent.add(view["id"])
                    await response.write(_event(view))
            while True:
                try:
                    async with asyncio.timeout(self.heartbeat):
                        item = await sub.queue.get()
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if item is None:
                    break
                if item["id"] in sent or item["id"] <= after:
                    continue  # sent already, or the visitor had it before resuming
                sent.add(item["id"])
                await response.write(_event(item))
            return response
        except ConnectionResetError:  # the visitor left (closed the tab, lost the network)
            return response
        finally:
            self._hub.unsubscribe(sub)


def _event(view: dict[str, Any]) -> bytes:
    data = json.dumps(view, ensure_ascii=False, separators=(",", ":"))
    return f"event: message\nid: {view['id']}\ndata: {data}\n\n".encode()
