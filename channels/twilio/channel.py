"""The Twilio channel: SMS, MMS and WhatsApp in and out, and voicemail in.

Receive: webhooks on the daemon's HTTP server. Every request's ``X-Twilio-Signature`` is checked
with the twilio library's RequestValidator against ``http.public_url`` + the path and query as
requested (what Twilio signed, whatever proxy stands between), with the auth token (HMAC-SHA1) or,
when the request names a shared key in ``X-Twilio-Webhooks-Signature-Settings``, with
``twilio.webhook_signing_key`` and the algorithm it names (HMAC-SHA256). A bad signature gets 403
and nothing is stored. A good one is journaled (MessageSid is the idempotency key) and only then
answered 200 with empty TwiML; a journal failure answers 503 so Twilio retries. A form of more
than :data:`MAX_FORM_FIELDS` fields is refused (413) unread; counts taken from a form are bounded
where they are read (``NumMedia`` to 10, see :mod:`.parse`).

Media: MMS media and voicemail recordings are fetched by a background job through
:class:`~frontdesk.channels.media.MediaFetcher`, only from ``twilio.api_base_url`` and
``twilio.media_hosts`` (Twilio's API and media CDN hosts by default), never from a private
address unless that host is listed literally, redirects followed hop by hop under the same rule,
at most 50 MB. The account's credentials go to Twilio's own hosts only (:meth:`TwilioChannel.
_auth_for`), not to the CDN a redirect points at. A URL elsewhere is a permanent failure of the
job, with the reason.

Send: the twilio REST client with its aiohttp-based AsyncTwilioHttpClient on the daemon's loop,
pointed at ``twilio.api_base_url``, with a status callback to /webhooks/twilio/status. Texts over
1,600 characters go out as several messages in order; the parts already sent are remembered so a
retry does not repeat them. Files staff attach go as ``MediaUrl`` s, signed links on
``http.public_url`` Twilio fetches (MMS: all with the first text, 10 and 5 MB at most; WhatsApp:
one per message after the text), Twilio's limits checked first. Nothing is ever sent to an
opted-out number.

Voicemail: /webhooks/twilio/voice greets (open or closed wording from the SLA business hours) and
records with transcription; the recording callback becomes one message on the caller's voice
conversation and the transcription callback, whenever it comes, fills in its text.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDict
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.rest import Client
from yarl import URL

from frontdesk.channels.base import (
    Accept,
    ChannelContext,
    ChannelParts,
    DeliveryError,
    Held,
    PermanentFailure,
    TemporaryFailure,
)
from frontdesk.channels.chat import split_text, template_words
from frontdesk.channels.chat_records import HELD, HOLD_FOR, AttachmentJob, last_written
from frontdesk.channels.files import FileRules, check_files
from frontdesk.channels.media import MediaFetcher, MediaHosts
from frontdesk.channels.twilio import TwilioConfig
from frontdesk.channels.twilio.parse import form_pairs, parse_twilio, strip_whatsapp
from frontdesk.channels.twilio.records import MEDIA_JOB, STATUS, TwilioRecords
from frontdesk.channels.twilio.records import rank as status_rank
from frontdesk.channels.twilio.voice import (
    DONE_PATH,
    EMPTY_TWIML,
    RECORDING_PATH,
    TRANSCRIPTION_PATH,
    hangup_twiml,
    voicemail_twiml,
)
from frontdesk.domain.files import FileLinks, FileProblem
from frontdesk.domain.messages import Attachment, InboundMessage, OutboundMessage, Receipt
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store

log = logging.getLogger(__name__)

SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
VOICE_PATH = "/webhooks/twilio/voice"

MAX_BODY = 1600  # Twilio's limit for one message's Body
WHATSAPP_WINDOW = timedelta(hours=24)
MAX_MEDIA_BYTES = 50 * 1024 * 1024
_MB = 1024 * 1024
MMS_FILES = FileRules(
    "MMS", max_total=5 * _MB, max_count=10,
    types=frozenset({"image/*", "audio/*", "video/*", "application/pdf", "text/vcard",
                     "text/x-vcard", "text/csv", "text/rtf", "text/richtext", "text/calendar",
                     "text/directory"}),
    type_words="images, audio, video, PDF, vCard, CSV and calendar files")
"""Twilio's MMS: at most 10 media and 5 MB in all, of its accepted content types."""
WHATSAPP_FILES = FileRules(
    "WhatsApp", max_each=16 * _MB, type_limits=(("image/*", 5 * _MB),),
    types=frozenset({"image/jpeg", "image/jpg", "image/png", "audio/ogg", "audio/amr",
                     "audio/3gpp", "audio/aac", "audio/mpeg", "audio/mp4", "video/mp4",
                     "application/pdf", "application/msword", "text/vcard", "text/x-vcard",
                     "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                     "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                     "application/vnd.openxmlformats-officedocument.presentationml.presentation"
                     }),
    type_words="JPEG and PNG images, audio (OGG, AMR, MP3, AAC), MP4 video, PDF, Word, Excel "
               "and PowerPoint documents and vCards")
