"""The website channel: the chat widget's routes, the contact form, and live updates.

Receive: ``POST /web/api/messages`` and ``POST /web/contact`` journal the visitor's message and
answer only after the commit. Parse: :mod:`.parse`. Send: a reply on ``web`` needs no remote
call: it is in the store, and every open widget of that visitor reads it from there through the
stream (:mod:`.hub`); sending wakes the streams and, through the delivery hook, arranges the mail
of a reply nobody saw (:mod:`.records`). ``form`` replies never come here: they go by email.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from frontdesk.channels.base import (
    Accept,
    ChannelContext,
    ChannelParts,
    PermanentFailure,
)
from frontdesk.channels.files import FileRules, check_files
from frontdesk.channels.web import WebConfig
from frontdesk.channels.web.api import VisitorApi
from frontdesk.channels.web.form import ContactForm
from frontdesk.channels.web.guard import ClientAddress, OriginPolicy
from frontdesk.channels.web.hub import StreamHub
from frontdesk.channels.web.pages import demo_page
from frontdesk.channels.web.parse import parse
from frontdesk.channels.web.records import OFFLINE_MAIL, WebRecords
from frontdesk.config.schema import HttpConfig
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt

log = logging.getLogger(__name__)


def widget_source() -> bytes:
    """The widget as shipped in the package."""
    return resources.files("frontdesk.channels.web").joinpath("static/widget.js").read_bytes()


class WebChannel:
    name = "web"
    journal_names = ("web", "form")
    channel_names = WebConfig.channel_names

    def __init__(self, config: WebConfig, *, http: HttpConfig) -> None:
        self._config = config
        self._http = http
        self._accept: Accept | None = None
        self._hub: StreamHub | None = None
        self._origins = OriginPolicy(config.allowed_origins, own=http.public_url)
        self._client = ClientAddress(http.trusted_proxies)
        self._widget: tuple[bytes, str] | None = None  # the script and its ETag, read once
        self._started = False

    @property
    def hub(self) -> StreamHub | None:
        return self._hub

    def bind(self, context: ChannelContext) -> ChannelParts:
        records = WebRecords(context.store, clock=context.clock, replies=context.replies,
                             title=self._config.title,
                             offline_after=self._config.offline_email_after,
                             kick=context.kick_outbox)
        self._hub = StreamHub(context.store)
        api = VisitorApi(self._config, records=records, hub=self._hub, origins=self._origins,
                         client=self._client, files=context.attachments,
                         calendar=context.calendar,
                         first_response_due=context.first_response_due, clock=context.clock,
                         accept=lambda: self._accept)
        form = ContactForm(self._config, records=records, origins=self._origins,
                           client=self._client, accept=lambda: self._accept)
        routes = [web.get("/web/widget.js", self._widget_js), web.get("/web/demo", self._demo),
                  *api.routes(), *form.routes()]
        return ChannelParts(routes=routes, inbound_hooks=(records.after_store,),
                            delivery_hooks=(records.after_delivery,),
                            outbox_handlers={OFFLINE_MAIL: records.offline_mail},
                            outbox_wakers=(self._hub.wake,))

    async def start(self, accept: Accept) -> None:
        self._accept = accept
        self._started = True
        if self._hub is not None:
            self._hub.open()
        where = self._http.public_url or f"http://{self._http.listen}"
        log.info("web channel: chat widget at %s/web/widget.js (try %s/web/demo), contact form "
                 "at %s/web/contact; sites allowed: %s", where, where, where,
                 ", ".join(self._config.allowed_origins) or "only this daemon's own pages")

    async def stop(self) -> None:
        self._accept = None
        self._started = False
        if self._hub is not None:
            await self._hub.stop()

    @property
    def ready(self) -> bool:
        return self._started

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return parse(raw, meta)

    async def send(self, outbound: OutboundMessage) -> Receipt:
        if outbound.channel != "web":
            raise PermanentFailure(f"the website channel does not send {outbound.channel} "
                                   "messages (a contact form is answered by email)")
        # Staff files are the message's attachments: the widget lists them, and the visitor
        # downloads them through its own route (theirs only), up to the widget's cap.
        check_files(outbound.attachments,
                    FileRules("the website chat", max_total=self._config.max_upload_bytes,
                              setting="web.max_upload_bytes"))
        if self._hub is not None:
            self._hub.wake()
        return Receipt(detail="in the visitor's chat (shown when their widget is open)")

    async def _widget_js(self, request: web.Request) -> web.Response:
        if self._widget is None:
            source = widget_source()
            self._widget = source, '"' + hashlib.sha256(source).hexdigest()[:20] + '"'
        body, etag = self._widget
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={
            "Content-Type": "text/javascript; charset=utf-8", "ETag": etag,
            "Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin"})

    async def _demo(self, request: web.Request) -> web.Response:
        return demo_page(self._config.title)
