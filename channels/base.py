"""The seam between the core and every customer channel.

A channel is a package under ``channels/`` with:

* a config section model, a :class:`ChannelSection` whose ``build(core)`` returns the channel(s)
  it can run or, for each it cannot, the one-line reason it is disabled (never a secret);
* receive: ``async start(accept)`` / ``async stop()``. ``accept(channel, remote_id, raw, meta)``
  journals the raw message and returns only after the commit; the adapter answers its remote
  side (SMTP 250, HTTP 200) after that and answers temporarily (451, 503) if it raises;
* parse: ``parse(raw, meta) -> InboundMessage``: pure, no I/O, so it can be re-run on a dead
  letter after a fix;
* send: ``async send(outbound) -> Receipt``; raises :class:`TemporaryFailure` (retry later) or
  :class:`PermanentFailure` (give up, with words a person understands);
* ``bind(context) -> ChannelParts``: before start, the core hands the channel a typed
  :class:`ChannelContext` (the store for its own records, attachment files, the clock, metrics,
  leadership, the reply composer, the business calendar) and the channel answers with what it
  adds to the core (HTTP routes, hooks in the processing transaction, outbox handlers). That is
  all a channel sees of the core, and all the core sees of a channel.

Adapters know their remote protocol; the daemon composes them from the settings' channel
sections (:mod:`frontdesk.daemon.process.registry`), never the other way round.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import CoreSettings, Section
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.files import FileLinks
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt
from frontdesk.domain.replies import ReplyComposer, Threading
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation, Message, Outbox


class DeliveryError(Exception):
    """A send that did not work. ``reason`` is for people (Slack, `frontdesk show`)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Try again later (connection refused, 4xx, timeouts, rate limits)."""


class Unanswered(TemporaryFailure):
    """Try again later, for as long as it takes: a receiver that must get every event (an
    outgoing webhook). Past ``daemon.outbox_max_attempts`` the row is not given up but retried
    at the longest backoff (``daemon.outbox_retry_max``) until it is taken or cancelled."""


class Deferred(TemporaryFailure):
    """Not tried now: a rate limit (the remote side's Retry-After, or a pace of our own) says
    wait ``retry_after`` seconds. The outbox waits exactly that long, and the wait does not count
    as a failed attempt, so a long queue behind a rate limit never gives up."""


class Held(Deferred):
    """Not sent: the reply waits for the customer (a closed messaging window; the template that
    asks them to write went out). The outbox waits ``retry_after`` (or until the channel makes
    the row due again) and, the first time, tells the delivery hooks, so staff see it."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help (5xx from the relay, opted-out number, unknown user)."""


class ParseError(ValueError):
    """The raw message cannot be turned into an InboundMessage; it stays in the journal."""


class Accept(Protocol):
    """The journal as a channel reaches it: journal and commit, then answer."""

    def __call__(self, channel: str, remote_id: str, raw: bytes,
                 meta: Mapping[str, Any], /) -> Awaitable[bool]:
        """``accept(channel, remote_id, raw, meta)``: True if new, False if seen; raises when
        the commit failed."""

    def many(self, channel: str, items: Sequence[tuple[str, bytes]], /) -> Awaitable[list[bool]]:
        """Several messages of one delivery, each (remote id, raw) under its own id, in the
        same commit: one answer each, as a call answers."""


InboundHook = Callable[[AsyncSession, Conversation, Message, bool], Awaitable[None]]
"""Called inside the processing transaction for every new customer message (e.g. to write
outbox rows for the Slack desk or an acknowledgement); the bool says the conversation is new."""

InboundFilter = Callable[[AsyncSession, InboundMessage, int, datetime], Awaitable[bool]]
"""``filter(session, message, journal_id, now)`` runs inside the processing transaction before a
new message is stored; True means it took the message whole and nothing more is stored (an SMS
opt-out keyword, a bot's /start, a voicemail transcript that updates an earlier message)."""

OutboxHandler = Callable[[Outbox], Awaitable[Receipt]]
"""Work of a kind of its own in the outbox (a Slack post, a media fetch): ``handler(row)``."""

DeliveryHook = Callable[[AsyncSession, Outbox, "DeliveryError | None"], Awaitable[None]]
"""Runs in the transaction that marks an outbox row sent (error None) or failed for good, and
once when a reply is first held for the customer (a :class:`Held` error)."""

RoundPreload = Callable[[AsyncSession, Sequence[Outbox]], Awaitable[Sequence[object]]]
"""Reads at once, for a round of sends, what the delivery hooks and the receipts' ``record``
steps will look up row by row in the transaction that marks the round; returns what it read,
which the outbox holds while it marks (a session keeps what it loaded only weakly)."""

Consumer = Callable[[], Coroutine[Any, Any, None]]
"""A single consumer's loop (see :class:`Leader`)."""


class Leader(Protocol):
    """Leadership of one single consumer (an IMAP mailbox, a Telegram bot's getUpdates): with
    several instances on PostgreSQL only the elected one runs it; on SQLite it runs at once."""

    @property
    def following(self) -> bool:
        """Another instance leads and this one is a healthy standby (ready)."""
        ...

    async def run(self, consumer: Consumer, *, stop: asyncio.Event | None = None) -> None: ...


@dataclasses.dataclass(frozen=True)
class ChannelContext:
    """What the core gives a channel at composition; a channel reaches the core through this
    alone."""

    store: Store
    """For the channel's own records (opt-outs, offsets, checkpoints) and its processing hooks."""
    clock: Clock
    attachments: AttachmentStore
    replies: ReplyComposer
    calendar: BusinessCalendar
    """Opening hours (a voice greeting says whether someone is there)."""
    metrics: CollectorRegistry
    """Where a channel registers metrics of its own (served on ``/metrics``)."""
    leadership: Callable[[str], Leader]
    """``leadership(name)``: an elector for one single consumer named ``name``."""
    kick_outbox: Callable[[], None]
    """Wake the outbox worker now (after a commit that queued work)."""
    first_response_due: Callable[[datetime], datetime]
    """When a new conversation opened at ``at`` is promised its first answer (the SLA's first
    response time in business hours): what a website tells a visitor before they write."""
    file_links: FileLinks | None = None
    """Signed links on ``http.public_url`` to files staff send, for providers that fetch a file
    by URL (Twilio, Meta): ``await file_links.url(file)``."""


@dataclasses.dataclass(frozen=True)
class ChannelParts:
    """What a channel adds to the core (the answer to ``bind``)."""

    routes: Sequence[web.RouteDef] = ()
    inbound_filters: Sequence[InboundFilter] = ()
    inbound_hooks: Sequence[InboundHook] = ()
    delivery_hooks: Sequence[DeliveryHook] = ()
    outbox_handlers: Mapping[str, OutboxHandler] = dataclasses.field(default_factory=dict)
    outbox_wakers: Sequence[Callable[[], None]] = ()
    """Called when another instance on the same PostgreSQL committed outbox rows (its
    notification): the reply it wrote is in the store now (the web hub reads it at once rather
    than at its next poll)."""
    answers: Callable[[OutboundMessage], bool] | None = None
    """For a customer channel that two channels send (WhatsApp through Twilio and through
    Meta): whether this one sends ``outbound`` (it received the message it answers). A channel
    without it sends what no other one claims."""


class Channel(Protocol):
    """A customer channel as the daemon composes it.

    ``journal_names``: the channel names its journal rows carry (Twilio journals ``sms``,
    ``whatsapp`` and ``voice``), each parsed by this channel; ``channel_names``: the customer
    channels whose replies it sends. An IMAP reader journals as ``email`` for the email channel
    to parse and has neither.
    """

    name: str

    @property
    def journal_names(self) -> tuple[str, ...]: ...

    @property
    def channel_names(self) -> tuple[str, ...]: ...

    def bind(self, context: ChannelContext) -> ChannelParts: ...

    async def start(self, accept: Accept) -> None: ...

    async def stop(self) -> None: ...

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage: ...

    async def send(self, outbound: OutboundMessage) -> Receipt: ...

    @property
    def ready(self) -> bool: ...


class ChannelSection(Section):
    """A channel's config section (``[email]``, ``[twilio]``, ...), owned by its package."""

    channel_names: ClassVar[tuple[str, ...]]
    """The customer channels it serves, as conversations and identities name them."""

    @abstractmethod
    def build(self, core: CoreSettings) -> list[Channel | str]:
        """The channels this section configures, or for each that cannot run the one-line
        reason it is disabled (missing credentials; never a secret). SDKs are imported only for
        a channel that runs."""

    def threading(self) -> Threading | None:
        """How replies on this channel thread on the customer's side (email), if at all."""
        return None

    def replies_via(self) -> Mapping[str, str]:
        """Customer channels of this section whose replies go out on another channel (a contact
        form is answered by email): ``{"form": "email"}``."""
        return {}
