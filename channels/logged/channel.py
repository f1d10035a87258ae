"""The logged channel: contacts staff took by phone, in person or by letter.

Receive: nothing listens; :class:`~frontdesk.channels.logged.intake.Intake` (the REST API, the
Slack form) and ``frontdesk log`` journal the rows. Parse: :mod:`.parse`. Send: replies go out by
email or SMS (the message's reply channel); what is left for this channel is a message to a
customer nobody can reach (no address was given), which fails at once saying they must be
called back.

In the processing transaction it links a phone number known on WhatsApp or voice to its contact
(the same number is one person, as the Twilio channel does) and audits who logged the contact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import Accept, ChannelContext, ChannelParts, PermanentFailure
from frontdesk.channels.logged.contact import LOGGED_CHANNELS
from frontdesk.channels.logged.parse import LOGGED_BY, LOGGED_TOKEN, parse
from frontdesk.config.schema import PHONE_CHANNELS
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt
from frontdesk.storage.models import Conversation, Event, Identity, Message

log = logging.getLogger(__name__)

NOBODY_TO_WRITE_TO = ("there is no email address or phone number for this customer: they must "
                      "be called back")


class LoggedChannel:
    name = "logged"
    in_readiness = False  # nothing outside to wait for: not listed by /readyz
    journal_names = LOGGED_CHANNELS
    channel_names = LOGGED_CHANNELS

    def __init__(self) -> None:
        self._started = False

    def bind(self, context: ChannelContext) -> ChannelParts:
        return ChannelParts(inbound_filters=(link_phone,), inbound_hooks=(audit_logged,))

    async def start(self, accept: Accept) -> None:
        self._started = True
        log.info("logged channel on: contacts taken by phone, in person or by letter become "
                 "conversations (POST /api/v1/inbound, frontdesk log, /frontdesk log in Slack)")

    async def stop(self) -> None:
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return parse(raw, meta)

    async def send(self, outbound: OutboundMessage) -> Receipt:
        raise PermanentFailure(NOBODY_TO_WRITE_TO)


async def link_phone(session: AsyncSession, m: InboundMessage, journal_id: int,
                     now: datetime) -> bool:
    """A number staff were given that a contact has on WhatsApp or voice is that contact's: its
    ``sms`` identity joins them, so the processor finds them. Never takes the message."""
    if m.channel not in LOGGED_CHANNELS or m.identity_channel != "sms":
        return False
    known = (await session.execute(
        select(Identity).where(Identity.address == m.sender_address,
                               Identity.channel.in_(PHONE_CHANNELS))
        .order_by(Identity.id))).scalars().all()
    if not known or any(i.channel == "sms" for i in known):
        return False
    first = known[0]
    session.add(Identity(contact_id=first.contact_id, channel="sms", address=m.sender_address,
                         created_at=now))
    session.add(Event(kind="identity_linked", actor="system", contact_id=first.contact_id,
                      created_at=now, data={"channel": "sms", "address": m.sender_address,
                                            "same_number_on": first.channel}))
    await session.flush()
    return False


async def audit_logged(session: AsyncSession, conversation: Conversation, message: Message,
                       is_new: bool) -> None:
    """Who logged the contact, in the events audit."""
    if message.channel not in LOGGED_CHANNELS or message.direction != "in":
        return
    session.add(Event(kind="contact_logged", actor=str((message.headers or {}).get(LOGGED_BY)
                                                       or "staff")[:256],
                      conversation_id=conversation.id, contact_id=conversation.contact_id,
                      message_id=message.id, created_at=message.created_at,
                      data={"channel": message.channel, "external_id": message.external_id,
                            **_via(message.headers or {})}))


def _via(headers: Mapping[str, Any]) -> dict[str, str]:
    """Where the contact was logged from: the API names its token."""
    token = headers.get(LOGGED_TOKEN)
    return {"via": "api", "token": str(token)} if token else {}
