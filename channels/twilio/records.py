"""The Twilio channel's store-side half: opt-outs, cross-channel phone identities, voicemail
transcripts, MMS media jobs and delivery statuses.

It plugs into the daemon (see ``TwilioChannel.attach``) as

* an inbound filter, run in the processing transaction before a message is stored: opt-out
  keywords (STOP, START, HELP ...) change the number's opt-out state and open no conversation;
  a transcription callback fills in its voicemail's text; a phone number seen on one of sms,
  whatsapp, voice is linked to the same contact on the others;
* an inbound hook, run after a message is stored: queues the background job that fetches its
  MMS media (or the voicemail recording), and applies a transcript that came first;
* a delivery hook, run when the outbox marks a reply sent: re-applies a status callback that
  arrived before the outbox got there;
* ``record_status`` for POST /webhooks/twilio/status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import DeliveryError
from frontdesk.channels.chat_records import (
    AttachmentJob,
    OutboundParts,
    automated_reply,
    insert_for,
    journal_siblings,
    kick_after_commit,
    release_held,
)
from frontdesk.channels.twilio.parse import (
    HELP_WORDS,
    KIND,
    START_WORDS,
    STOP_WORDS,
    keyword,
    media_items,
    voicemail_text,
)
from frontdesk.config.schema import PHONE_CHANNELS
from frontdesk.domain.messages import InboundMessage
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Conversation,
    Event,
    Identity,
    Message,
    OutboundPart,
    Outbox,
    PhoneOptOut,
    core_table,
)

log = logging.getLogger(__name__)

Parser = Callable[[bytes, Mapping[str, Any]], InboundMessage]

MEDIA_JOB = "twilio_media"

# Twilio's MessageStatus values → CONTRACT delivery_status.
STATUS = {
    "accepted": "queued", "scheduled": "queued", "queued": "queued", "sending": "queued",
    "sent": "sent", "delivered": "delivered", "read": "delivered",
    "undelivered": "failed", "failed": "failed", "canceled": "failed",
}
_RANK = {"queued": 0, "sent": 1, "delivered": 2, "failed": 3}

# Error codes a status callback names, in words a person understands.
ERROR_WORDS = {
    "21610": "the customer opted out of messages from this number (they replied STOP)",
    "30001": "Twilio's sending queue overflowed",
    "30002": "the Twilio account is suspended",
    "30003": "the customer's phone is unreachable (switched off or out of coverage)",
    "30004": "the message was blocked (the customer may have blocked this number)",
    "30005": "the number does not exist or is no longer in service",
    "30006": "the number is a landline or its carrier cannot receive text messages",
    "30007": "the carrier filtered the message as spam",
    "30008": "the carrier could not deliver it (unknown error)",
    "63016": "WhatsApp allows free-form replies only within 24 hours of the customer's "
             "last message",
}


def rank(status: str | None) -> int:
    return _RANK.get(status or "queued", 0)


def failure_words(error_code: str | None) -> str:
    code = (error_code or "").strip()
    words = ERROR_WORDS.get(code, "the carrier reported a failure")
    return f"Twilio could not deliver the message: {words}" + (f" (error {code})" if code else "")


class TwilioRecords:
    def __init__(self, store: Store, *, clock: Clock, parse: Parser, help_text: str,
                 media: AttachmentJob, kick: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._kick = kick
        self._clock = clock
        self._parse = parse
        self._help_text = help_text
        self.media = media
        self.parts = OutboundParts(store, clock=clock)
        self._insert = insert_for(store.dialect)

    # -- opt-outs ------------------------------------------------------------------------------

    async def opted_out(self, address: str) -> bool:
        async with self._store.reader() as s:
            return bool((await s.execute(
                select(PhoneOptOut.opted_out).where(PhoneOptOut.address == address)
            )).scalar())

    async def mark_opted_out(self, address: str, *, source: str, keyword: str = "") -> None:
        """Twilio itself says the number opted out (error 21610): remember it."""
        async with self._store.session() as s:
            await self._set_opt_out(s, address, True, keyword=keyword, source=source,
                                    now=self._clock())
            s.add(Event(kind="opted_out", actor="system", created_at=self._clock(),
                        data={"address": address, "source": source}))

    async def _set_opt_out(self, session: AsyncSession, address: str, opted_out: bool, *,
                           keyword: str, source: str, now: datetime) -> None:
        values = {"address": address, "opted_out": opted_out, "keyword": keyword,
                  "source": source, "changed_at": now}
        stmt = self._insert(core_table(PhoneOptOut)).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["address"],
            set_={k: v for k, v in values.items() if k != "address"})
        await session.execute(stmt)

    async def _is_opted_out(self, session: AsyncSession, address: str) -> bool:
        return bool((await session.execute(
            select(PhoneOptOut.opted_out).where(PhoneOptOut.address == address)
        )).scalar())

    # -- inbound filter (before a message is stored) ------------------------------------------

    async def before_store(self, session: AsyncSession, m: InboundMessage, journal_id: int,
                           now: datetime) -> bool:
        if m.channel not in PHONE_CHANNELS:
            return False
        kind = m.headers.get(KIND)
        if kind == "transcription":
            await self._transcript(session, m, now)
            return True
        if kind == "message" and await self._keyword(session, m, journal_id, now):
            return True
        await self._link_identity(session, m, now)
        return False

    async def _contact_id(self, session: AsyncSession, address: str) -> int | None:
        return (await session.execute(
            select(Identity.contact_id)
            .where(Identity.address == address, Identity.channel.in_(PHONE_CHANNELS))
            .order_by(Identity.id).limit(1)
        )).scalar()

    async def _keyword(self, session: AsyncSession, m: InboundMessage, journal_id: int,
                       now: datetime) -> bool:
        """True when the message was an opt-out/opt-in/help keyword and nothing more is stored."""
        word = keyword(m.text)
        if word is None:
            return False
        address = m.sender_address
        was_out = await self._is_opted_out(session, address)
        event: dict[str, Any] = {"channel": m.channel, "address": address, "keyword": word,
                                 "journal_id": journal_id}
        contact_id = await self._contact_id(session, address)
        if word in STOP_WORDS:
            await self._set_opt_out(session, address, True, keyword=word, source="keyword",
                                    now=now)
            session.add(Event(kind="opted_out", actor="customer", contact_id=contact_id,
                              created_at=now, data=event))
            log.info("%s %s opted out (%s): nothing more is sent to this number",
                     m.channel, address, word)
            return True
        if word in START_WORDS:
            if word == "YES" and not was_out:
                return False  # an ordinary "yes" to a question, not an opt-in
            await self._set_opt_out(session, address, False, keyword=word, source="keyword",
                                    now=now)
            if was_out:
                session.add(Event(kind="opted_in", actor="customer", contact_id=contact_id,
                                  created_at=now, data=event))
                log.info("%s %s opted back in (%s)", m.channel, address, word)
            return True
        if word in HELP_WORDS:
            if was_out:
                log.info("%s %s asked for HELP while opted out: no reply is sent", m.channel,
                         address)
            else:
                session.add(automated_reply(channel=m.channel, to_address=address,
                                            text=self._help_text,
                                            key=f"twilio-help-{journal_id}", now=now))
                kick_after_commit(session, self._kick)
            session.add(Event(kind="help_requested", actor="customer", contact_id=contact_id,
                              created_at=now, data=event))
            return True
        return False

    async def _link_identity(self, session: AsyncSession, m: InboundMessage,
                             now: datetime) -> None:
        """The same number on sms, whatsapp and voice is one person: a new channel's identity
        joins the contact the number already has."""
        address = m.sender_address
        if not address.startswith("+"):
            return
        known = (await session.execute(
            select(Identity).where(Identity.address == address,
                                   Identity.channel.in_(PHONE_CHANNELS))
            .order_by(Identity.id)
        )).scalars().all()
        if not known or any(i.channel == m.channel for i in known):
            return
        first = known[0]
        session.add(Identity(contact_id=first.contact_id, channel=m.channel, address=address,
                             created_at=now))
        session.add(Event(kind="identity_linked", actor="system", contact_id=first.contact_id,
                          created_at=now,
                          data={"channel": m.channel, "address": address,
                                "same_number_on": first.channel}))
        await session.flush()

    async def _transcript(self, session: AsyncSession, m: InboundMessage, now: datetime) -> None:
        recording = m.headers.get("RecordingSid", "")
        message = (await session.execute(
            select(Message).where(Message.channel == "voice", Message.external_id == recording)
        )).scalars().first()
        if message is None:
            return  # the recording callback has not been processed yet; it applies this then
        self._apply_transcript(message, m)
        session.add(Event(kind="voicemail_transcribed", conversation_id=message.conversation_id,
                          message_id=message.id, created_at=now,
                          data={"status": m.headers.get("TranscriptionStatus", "")}))

    @staticmethod
    def _apply_transcript(message: Message, t: InboundMessage) -> None:
        h = message.headers or {}
        message.text = voicemail_text(duration=str(h.get("RecordingDuration", "")),
                                      url=str(h.get("RecordingUrl", "")), transcript=t.text,
                                      status=str(t.headers.get("TranscriptionStatus", "")))

    # -- inbound hook (after a message is stored) ----------------------------------------------

    async def after_store(self, session: AsyncSession, conversation: Conversation,
                          message: Message, is_new: bool) -> None:
        if message.channel not in PHONE_CHANNELS:
            return
        headers = message.headers or {}
        kind = headers.get(KIND)
        now = self._clock()
        if kind == "message":
            items = media_items(headers)
            if items:
                session.add(self.media.row(message, items, now))
            # a WhatsApp customer wrote: replies held for their closed window go now (a
            # conversation this message began has none)
            released = message.channel == "whatsapp" and not is_new and await release_held(
                session, message, now)
            if items or released:
                kick_after_commit(session, self._kick)
        elif kind == "recording":
            sid = str(headers.get("RecordingSid", ""))
            for row in await journal_siblings(session, "voice", [f"transcription:{sid}"]):
                self._apply_transcript(message, self._parse(row.raw, dict(row.meta or {})))
            url = str(headers.get("RecordingUrl", ""))
            if url:
                session.add(self.media.row(message, [{
                    "url": f"{url}.mp3", "content_type": "audio/mpeg",
                    "filename": f"voicemail-{sid}.mp3"}], now))
                kick_after_commit(session, self._kick)

    # -- delivery status ------------------------------------------------------------------------

    async def record_status(self, sid: str, twilio_status: str, error_code: str | None) -> None:
        """A status callback: remember it on the part and settle the message's status."""
        status = STATUS.get(twilio_status.strip().lower())
        if status is None:
            log.debug("ignoring Twilio status %r for %s", twilio_status, sid)
            return
        now = self._clock()
        async with self._store.session() as s:
            part = await self._part(s, sid)
            if part is None:
                try:
                    async with s.begin_nested():
                        s.add(OutboundPart(channel="twilio", remote_id=sid, part=0, parts=1,
                                           status=status, error_code=error_code or None,
                                           created_at=now, updated_at=now))
                    return
                except IntegrityError:
                    part = await self._part(s, sid)
                    if part is None:
                        raise
            if status == "failed" or (part.status != "failed" and rank(status) > rank(part.status)):
                part.status = status
                part.error_code = error_code or part.error_code
                part.updated_at = now
            if part.message_id is not None:
                await self.settle(s, part.message_id)

    async def _part(self, session: AsyncSession, sid: str) -> OutboundPart | None:
        query = select(OutboundPart).where(OutboundPart.channel == "twilio",
                                           OutboundPart.remote_id == sid)
        if self._store.dialect == "postgresql":
            query = query.with_for_update()
        return (await session.execute(query)).scalars().first()

    async def settle(self, session: AsyncSession, message_id: int) -> None:
        """Set the message's delivery_status from its parts' statuses: failed when any part
        failed, else the least advanced part's status, never going backwards."""
        parts = (await session.execute(
            select(OutboundPart).where(OutboundPart.channel == "twilio",
                                       OutboundPart.message_id == message_id)
        )).scalars().all()
        if not parts:
            return
        message = await session.get(Message, message_id)
        if message is None or message.delivery_status == "failed":
            return
        failed = [p for p in parts if p.status == "failed"]
        if failed:
            message.delivery_status = "failed"
            message.failure_reason = failure_words(failed[0].error_code)
            session.add(Event(kind="delivery_failed", conversation_id=message.conversation_id,
                              message_id=message.id, created_at=self._clock(),
                              data={"channel": message.channel, "to": message.address,
                                    "reason": message.failure_reason,
                                    "error_code": failed[0].error_code}))
            return
        total = max(p.parts for p in parts)
        ranks = [rank(p.status) for p in parts] + [0] * max(0, total - len(parts))
        settled = min(ranks)
        if settled > rank(message.delivery_status):
            message.delivery_status = next(k for k, v in _RANK.items() if v == settled)
            if message.delivery_status == "delivered":
                session.add(Event(kind="message_delivered",
                                  conversation_id=message.conversation_id,
                                  message_id=message.id, created_at=self._clock(),
                                  data={"channel": message.channel}))

    async def after_delivery(self, session: AsyncSession, row: Outbox,
                             error: DeliveryError | None) -> None:
        """The outbox marked a reply sent: a status callback may already be further along."""
        if error is None and row.kind == "deliver" and row.message_id is not None \
                and (row.payload or {}).get("channel") in PHONE_CHANNELS:
            await self.settle(session, row.message_id)
