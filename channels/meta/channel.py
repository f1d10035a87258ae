"""The Meta channel: one webhook for Messenger, Instagram and WhatsApp, replies through the
Graph API.

Receive: ``GET /webhooks/meta`` answers the subscription handshake (``hub.verify_token``).
``POST /webhooks/meta`` checks ``X-Hub-Signature-256`` over the raw body with ``app_secret``
(constant time) before anything else: 403 and nothing stored when it is wrong or missing. Every
customer message of the POST is journaled under its own id in one group commit, then statuses,
receipts and reactions are applied, then 200. Events of a product that is not configured are
dropped with one log line (and still answered 200: Meta would retry them for days).

Send: split at the platform's text limit (Messenger and Instagram 2,000 characters, WhatsApp
4,096), then each file staff attached in a message of its own (an attachment by URL, WhatsApp
media by link: a signed link on ``http.public_url``, within :data:`FILE_RULES`), each part once
(a retry after a failure in the middle sends only the rest). Windows:
a free-form reply goes within 24 hours of the customer's last message on that channel;
Messenger and Instagram up to 7 days with ``human_agent_tag`` (tag HUMAN_AGENT); WhatsApp after
24 hours sends the configured template once and holds the reply in the outbox until the customer
writes again (:mod:`.records` releases it); without a template it fails at once saying why.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from frontdesk.channels.base import (
    Accept,
    ChannelContext,
    ChannelParts,
    Deferred,
    Held,
    PermanentFailure,
)
from frontdesk.channels.chat import split_text, template_words
from frontdesk.channels.chat_records import HELD, HOLD_FOR, AttachmentJob
from frontdesk.channels.files import FileRules, check_files
from frontdesk.channels.meta import HUMAN_AGENT_WINDOW, WINDOW, MetaConfig
from frontdesk.channels.meta.graph import Graph, WindowClosed
from frontdesk.channels.meta.parse import BadPayload, parse, split
from frontdesk.channels.meta.records import (
    MEDIA_JOB,
    PART_CHANNEL,
    PROFILE_JOB,
    MetaRecords,
)
from frontdesk.domain.files import FileLinks, FileProblem
from frontdesk.domain.messages import (
    Attachment,
    InboundMessage,
    OutboundFile,
    OutboundMessage,
    Receipt,
)
from frontdesk.storage.clock import Clock
from frontdesk.storage.models import Outbox

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/meta"
MAX_TEXT = {"messenger": 2000, "instagram": 1000, "whatsapp": 4096}
MAX_BODY = 1024 * 1024  # aiohttp's client_max_size; Meta's batches are a few KB
MAX_FILE = 100 * 1024 * 1024
_MB = 1024 * 1024
FILE_RULES = {
    "messenger": FileRules("Messenger", max_each=25 * _MB, type_limits=(("image/*", 8 * _MB),)),
    "instagram": FileRules(
        "Instagram", max_each=25 * _MB, type_limits=(("image/*", 8 * _MB),),
        types=frozenset({"image/png", "image/jpeg", "image/gif", "audio/aac", "audio/mp4",
                         "audio/x-m4a", "audio/wav", "audio/x-wav", "video/mp4", "video/ogg",
                         "video/quicktime", "video/webm", "video/x-msvideo", "application/pdf"}),
        type_words="PNG, JPEG and GIF images, audio (AAC, M4A, WAV), video (MP4, MOV, WebM, "
                   "AVI, OGG) and PDF"),
    "whatsapp": FileRules(
        "WhatsApp", max_each=100 * _MB,
        type_limits=(("image/*", 5 * _MB), ("audio/*", 16 * _MB), ("video/*", 16 * _MB)),
        types=frozenset({"image/jpeg", "image/png", "audio/aac", "audio/amr", "audio/mpeg",
                         "audio/mp4", "audio/ogg", "video/mp4", "video/3gpp", "text/plain",
                         "application/pdf", "application/msword", "application/vnd.ms-excel",
                         "application/vnd.ms-powerpoint",
                         "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                         "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                         "application/vnd.openxmlformats-officedocument.presentationml."
                         "presentation"}),
        type_words="JPEG and PNG images, audio (AAC, AMR, MP3, M4A, OGG), MP4 and 3GP video, "
                   "text, PDF and Office documents"),
}
"""What each Meta channel takes: Messenger 25 MB (images 8 MB fetched by URL), Instagram its
media types, WhatsApp's Cloud API images of 5 MB, audio and video of 16 MB, documents of
100 MB."""
_OBJECT_PRODUCT = {"page": "messenger", "instagram": "instagram",
                   "whatsapp_business_account": "whatsapp"}


class MetaChannel:
    name = "meta"
    journal_names = ("meta",)

    def __init__(self, config: MetaConfig, *, products: tuple[str, ...]) -> None:
        self._config = config
        self.products = products
        self._secret = config.app_secret.get_secret_value().encode()
        self._page_token = config.page_access_token.get_secret_value()
        self._wa_token = config.whatsapp_access_token.get_secret_value()
        self._graph = Graph(config.api_base_url, config.api_version,
                            timeout=config.request_timeout.total_seconds())
        self._accept: Accept | None = None
        self._records: MetaRecords | None = None
        self._clock: Clock | None = None
        self._links: FileLinks | None = None  # bind(): signed links to staff files
        self._dropped: set[str] = set()
        self._profiles_failed: dict[str, float] = {}

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self.products

    # -- composition ---------------------------------------------------------------------------

    def bind(self, context: ChannelContext) -> ChannelParts:
        files = AttachmentJob(MEDIA_JOB, context.store, context.attachments, self._fetch,
                              clock=context.clock)
        self._records = MetaRecords(context.store, clock=context.clock, files=files,
                                    kick=context.kick_outbox)
        self._clock = context.clock
        self._links = context.file_links
        return ChannelParts(
            routes=[web.get(WEBHOOK_PATH, self._handshake), web.post(WEBHOOK_PATH, self._post)],
            inbound_hooks=(self._records.after_store,),
            delivery_hooks=(self._records.after_delivery,),
            outbox_handlers={MEDIA_JOB: files, PROFILE_JOB: self._profile},
            answers=self._answers)

    def _answers(self, outbound: OutboundMessage) -> bool:
        """Whether this channel sends a reply on a channel it shares (WhatsApp with Twilio):
        when the message it answers came through Meta."""
        return bool(outbound.in_reply_to and outbound.in_reply_to.startswith("wamid."))

    async def start(self, accept: Accept) -> None:
        self._accept = accept
        await self._graph.start()
        log.info("meta channel: %s at %s", ", ".join(self.products), WEBHOOK_PATH)

    async def stop(self) -> None:
        self._accept = None
        await self._graph.close()

    @property
    def ready(self) -> bool:
        return self._accept is not None

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return parse(raw, meta)

    # -- webhook ---------------------------------------------------------------------------------

    async def _handshake(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("hub.mode") == "subscribe" and self._config.verify_token and hmac.compare_digest(
                q.get("hub.verify_token", "").encode(), self._config.verify_token.encode()):
            log.info("meta: webhook subscription confirmed")
            return web.Response(text=q.get("hub.challenge", ""), content_type="text/plain")
        return web.Response(status=403, text="verify token mismatch\n")

    async def _post(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="too large\n")
        try:
            raw = await request.read()  # bounded by the server's client_max_size too
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="too large\n")
        given = request.headers.get("X-Hub-Signature-256", "")
        expected = b"sha256=" + hmac.digest(self._secret, raw, "sha256").hex().encode()
        if not hmac.compare_digest(given.encode(), expected):
            log.warning("meta: a webhook with a %s signature was refused",
                        "wrong" if given else "missing")
            return web.Response(status=403, text="bad signature\n")
        try:
            rows, notes = split(orjson.loads(raw))
        except (ValueError, UnicodeDecodeError, BadPayload) as exc:
            return web.Response(status=400, text=f"not a Meta webhook: {exc}\n")
        accept, records = self._accept, self._records
        if accept is None or records is None:
            return web.Response(status=503, text="starting or stopping\n")
        wanted = [r for r in rows if self._wanted(r.channel, r.owner)]
        notes = [n for n in notes if n.channel in self.products]
        try:
            if len(wanted) == 1:
                await accept("meta", wanted[0].remote_id, wanted[0].raw, {})
            elif wanted:  # one commit, one answer for them all
                await accept.many("meta", [(r.remote_id, r.raw) for r in wanted])
            if notes:
                await records.apply(notes)
        except Exception as exc:  # noqa: BLE001 - Meta retries a non-200
            log.warning("meta: could not store a webhook (%s); Meta will retry", exc)
            return web.Response(status=503, text="try again\n")
        return web.Response(text="ok\n")

    def _wanted(self, channel: str, number: str) -> bool:
        if channel not in self.products:
            self._drop(channel, f"meta {channel} is not configured")
            return False
        if channel == "whatsapp" and number and number != self._config.whatsapp_phone_number_id:
            self._drop(f"whatsapp:{number}", f"WhatsApp number id {number} is not "
                       "meta.whatsapp_phone_number_id")
            return False
        return True

    def _drop(self, key: str, why: str) -> None:
        if key not in self._dropped:
            self._dropped.add(key)
            log.info("meta: dropping events: %s (logged once)", why)

    # -- send ------------------------------------------------------------------------------------

    async def send(self, outbound: OutboundMessage) -> Receipt:
        records = self._records
        if records is None or self._accept is None or self._clock is None:
            raise Deferred("the meta channel is not running", retry_after=5.0)
        channel = outbound.channel
        if channel not in self.products:
            raise PermanentFailure(f"meta {channel} is not configured here")
        parts = split_text(outbound.text, MAX_TEXT[channel])
        files = outbound.attachments
        if not parts and not files:
            raise PermanentFailure("the message is empty")
        urls = await self._file_links(channel, files)
        now = self._clock()
        last = await records.last_written(channel, outbound.to_address)
        age = now - last if last is not None else None
        tag = None
        if age is None or age > WINDOW:
            if channel != "whatsapp" and self._config.human_agent_tag and age is not None \
                    and age <= HUMAN_AGENT_WINDOW:
                tag = "HUMAN_AGENT"
            elif channel == "whatsapp" and self._config.whatsapp_template.name \
                    and not outbound.automated:
                await self._reengage(outbound)
                raise Held(HELD + "; the template asking them to write went out",
                               retry_after=HOLD_FOR)
            else:
                raise PermanentFailure(self._window_words(channel, age))
        key = outbound.idempotency_key
        done = await records.parts.sent(PART_CHANNEL, key)
        ids: list[str] = []
        # The text first, then each file in a message of its own (fetched by Meta from its link).
        items: list[str | tuple[OutboundFile, str]] = [*parts, *zip(files, urls, strict=True)]
        for index, item in enumerate(items):
            if index in done:
                ids.append(done[index])
                continue
            try:
                if isinstance(item, str):
                    remote = await self._send_text(channel, outbound.to_address, item, tag)
                else:
                    remote = await self._send_file(channel, outbound.to_address, *item, tag)
            except WindowClosed as exc:
                raise PermanentFailure(exc.reason) from None
            ids.append(remote)
            await records.parts.record(PART_CHANNEL, key, index, len(items), remote, "sent",
                                       rank=lambda s: {"sent": 1, "delivered": 2}.get(s, 0))
        return Receipt(remote_id=",".join(ids),
                       detail=f"{len(items)} message(s) on {channel}"
                              + (" with the HUMAN_AGENT tag" if tag else ""))

    async def _file_links(self, channel: str, files: Sequence[OutboundFile]) -> list[str]:
        """Signed links Meta fetches the files from, once they pass the channel's limits;
        a file that cannot go fails the reply before anything is sent."""
        if not files:
            return []
        check_files(files, FILE_RULES[channel])
        if self._links is None:
            raise PermanentFailure("files cannot be sent here: frontdesk serves no links to "
                                   "them (http.public_url)")
        try:
            return [await self._links.url(f) for f in files]
        except FileProblem as exc:
            raise PermanentFailure(f"the files cannot be sent: {exc}") from None

    async def _send_file(self, channel: str, to: str, file: OutboundFile, url: str,
                         tag: str | None) -> str:
        """One file by its link: WhatsApp media (image, audio, video or document) or a
        Messenger/Instagram attachment."""
        main = file.content_type.partition("/")[0]
        if channel == "whatsapp":
            kind = ("image" if file.content_type in ("image/jpeg", "image/png") else
                    main if main in ("audio", "video") else "document")
            media: dict[str, Any] = {"link": url}
            if kind == "document":
                media["filename"] = file.filename
            answer = await self._graph.post(
                f"{self._config.whatsapp_phone_number_id}/messages",
                {"messaging_product": "whatsapp", "recipient_type": "individual",
                 "to": to.lstrip("+"), "type": kind, kind: media}, self._wa_token)
            return str((answer.get("messages") or [{}])[0].get("id", ""))
        kind = main if main in ("image", "audio", "video") else "file"
        body: dict[str, Any] = {
            "recipient": {"id": to},
            "message": {"attachment": {"type": kind,
                                       "payload": {"url": url, "is_reusable": False}}},
            "messaging_type": "MESSAGE_TAG" if tag else "RESPONSE"}
        if tag:
            body["tag"] = tag
        answer = await self._graph.post(f"{self._config.page_id}/messages", body,
                                        self._page_token)
        return str(answer.get("message_id", ""))

    def _window_words(self, channel: str, age: timedelta | None) -> str:
        when = ("has not written on this channel" if age is None
                else f"last wrote {int(age.total_seconds() // 3600)} hours ago")
        if channel == "whatsapp":
            return (f"WhatsApp allows free-form replies only within 24 hours of the customer's "
                    f"last message, and the customer {when}; set [meta.whatsapp_template] to "
                    "send an approved template that asks them to write again")
        extra = ("" if self._config.human_agent_tag else
                 "; with Meta's Human Agent permission, set meta.human_agent_tag = true to "
                 "answer for 7 days")
        return (f"{channel.capitalize()} allows replies only within the 24-hour window after "
                f"the customer's last message, and the customer {when}{extra}")

    async def _send_text(self, channel: str, to: str, text: str, tag: str | None) -> str:
        if channel == "whatsapp":
            answer = await self._graph.post(
                f"{self._config.whatsapp_phone_number_id}/messages",
                {"messaging_product": "whatsapp", "recipient_type": "individual",
                 "to": to.lstrip("+"), "type": "text", "text": {"body": text}}, self._wa_token)
            return str((answer.get("messages") or [{}])[0].get("id", ""))
        body: dict[str, Any] = {"recipient": {"id": to}, "message": {"text": text},
                                "messaging_type": "MESSAGE_TAG" if tag else "RESPONSE"}
        if tag:
            body["tag"] = tag
        answer = await self._graph.post(f"{self._config.page_id}/messages", body,
                                        self._page_token)
        return str(answer.get("message_id", ""))

    async def _reengage(self, outbound: OutboundMessage) -> None:
        """The approved template, once per held reply (its parts record says it went)."""
        records = self._records
        assert records is not None
        key = f"template:{outbound.idempotency_key}"
        if await records.parts.sent(PART_CHANNEL, key):
            return
        template = self._config.whatsapp_template
        values = template_words(outbound.conversation_reference, outbound.to_name,
                                outbound.subject)
        parameters = [{"type": "text", "text": p.format_map(values)[:1000]}
                      for p in template.parameters]
        answer = await self._graph.post(
            f"{self._config.whatsapp_phone_number_id}/messages",
            {"messaging_product": "whatsapp", "to": outbound.to_address.lstrip("+"),
             "type": "template",
             "template": {"name": template.name, "language": {"code": template.language},
                          **({"components": [{"type": "body", "parameters": parameters}]}
                             if parameters else {})}}, self._wa_token)
        remote = str((answer.get("messages") or [{}])[0].get("id", "template"))
        await records.parts.record(PART_CHANNEL, key, 0, 1, remote, "sent")
        log.info("meta: the WhatsApp window of %s is closed: template %r sent, the reply waits "
                 "for their answer", outbound.conversation_reference or "a customer",
                 template.name)

    # -- background jobs -------------------------------------------------------------------------

    async def _fetch(self, item: Mapping[str, Any]) -> Attachment:
        name = str(item.get("filename") or "file")
        if item.get("media_id"):
            info = await self._graph.get(str(item["media_id"]), self._wa_token)
            url = str(info.get("url") or "")
            if not url:
                raise PermanentFailure("Meta named no URL for the media")
            data, kind = await self._graph.download(url, self._wa_token, max_bytes=MAX_FILE)
            return Attachment(name, str(info.get("mime_type") or kind
                                        or item.get("content_type") or ""), data)
        data, kind = await self._graph.download(str(item.get("url")), None, max_bytes=MAX_FILE)
        return Attachment(name, kind or str(item.get("content_type") or ""), data)

    async def _profile(self, row: Outbox) -> Receipt:
        records = self._records
        assert records is not None
        payload = row.payload or {}
        channel, user = str(payload.get("channel")), str(payload.get("user"))
        fields = "first_name,last_name" if channel == "messenger" else "name,username"
        profile = await self._graph.get(user, self._page_token, fields=fields)
        name = (" ".join(str(profile.get(k) or "") for k in ("first_name", "last_name")).strip()
                if channel == "messenger"
                else str(profile.get("name") or profile.get("username") or ""))
        if not name:
            return Receipt(detail="the profile has no name")
        changed = await records.set_name(int(payload.get("contact_id") or 0), name)
        return Receipt(detail=f"named {name!r}" if changed else "already named")