"""WhatsApp through Twilio: 16 MB a file (images 5 MB), of WhatsApp's media types."""
MAX_FORM_FIELDS = 500
"""A webhook form with more fields is refused (413) before it is parsed or its signature
computed: Twilio sends a few dozen (10 media at most), and sorting hundreds of thousands of
empty fields for the signature would hold the event loop for every unsigned request."""

# REST error codes that retrying cannot fix, in words for the staff.
PERMANENT_ERRORS = {
    21211: "the customer's number is not a valid phone number",
    21408: "the Twilio account may not send to this country",
    21612: "Twilio cannot send from this number to that one",
    21614: "the number cannot receive text messages (a landline?)",
    21606: "the 'from' number cannot send text messages (check twilio.sms_from)",
    63016: "WhatsApp allows free-form replies only within 24 hours of the customer's last "
           "message",
}
OPTED_OUT = ("the customer opted out of text messages (they replied STOP), so nothing was "
             "sent; they can reply START to receive messages again")
OPTED_OUT_AT_TWILIO = ("the customer opted out of text messages from this number (they replied "
                       "STOP) and Twilio refused to send (error 21610); they can reply START to "
                       "receive messages again")


def _twiml(body: str = EMPTY_TWIML, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/xml", charset="utf-8")


_DIGESTS = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}


SignedHandler = Callable[["TwilioChannel", web.Request, bytes, MultiDict[str]],
                         Awaitable[web.Response]]


def _signed(handler: SignedHandler) -> Callable[[TwilioChannel, web.Request],
                                                Awaitable[web.Response]]:
    """A webhook handler that runs only for a request Twilio signed (X-Twilio-Signature good),
    with its raw body and form; anything else gets 403 and nothing is stored."""
    @functools.wraps(handler)
    async def checked(self: TwilioChannel, request: web.Request) -> web.Response:
        verified = await self._verified(request)
        if verified is None:
            return web.Response(status=403, text="bad signature")
        if isinstance(verified, web.Response):
            return verified
        return await handler(self, request, *verified)
    return checked


def signed_text(url: str, form: MultiDict[str]) -> bytes:
    """What Twilio signs: the URL, then every parameter name in sorted order, each followed by
    each of its distinct values in sorted order (as ``RequestValidator.compute_signature``)."""
    parts = [url]
    for name in sorted(set(form)):
        values = form.getall(name)
        if len(values) == 1:
            parts += (name, values[0])
        else:
            for value in sorted(set(values)):
                parts += (name, value)
    return "".join(parts).encode("utf-8")


def signature_of(key: bytes, url: str, form: MultiDict[str], algorithm: str) -> str | None:
    """What ``RequestValidator(key).compute_signature(url, form, algorithm)`` returns: the HMAC
    of :func:`signed_text` with the key, in base64. None for an algorithm the library does not
    know (its ``validate`` then refuses the request)."""
    digest = _DIGESTS.get(algorithm.upper())
    if digest is None:
        return None
    mac = hmac.new(key, signed_text(url, form), digest).digest()
    return base64.b64encode(mac).decode("ascii")


