"""The contract every customer channel shares.

A channel adapter has three faces:

* receive: ``async start(accept)`` / ``async stop()``. ``accept(channel, remote_id, raw, meta)``
  journals the raw message and returns only after the commit; the adapter answers its remote
  side (SMTP 250, HTTP 200) after that and answers temporarily (451, 503) if it raises.
* parse: ``parse(raw, meta) -> InboundMessage``: pure, no I/O, so it can be re-run on a dead
  letter after a fix.
* send: ``async send(outbound) -> Receipt``; raises :class:`TemporaryFailure` (retry later) or
  :class:`PermanentFailure` (give up, with words a person understands).

Adapters know their remote protocol and nothing of the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

CHANNELS = ("email", "sms", "whatsapp", "voice", "telegram")


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message; the store names it by its SHA-256."""

    filename: str
    content_type: str
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMessage:
    """One customer message, the same shape whatever network it came from.

    ``thread_refs`` are remote ids of earlier messages this one answers (email In-Reply-To and
    References); ``conversation_hint`` is a conversation number the customer could only know from
    our own mail (a plus-address like support+FD-12@...); ``subject_token`` is a number named in
    the subject ([FD-12]), trusted only when the sender already belongs to that conversation.
    """

    channel: str
    external_id: str
    sender_address: str
    sender_name: str = ""
    subject: str = ""
    text: str = ""
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    thread_refs: tuple[str, ...] = ()
    conversation_hint: int | None = None
    subject_token: int | None = None
    recipients: tuple[str, ...] = ()
    inbox_address: str | None = None
    received_at: datetime | None = None
    automated: bool = False
    automated_reason: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    raw_ref: int | None = None
    text_new: str | None = None
    """The new part of a quoted reply (None: all of ``text`` is new)."""
    delivery_report: DeliveryReport | None = None
    """Set when this message is a bounce or delivery report about mail we sent."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a bounce (a delivery status notification) says about outbound mail of ours.

    ``original_ids`` are the Message-IDs it names (the returned message's, Original-Message-ID,
    In-Reply-To/References); ``failed`` is False for a delay warning or a success notice;
    ``reason`` is in words a person understands.
    """

    original_ids: tuple[str, ...]
    failed: bool
    reason: str
    recipients: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message to deliver to a customer on their channel."""

    channel: str
    to_address: str
    text: str
    subject: str = ""
    conversation_reference: str = ""
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    automated: bool = False
    to_name: str = ""
    idempotency_key: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What the remote side said when it took an outbound message."""

    remote_id: str | None = None
    detail: str = ""


class DeliveryError(Exception):
    """A send that did not work. ``reason`` is for people (Slack, `frontdesk show`)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Try again later (connection refused, 4xx, timeouts, rate limits)."""


class Deferred(TemporaryFailure):
    """Not tried now: a rate limit (the remote side's Retry-After, or a pace of our own) says
    wait ``retry_after`` seconds. The outbox waits exactly that long, and the wait does not count
    as a failed attempt, so a long queue behind a rate limit never gives up."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help (5xx from the relay, opted-out number, unknown user)."""


class ParseError(ValueError):
    """The raw message cannot be turned into an InboundMessage; it stays in the journal."""


Accept = Callable[[str, str, bytes, Mapping[str, Any]], Awaitable[bool]]
"""``accept(channel, remote_id, raw, meta)``: journal and commit; True if new, False if seen."""


class Channel(Protocol):
    """A customer channel as the daemon composes it."""

    name: str

    async def start(self, accept: Accept) -> None: ...

    async def stop(self) -> None: ...

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage: ...

    async def send(self, outbound: OutboundMessage) -> Receipt: ...

    @property
    def ready(self) -> bool: ...
