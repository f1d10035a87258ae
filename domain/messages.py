"""The messages of the domain: one customer message in, one message out, whatever the network.

Channels translate their wire formats into :class:`InboundMessage` (parse) and deliver
:class:`OutboundMessage` (send); the processor, the outbox and the reply composer work only with
these shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

SENDER_CHECK = "X-Frontdesk-Sender-Check"
"""The header key, in a stored message's ``headers``, of what is known about its sender address:
``"pass"`` (a trusted upstream authenticated it: DMARC, SPF or DKIM), ``"fail"`` (it failed
that check: a forged sender), ``"unverified"`` (anyone could have typed it: email without a
trusted ``Authentication-Results``). Absent: the channel's provider vouches for the sender (a
phone number from the carrier, a Telegram chat). Acknowledgements go to a ``"fail"`` sender
never, and to an ``"unverified"`` one without repeating any of the sender's own words (their
name, their subject): no backscatter of attacker-chosen text to a third party."""


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
    identity_channel: str = ""
    """The kind of identity ``sender_address`` is, when not ``channel``'s own: a contact form
    (channel ``form``) names its sender by an ``email`` identity."""
    standalone: bool = False
    """It opens a conversation of its own unless its thread refs, hint or subject token name one
    (like every email); otherwise a chat-like channel continues the sender's open conversation."""
    cc: tuple[str, ...] = ()
    """Other people the sender wrote to (email ``Cc:`` and the other ``To:`` recipients), lower
    case, in order, without our own addresses and the sender: they join the conversation's CC
    list (:mod:`frontdesk.domain.cc`)."""


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
class OutboundFile:
    """A file sent with an outbound message: an ``attachments`` row of the message (``id``), its
    bytes in the attachment store under ``sha256``. Channels read the bytes (email, Telegram) or
    hand the provider a signed link to them (Twilio, Meta)."""

    filename: str
    content_type: str
    size: int
    sha256: str
    id: int = 0


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
    cc: tuple[str, ...] = ()
    """Email: addresses copied (``Cc:``, and in the envelope); only on staff replies."""
    attachments: tuple[OutboundFile, ...] = ()
    """Files staff attached (in an outbox payload: dicts, made :class:`OutboundFile` again)."""

    def __post_init__(self) -> None:
        if any(not isinstance(f, OutboundFile) for f in self.attachments):
            object.__setattr__(self, "attachments", tuple(
                f if isinstance(f, OutboundFile) else OutboundFile(**f)
                for f in self.attachments))


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What the remote side said when it took an outbound message."""

    remote_id: str | None = None
    detail: str = ""
    record: Callable[[Any], Awaitable[None]] | None = dataclasses.field(default=None,
                                                                         compare=False)
    """What the sender keeps of the send (a Slack root's ts), written with the outbox row's
    mark in the same transaction: ``await record(session)``."""