class _Signer:
    """Checks ``X-Twilio-Signature`` with one secret (the auth token or the shared key).

    The HMAC is keyed once per algorithm and copied per request; its C code then never lets go
    of the GIL for a webhook's few hundred bytes (the one-shot ``hmac.digest`` does, and under
    load taking it back from the journal's thread cost more than the hash)."""

    def __init__(self, secret: str) -> None:
        key = secret.encode("utf-8")
        self._keyed = {name: hmac.new(key, digestmod=digest) for name, digest in _DIGESTS.items()}
        self._validator = RequestValidator(secret)

    def signature(self, url: str, form: MultiDict[str], algorithm: str) -> str | None:
        """:func:`signature_of` with this signer's secret."""
        keyed = self._keyed.get(algorithm.upper())
        if keyed is None:
            return None
        mac = keyed.copy()
        mac.update(signed_text(url, form))
        return base64.b64encode(mac.digest()).decode("ascii")

    def signed(self, url: str, form: MultiDict[str], signature: str, algorithm: str) -> bool:
        """The library's signature for the URL as configured (computed as it does, see
        :func:`signature_of`), compared in constant time; only when that differs, the library's
        full check, which also tries the URL with and without its port and refuses an algorithm
        it does not know."""
        expected = self.signature(url, form, algorithm)
        if expected is not None and hmac.compare_digest(expected.encode(), signature.encode()):
            return True
        return bool(self._validator.validate(url, form, signature, algorithm=algorithm))


