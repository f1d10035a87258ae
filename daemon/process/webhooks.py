"""Sends the outgoing webhooks the outbox holds (kind ``webhook``), signed per Standard Webhooks.

The rows are queued with the change they report (:mod:`frontdesk.domain.webhooks`); this is the
outbox handler that sends one. The body is built at each attempt from the store as it is then,
so an erasure before delivery is honoured::

    {"type": "message.received", "timestamp": "<the event's time>",
     "data": {"conversation": <summary>, "message": <message>}}

(``message`` only for ``message.*`` events), compact JSON, POSTed to the receiver's ``url`` with
``webhook-id`` (the row's, the same on every retry), ``webhook-timestamp`` (this attempt's time,
in seconds) and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of
``id.timestamp.body`` under the receiver's ``whsec_`` secret).

A 2xx answer delivers it. Anything else is retried with the outbox's backoff, saying why in
words (``hooks.example.com answered 500 Internal Server Error``, ``could not reach ...``); a
``Retry-After`` on 429 or 503 is honoured, redirects are not followed, and ``410 Gone`` gives up
(the receiver says the endpoint is no more). A row for a receiver no longer in the config fails
at once, saying so; one whose conversation or message is gone (erased) is dropped, unsent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from frontdesk import __version__
from frontdesk.channels.base import PermanentFailure, Unanswered
from frontdesk.config.schema import WebhookConfig
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.domain.conversations import conversation_view, message_view
from frontdesk.domain.messages import Receipt
from frontdesk.domain.webhooks import KIND, is_message_type
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation, Message, Outbox

log = logging.getLogger(__name__)

__all__ = ["KIND", "WebhookDelivery", "webhook_body"]

USER_AGENT = f"frontdesk/{__version__}"
RETRY_AFTER_MAX = 24 * 3600.0
"""A receiver's Retry-After is honoured up to a day."""


def webhook_body(webhook_type: str, at: str, conversation: Conversation,
                 message: Message | None) -> bytes:
    """The JSON body of one webhook, compact (the bytes that are signed)."""
    data: dict[str, Any] = {"conversation": conversation_view(conversation)}
    if message is not None:
        data["message"] = message_view(message)
    return json.dumps({"type": webhook_type, "timestamp": at, "data": data},
                      separators=(",", ":")).encode()


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) in seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(0.0, seconds), RETRY_AFTER_MAX)


class _Receiver:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.name = config.receiver
        self.signer = Webhook(config.secret.get_secret_value())
        parts = urlsplit(config.url)
        self.where = parts.netloc.rpartition("@")[2] or config.url  # never a password
        self.timeout = aiohttp.ClientTimeout(total=config.timeout.total_seconds())


class WebhookDelivery:
    """The outbox handler of kind ``webhook`` (:meth:`handle`), and a service of the daemon that
    holds one HTTP client session for every receiver; see the module docstring."""

    name = "webhooks"

    def __init__(self, receivers: Sequence[WebhookConfig], *, store: Store, clock: Clock,
                 metrics: Metrics) -> None:
        self._receivers: Mapping[str, _Receiver] = {
            hook.receiver: _Receiver(hook) for hook in receivers}
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle (a Service of the daemon) -------------------------------------------------------

    async def start(self) -> None:
        self._http()
        log.info("webhooks: %d receiver(s): %s", len(self._receivers),
                 ", ".join(f"{r.name} ({r.where}: {', '.join(r.config.events)})"
                           for r in self._receivers.values()))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def ready(self) -> bool:
        return True  # a receiver that is down waits in the outbox; frontdesk is ready

    def _http(self) -> aiohttp.ClientSession:
        # Made at the first need: the outbox may send a row left from the last run before the
        # services start.
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    # -- the outbox handler ------------------------------------------------------------------------

    async def handle(self, row: Outbox) -> Receipt:
        payload = row.payload or {}
        name = str(payload.get("receiver") or "")
        webhook_type = str(payload.get("type") or "")
        receiver = self._receivers.get(name)
        if receiver is None:
            self._count(name, "dropped")
            raise PermanentFailure(f"the webhook receiver {name!r} is no longer configured "
                                   "([[webhooks]]), so this cannot be sent")
        if webhook_type not in receiver.config.events:
            self._count(name, "dropped")
            raise PermanentFailure(f"the webhook receiver {name!r} is no longer subscribed to "
                                   f"{webhook_type} (its events), so this is not sent")
        body = await self._body(row, webhook_type, str(payload.get("at") or ""))
        if body is None:
            self._count(name, "skipped")
            log.info("outbox #%d: %s for %s not sent: its conversation or message is gone",
                     row.id, webhook_type, name)
            return Receipt(detail="nothing to send: the conversation or message is gone")
        return await self._post(receiver, str(payload["webhook_id"]), body)

    async def _body(self, row: Outbox, webhook_type: str, at: str) -> bytes | None:
        async with self._store.reader() as s:
            conversation = (await s.get(Conversation, row.conversation_id)
                            if row.conversation_id is not None else None)
            if conversation is None:
                return None
            message = None
            if is_message_type(webhook_type):
                message = (await s.get(Message, row.message_id)
                           if row.message_id is not None else None)
                if message is None:
                    return None
            return webhook_body(webhook_type, at, conversation, message)

    async def _post(self, receiver: _Receiver, webhook_id: str, body: bytes) -> Receipt:
        now = self._clock()
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": receiver.signer.sign(webhook_id, now, body),
            "Content-Type": "application/json",
        }
        where = receiver.where
        try:
            async with self._http().post(receiver.config.url, data=body, headers=headers,
                                         timeout=receiver.timeout, allow_redirects=False) as r:
                status, words = r.status, r.reason or ""
                retry_after = r.headers.get("Retry-After")
                location = r.headers.get("Location")
                said = "" if 200 <= status < 300 else await _snippet(r)
        except TimeoutError:
            self._count(receiver.name, "failed")
            raise Unanswered(f"{where} did not answer within "
                                   f"{receiver.timeout.total:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            self._count(receiver.name, "failed")
            raise Unanswered(f"could not reach {where}: {_describe(exc)}") from None
        if 200 <= status < 300:
            self._count(receiver.name, "delivered")
            return Receipt(remote_id=webhook_id, detail=f"{where} answered {status}")
        answer = f"{where} answered {status}{' ' + words if words else ''}"
        if said:
            answer += f" ({said})"
        if status == 410:
            self._count(receiver.name, "gone")
            raise PermanentFailure(f"{answer}: the receiver says the endpoint is gone; not "
                                   "retried")
        self._count(receiver.name, "failed")
        if 300 <= status < 400:
            raise Unanswered(f"{answer}, a redirect{' to ' + location if location else ''}"
                                   "; webhooks do not follow redirects: set url to where it "
                                   "points")
        wait = retry_after_seconds(retry_after, now) if status in (429, 503) else None
        if wait is not None:
            raise Unanswered(f"{answer}; it asks to wait {wait:.0f} s",
                                   retry_after=wait)
        raise Unanswered(answer)

    def _count(self, receiver: str, outcome: str) -> None:
        self._metrics.webhook_deliveries.labels(receiver or "-", outcome).inc()


async def _snippet(response: aiohttp.ClientResponse) -> str:
    """The start of an error answer's body, on one line (for the reason people read)."""
    try:
        data = await response.content.read(200)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:120] + ("..." if len(text) > 120 else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        inner = exc.os_error
        return inner.strerror or str(inner)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