class TwilioChannel:
    name = "twilio"
    journal_names = ("sms", "whatsapp", "voice")
    channel_names = TwilioConfig.channel_names  # a reply to a voicemail goes out as an SMS

    def __init__(self, config: TwilioConfig, *, public_url: str) -> None:
        self._config = config
        self._public_url = public_url.rstrip("/")
        self._token = config.auth_token.get_secret_value()
        self._signer = _Signer(self._token)
        key = config.webhook_signing_key.get_secret_value()
        self._shared_key_signer = _Signer(key) if key else None
        self._accept: Accept | None = None
        self._records: TwilioRecords | None = None
        self._is_open: Callable[[], bool] = lambda: True
        self._store: Store | None = None
        self._clock: Clock | None = None
        self._links: FileLinks | None = None  # bind(): signed links to staff files
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None
        self._media: MediaFetcher | None = None
        self._started = False
        self._stopping = False
        self._api_origin = URL(config.api_base_url).origin()
        self._media_hosts = MediaHosts(config.media_hosts, origins=[config.api_base_url],
                                       settings="twilio.api_base_url, twilio.media_hosts")
        rest_log = logging.getLogger(f"{__name__}.rest")
        if rest_log.level == logging.NOTSET:
            rest_log.setLevel(logging.WARNING)  # the client logs every request body at INFO
        self._rest_log = rest_log

    # -- composition ----------------------------------------------------------------------------

    def bind(self, context: ChannelContext) -> ChannelParts:
        """The store-side half: filters, hooks, the media job, the webhooks, and the business
        calendar (for the voice greeting)."""
        media = AttachmentJob(MEDIA_JOB, context.store, context.attachments, self._fetch_media,
                              clock=context.clock)
        records = TwilioRecords(context.store, clock=context.clock, parse=self.parse,
                                help_text=self._config.help_text, media=media,
                                kick=context.kick_outbox)
        self._records = records
        self._store, self._clock = context.store, context.clock
        self._links = context.file_links
        calendar, clock = context.calendar, context.clock
        self._is_open = lambda: bool(calendar.is_open(clock()))
        return ChannelParts(
            routes=[
                web.post(SMS_PATH, self._on_message),
                web.post(STATUS_PATH, self._on_status),
                web.post(VOICE_PATH, self._on_voice),
                web.post(RECORDING_PATH, self._on_recording),
                web.post(TRANSCRIPTION_PATH, self._on_transcription),
                web.post(DONE_PATH, self._on_voice_done),
            ],
            inbound_filters=(records.before_store,), inbound_hooks=(records.after_store,),
            delivery_hooks=(records.after_delivery,), outbox_handlers={MEDIA_JOB: media})

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, accept: Accept) -> None:
        self._accept = accept
        timeout = self._config.request_timeout.total_seconds()
        self._http = AsyncTwilioHttpClient(timeout=timeout, logger=self._rest_log)
        client = Client(self._config.account_sid, self._token, http_client=self._http)
        client.api.base_url = self._config.api_base_url
        self._client = client
        self._media = MediaFetcher(self._media_hosts, provider="Twilio", timeout=timeout,
                                   max_bytes=MAX_MEDIA_BYTES, credentials=self._auth_for)
        await self._media.start()
        self._started, self._stopping = True, False
        log.info("twilio channel: webhooks at %s%s (sms, whatsapp), %s (voice), %s (status); "
                 "sending as %s", self._public_url, SMS_PATH, VOICE_PATH, STATUS_PATH,
                 ", ".join(x for x in (self._config.sms_from, self._whatsapp_from()) if x)
                 or "nobody (twilio.sms_from is not set)")

    async def stop(self) -> None:
        self._stopping = True
        self._accept = None
        if self._http is not None:
            await self._http.close()
        if self._media is not None:
            await self._media.close()
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started and not self._stopping and self._records is not None

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return parse_twilio(raw, meta)

    # -- webhooks -------------------------------------------------------------------------------

    async def _verified(self, request: web.Request) -> tuple[bytes, Any] | web.Response | None:
        """The raw body and its form when Twilio's signature is good, else None (or the answer
        to a form too large to look at)."""
        raw = await request.read()
        if raw.count(b"&") >= MAX_FORM_FIELDS:
            log.warning("refused a Twilio webhook to %s from %s: more than %d form fields, "
                        "which Twilio never sends", request.path, request.remote, MAX_FORM_FIELDS)
            return web.Response(status=413, text="too many form fields")
        try:
            form = MultiDict(form_pairs(raw))
        except ValueError:
            return None
        signature = request.headers.get("X-Twilio-Signature", "")
        url = self._public_url + request.raw_path
        settings = request.headers.get(SIGNATURE_SETTINGS_HEADER, "")
        if settings:
            signer, algorithm = self._shared_key_signer, get_signature_algorithm(settings)
            if signer is None:
                log.warning("refused a Twilio webhook to %s signed with a shared key: "
                            "twilio.webhook_signing_key is not set", request.path)
                return None
        else:
            signer, algorithm = self._signer, HMAC_SHA1
        if not signature or not signer.signed(url, form, signature, algorithm):
            log.warning("refused a Twilio webhook to %s from %s: bad or missing "
                        "X-Twilio-Signature (is http.public_url %s what Twilio calls?)",
                        request.path, request.remote, self._public_url)
            return None
        return raw, form

    async def _journal(self, channel: str, remote_id: str, raw: bytes,
                       meta: dict[str, Any]) -> web.Response:
        accept = self._accept
        if accept is None:
            return _twiml(status=503)
        try:
            await accept(channel, remote_id, raw, meta)
        except Exception as exc:  # noqa: BLE001 - Twilio retries a 503
            log.error("could not journal Twilio %s %s: %s", channel, remote_id, exc)
            return _twiml(status=503)
        return _twiml()

    @_signed
    async def _on_message(self, request: web.Request, raw: bytes,
                          form: MultiDict[str]) -> web.Response:
        sid = form.get("MessageSid") or form.get("SmsSid")
        if not sid or not form.get("From"):
            return web.Response(status=400, text="MessageSid and From are required")
        channel = "whatsapp" if form["From"].strip().lower().startswith("whatsapp:") else "sms"
        return await self._journal(channel, sid, raw, {"kind": "message"})

    @_signed
    async def _on_status(self, request: web.Request, _raw: bytes,
                         form: MultiDict[str]) -> web.Response:
        sid = form.get("MessageSid") or form.get("SmsSid")
        status = form.get("MessageStatus") or form.get("SmsStatus")
        if not sid or not status:
            return web.Response(status=400, text="MessageSid and MessageStatus are required")
        if self._records is None:
            return _twiml(status=503)
        try:
            await self._records.record_status(sid, status, form.get("ErrorCode") or None)
        except Exception as exc:  # noqa: BLE001 - Twilio may retry a 503
            log.error("could not record Twilio status %s for %s: %s", status, sid, exc)
            return _twiml(status=503)
        return _twiml()

    @_signed
    async def _on_voice(self, request: web.Request, _raw: bytes,
                        form: MultiDict[str]) -> web.Response:
        is_open = self._is_open()
        greeting = (self._config.voice_greeting_open if is_open
                    else self._config.voice_greeting_closed)
        log.info("voice call %s from %s: %s greeting, recording a voicemail",
                 form.get("CallSid", "?"), form.get("From", "?"), "open" if is_open else "closed")
        return _twiml(voicemail_twiml(
            public_url=self._public_url, greeting=greeting,
            caller=form.get("From") or form.get("Caller") or "",
            called=form.get("To") or form.get("Called") or "",
            max_length=int(self._config.voice_max_length.total_seconds())))

    @_signed
    async def _on_recording(self, request: web.Request, raw: bytes,
                            form: MultiDict[str]) -> web.Response:
        sid = form.get("RecordingSid")
        if not sid:
            return web.Response(status=400, text="RecordingSid is required")
        status = form.get("RecordingStatus", "completed")
        if status != "completed":
            log.info("voicemail recording %s is %s: nothing to store", sid, status)
            return _twiml()
        meta = {"kind": "recording", "caller": request.query.get("caller", ""),
                "called": request.query.get("called", "")}
        return await self._journal("voice", f"recording:{sid}", raw, meta)

    @_signed
    async def _on_transcription(self, request: web.Request, raw: bytes,
                                form: MultiDict[str]) -> web.Response:
        sid = form.get("RecordingSid")
        if not sid:
            return web.Response(status=400, text="RecordingSid is required")
        return await self._journal("voice", f"transcription:{sid}", raw,
                                   {"kind": "transcription"})

    @_signed
    async def _on_voice_done(self, request: web.Request, _raw: bytes,
                             _form: MultiDict[str]) -> web.Response:
        return _twiml(hangup_twiml())

    # -- send -----------------------------------------------------------------------------------

    def _whatsapp_from(self) -> str:
        sender = strip_whatsapp(self._config.whatsapp_from or self._config.sms_from)
        return f"whatsapp:{sender}" if sender else ""

    def _addresses(self, out: OutboundMessage) -> tuple[str, str]:
        """(from, to) as Twilio wants them for the outbound channel."""
        to = strip_whatsapp(out.to_address)
        if out.channel == "whatsapp":
            sender = self._whatsapp_from()
            if not sender:
                raise PermanentFailure("no WhatsApp sender is configured "
                                       "(twilio.whatsapp_from or twilio.sms_from)")
            return sender, f"whatsapp:{to}"
        if out.channel in ("sms", "voice"):
            if not self._config.sms_from:
                raise PermanentFailure("twilio.sms_from is not set: there is no number to send "
                                       "text messages from")
            return self._config.sms_from, to
        raise PermanentFailure(f"the twilio channel does not send on {out.channel!r}")

    async def send(self, outbound: OutboundMessage) -> Receipt:
        client, records = self._client, self._records
        if client is None or records is None or self._stopping:
            raise TemporaryFailure("the twilio channel is not running")
        sender, to = self._addresses(outbound)
        number = strip_whatsapp(to)
        if not number.startswith("+"):
            raise PermanentFailure(f"{number!r} is not a phone number a text can be sent to")
        if await records.opted_out(number):
            raise PermanentFailure(OPTED_OUT)
        whatsapp = outbound.channel == "whatsapp"
        parts: list[tuple[str, list[str]]] = [(body, []) for body in
                                              split_text(outbound.text, MAX_BODY)]
        if outbound.attachments:
            parts = await self._with_media(outbound, parts, whatsapp=whatsapp)
        if not parts:
            raise PermanentFailure("the message is empty")
        if whatsapp:
            await self._window(client, sender, to, number, outbound)
        key = outbound.idempotency_key
        done = await records.parts.sent("twilio", key)
        callback = f"{self._public_url}{STATUS_PATH}"
        sids: list[str] = []
        for index, (body, media) in enumerate(parts):
            if index in done:
                sids.append(done[index])
                continue
            sid, status = await self._create(client, sender, to, body, callback, number,
                                             media=media)
            sids.append(sid)
            await records.parts.record("twilio", key, index, len(parts), sid, status,
                                       rank=status_rank)
        return Receipt(remote_id=",".join(sids),
                       detail=f"{len(parts)} message(s) from {sender} to {to}")

    async def _with_media(self, outbound: OutboundMessage, parts: list[tuple[str, list[str]]], *,
                    whatsapp: bool) -> list[tuple[str, list[str]]]:
        """The messages a reply with files goes out as: by MMS, every file (at most 10, 5 MB
        in all) with the first text; on WhatsApp (one medium a message) each file in a message
        of its own after the text. Twilio fetches each file from a signed link on
        ``http.public_url``. A file that cannot go fails the reply before anything is sent."""
        files = outbound.attachments
        check_files(files, WHATSAPP_FILES if whatsapp else MMS_FILES)
        if self._links is None:
            raise PermanentFailure("files cannot be sent here: frontdesk serves no links to "
                                   "them (http.public_url)")
        try:
            urls = [await self._links.url(f) for f in files]
        except FileProblem as exc:
            raise PermanentFailure(f"the files cannot be sent: {exc}") from None
        if whatsapp:
            return [*parts, *(("", [url]) for url in urls)]
        if not parts:
            return [("", urls)]
        return [(parts[0][0], urls), *parts[1:]]

    async def _window(self, client: Client, sender: str, to: str, number: str,
                      outbound: OutboundMessage) -> None:
        """WhatsApp takes free-form text only within 24 hours of the customer's last message.
        Past that, the configured template goes out once and the reply is held (the customer's
        next message releases it); without a template the reply fails saying why."""
        if self._store is None or self._clock is None:
            raise TemporaryFailure("the twilio channel is not running")
        last = await last_written(self._store, "whatsapp", outbound.to_address)
        if last is not None and self._clock() - last <= WHATSAPP_WINDOW:
            return
        sid = self._config.whatsapp_template_sid
        if not sid or outbound.automated:
            when = ("has not written on WhatsApp" if last is None else
                    f"last wrote {int((self._clock() - last).total_seconds() // 3600)} hours ago")
            raise PermanentFailure(
                "WhatsApp allows free-form replies only within 24 hours of the customer's last "
                f"message, and the customer {when}; set twilio.whatsapp_template_sid to send an "
                "approved template that asks them to write again")
        records = self._records
        assert records is not None
        key = f"template:{outbound.idempotency_key}"
        if not await records.parts.sent("twilio", key):
            values = template_words(outbound.conversation_reference, outbound.to_name,
                                    outbound.subject)
            variables = {str(i): v.format_map(values)[:500] for i, v in
                         enumerate(self._config.whatsapp_template_variables, start=1)}
            timeout = self._config.request_timeout.total_seconds()
            try:
                message = await asyncio.wait_for(
                    client.api.account.messages.create_async(
                        to=to, from_=sender, content_sid=sid,
                        content_variables=json.dumps(variables)), timeout=timeout + 5)
            except (TwilioRestException, TwilioServiceException) as exc:
                raise await self._rest_failure(exc, number) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise TemporaryFailure(f"could not reach Twilio: {type(exc).__name__}") from None
            await records.parts.record("twilio", key, 0, 1, str(message.sid), "sent",
                                       rank=status_rank)
            log.info("twilio: the WhatsApp window of %s is closed: template %s sent, the reply "
                     "waits for their answer", outbound.conversation_reference or "a customer",
                     sid)
        raise Held(HELD + "; the template asking them to write went out",
                       retry_after=HOLD_FOR)

    async def _create(self, client: Client, sender: str, to: str, body: str, callback: str,
                      number: str, *, media: list[str] | None = None) -> tuple[str, str]:
        timeout = self._config.request_timeout.total_seconds()
        extra: dict[str, Any] = {"media_url": media} if media else {}
        try:
            message = await asyncio.wait_for(
                client.api.account.messages.create_async(
                    to=to, from_=sender, body=body, status_callback=callback, **extra),
                timeout=timeout + 5)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise await self._rest_failure(exc, number) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TemporaryFailure(f"could not reach Twilio: {type(exc).__name__} {exc}".strip()
                                   ) from None
        return str(message.sid), STATUS.get(str(message.status or "queued"), "queued")

    async def _rest_failure(self, exc: TwilioRestException | TwilioServiceException,
                            number: str) -> DeliveryError:
        status = int(getattr(exc, "status", 0) or 0)
        try:
            code = int(getattr(exc, "code", 0) or 0)
        except (TypeError, ValueError):
            code = 0
        said = str(getattr(exc, "msg", "") or getattr(exc, "detail", "") or "").strip()
        if code == 21610:
            if self._records is not None:
                try:
                    await self._records.mark_opted_out(number, source="twilio-21610")
                except Exception as store_exc:  # noqa: BLE001 - the failure reason still stands
                    log.warning("could not remember that %s opted out: %s", number, store_exc)
            return PermanentFailure(OPTED_OUT_AT_TWILIO)
        if status == 429 or code == 20429:
            return TemporaryFailure("Twilio is rate limiting this account (HTTP 429)")
        if status >= 500 or status == 0:
            return TemporaryFailure(f"Twilio had a server error (HTTP {status})")
        if status in (401, 403):
            return TemporaryFailure(f"Twilio refused the account credentials (HTTP {status}); "
                                    "check twilio.account_sid and twilio.auth_token")
        words = PERMANENT_ERRORS.get(code)
        if words:
            return PermanentFailure(f"{words} (Twilio error {code})")
        detail = said.removeprefix("Unable to create record: ")
        return PermanentFailure(f"Twilio refused the message (HTTP {status}"
                                + (f", error {code}" if code else "") + ")"
                                + (f": {detail}" if detail else ""))

    # -- media ----------------------------------------------------------------------------------

    def _auth_for(self, url: URL) -> dict[str, str]:
        """HTTP basic auth with the account's credentials, for Twilio's own hosts only: the
        configured api_base_url (scheme, host and port exactly) and, over https, twilio.com and
        its subdomains (regional API hosts). Never for a CDN or storage host a redirect points
        at (those URLs carry their own short-lived signature), nor for any other port."""
        host = (url.raw_host or "").rstrip(".").lower()
        twilio = url.scheme == "https" and url.port == 443 and (
            host == "twilio.com" or host.endswith(".twilio.com"))
        if url.origin() == self._api_origin or twilio:
            pair = f"{self._config.account_sid}:{self._token}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    async def _fetch_media(self, item: Mapping[str, Any]) -> Attachment:
        """One MMS media item or recording, from Twilio's media hosts only (see
        :mod:`frontdesk.channels.media`): a URL or redirect elsewhere is a permanent failure
        with the reason, recorded on the attachment job."""
        media = self._media
        if media is None or not media.running:
            raise TemporaryFailure("the twilio channel is not running")
        got = await media.fetch(str(item["url"]))
        if got.status in (404, 410):
            raise PermanentFailure(f"Twilio no longer has this file (HTTP {got.status})")
        if got.status in (401, 403):
            raise PermanentFailure(f"Twilio refused the account credentials for the file "
                                   f"(HTTP {got.status})")
        if got.status == 429 or got.status >= 500:
            raise TemporaryFailure(f"Twilio answered HTTP {got.status} for the file")
        if got.status != 200:
            raise PermanentFailure(f"{got.origin} answered HTTP {got.status} for the file")
        content_type = got.content_type or str(item.get("content_type")
                                               or "application/octet-stream")
        return Attachment(filename=str(item["filename"]),
                          content_type=content_type.split(";")[0].strip(), data=got.data)
