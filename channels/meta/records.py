"""The Meta channel's store side: delivery statuses, reactions, messaging windows, held replies,
profile names and the files still to fetch.

* Statuses (WhatsApp ``statuses``, Messenger ``delivery`` and ``read``) move a reply's
  ``delivery_status`` forward (``sent`` → ``delivered``; ``read`` counts as ``delivered``) or
  fail it with Meta's reason. A status that arrives before the outbox recorded the send is kept
  and applied then.
* A reaction is noted in the audit of the conversation it belongs to; it is no message.
* The messaging window: when the customer last wrote on that channel from that address.
* Held replies: a WhatsApp reply outside the window waits in the outbox while the re-engagement
  template is out; the customer's next message releases every held reply of theirs at once.
* Profiles: a Messenger or Instagram contact without a name gets one from the Graph API by a
  background job, once per sender (retried like any outbox work), never during ingest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import DeliveryError
from frontdesk.channels.chat_records import (
    AttachmentJob,
    OutboundParts,
    kick_after_commit,
    last_written,
    release_held,
)
from frontdesk.channels.meta.parse import MEDIA, Note
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Contact,
    Conversation,
    Event,
    Message,
    OutboundPart,
    Outbox,
)

log = logging.getLogger(__name__)

MEDIA_JOB = "meta_media"
PROFILE_JOB = "meta_profile"
PART_CHANNEL = "meta"
_RANK = {"queued": 0, "sent": 1, "delivered": 2}
CHANNELS = ("messenger", "instagram", "whatsapp")
_PROFILE_JOBS = "frontdesk.meta.profile_jobs"
"""``session.info`` key: the profile jobs this session queued, by idempotency key."""


def status_words(errors: list[Mapping[str, Any]]) -> str:
    if not errors:
        return "Meta reported the message failed"
    error = errors[0]
    code = error.get("code")
    details = (error.get("error_data") or {}).get("details") if isinstance(
        error.get("error_data"), dict) else None
    said = details or error.get("message") or error.get("title") or "no reason given"
    if code == 131047:
        return ("the customer's 24-hour WhatsApp window is closed: they last wrote more than "
                f"24 hours ago (Meta {code}: {said})")
    if code == 131026:
        return f"WhatsApp could not deliver it: the number may not use WhatsApp (Meta {code})"
    return f"Meta could not deliver it (Meta {code}: {said})"


class MetaRecords:
    def __init__(self, store: Store, *, clock: Clock, files: AttachmentJob,
                 kick: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._kick = kick
        self.files = files
        self.parts = OutboundParts(store, clock=clock)

    # -- the window ------------------------------------------------------------------------------

    async def last_written(self, channel: str, address: str) -> datetime | None:
        """When the customer at ``address`` last wrote on ``channel``."""
        return await last_written(self._store, channel, address)

    # -- processing hooks ------------------------------------------------------------------------

    async def after_store(self, session: AsyncSession, conversation: Conversation,
                          message: Message, is_new: bool) -> None:
        if message.channel not in CHANNELS or message.direction != "in":
            return
        now = self._clock()
        wake = False
        media = (message.headers or {}).get(MEDIA)
        if media:
            try:
                items = json.loads(media)
            except ValueError:
                items = []
            if items:
                session.add(self.files.row(message, items, now))
                wake = True
        # The customer wrote: the window is open again; replies held for it go now (a
        # conversation this message began has none).
        if not is_new and await release_held(session, message, now):
            wake = True
        if message.channel != "whatsapp":
            # the profile is asked for once per nameless contact: a job queued earlier in this
            # transaction or before it is enough (a query only for a contact with no name)
            contact = await session.get(Contact, conversation.contact_id)
            key = f"{PROFILE_JOB}-{message.channel}-{message.address}"[:128]
            queued: dict[str, Outbox] = session.info.setdefault(_PROFILE_JOBS, {})
            job = queued.get(key)
            if contact is not None and not contact.name and (
                    job is None or job not in session) and (  # not rolled back since
                    await session.execute(select(Outbox.id).where(
                        Outbox.idempotency_key == key))).first() is None:
                queued[key] = job = Outbox(
                    kind=PROFILE_JOB, conversation_id=None, message_id=message.id,
                    payload={"channel": message.channel, "user": message.address,
                             "contact_id": contact.id},
                    idempotency_key=key,
                    state="pending", attempts=0, next_attempt_at=now, created_at=now)
                session.add(job)
                wake = True
        if wake:
            kick_after_commit(session, self._kick)

    async def after_delivery(self, session: AsyncSession, row: Outbox,
                             error: DeliveryError | None) -> None:
        if error is None and row.kind == "deliver" and row.message_id is not None \
                and (row.payload or {}).get("channel") in CHANNELS:
            await self._settle(session, row.message_id)

    # -- notes from the webhook ------------------------------------------------------------------

    async def apply(self, notes: list[Note]) -> None:
        """Statuses, receipts and reactions, in one transaction."""
        useful = [n for n in notes if n.kind in ("status", "delivered", "read", "reaction")]
        if not useful:
            return
        async with self._store.session() as s:
            for note in useful:
                if note.kind == "status":
                    await self._status(s, str(note.data.get("id")),
                                       str(note.data.get("status")),
                                       list(note.data.get("errors") or []))
                elif note.kind == "delivered":
                    for mid in note.data.get("mids") or []:
                        await self._status(s, str(mid), "delivered", [])
                elif note.kind == "read":
                    await self._read(s, note.channel, str(note.data.get("sender", "")))
                else:
                    await self._reaction(s, note)

    async def _part(self, s: AsyncSession, remote_id: str) -> OutboundPart | None:
        return (await s.execute(select(OutboundPart).where(
            OutboundPart.channel == PART_CHANNEL, OutboundPart.remote_id == remote_id))
        ).scalars().first()

    async def _status(self, s: AsyncSession, remote_id: str, status: str,
                      errors: list[Mapping[str, Any]]) -> None:
        status = {"read": "delivered"}.get(status, status)
        if status not in ("sent", "delivered", "failed") or not remote_id:
            return
        now = self._clock()
        part = await self._part(s, remote_id)
        if part is None:  # before the outbox recorded the send: kept for then
            code = str(errors[0].get("code", ""))[:16] if errors else None
            s.add(OutboundPart(channel=PART_CHANNEL, remote_id=remote_id, part=0, parts=1,
                               status=status, error_code=code or None, created_at=now,
                               updated_at=now))
            await s.flush()
            return
        if status == "failed" or (part.status != "failed"
                                  and _RANK.get(status, 0) > _RANK.get(part.status, 0)):
            part.status = status
            part.updated_at = now
        if part.message_id is not None:
            await self._settle(s, part.message_id, reason=status_words(errors)
                               if status == "failed" else None)

    async def _settle(self, s: AsyncSession, message_id: int,
                      reason: str | None = None) -> None:
        parts = (await s.execute(select(OutboundPart).where(
            OutboundPart.channel == PART_CHANNEL, OutboundPart.message_id == message_id))
        ).scalars().all()
        message = await s.get(Message, message_id)
        if not parts or message is None or message.delivery_status == "failed":
            return
        failed = [p for p in parts if p.status == "failed"]
        if failed:
            code = failed[0].error_code
            message.delivery_status = "failed"
            message.failure_reason = reason or status_words(
                [{"code": int(code)}] if code and code.isdigit() else [])
            s.add(Event(kind="delivery_failed", conversation_id=message.conversation_id,
                        message_id=message.id, created_at=self._clock(),
                        data={"channel": message.channel, "to": message.address,
                              "reason": message.failure_reason}))
            return
        least = min(_RANK.get(p.status, 0) for p in parts)
        if least > _RANK.get(message.delivery_status or "queued", 0):
            message.delivery_status = next(k for k, v in _RANK.items() if v == least)

    async def _read(self, s: AsyncSession, channel: str, sender: str) -> None:
        """Messenger's read receipt: every reply to ``sender`` sent so far is delivered."""
        if not sender:
            return
        await s.execute(update(Message).where(
            Message.channel == channel, Message.direction == "out", Message.address == sender,
            Message.delivery_status == "sent").values(delivery_status="delivered"))

    async def _reaction(self, s: AsyncSession, note: Note) -> None:
        mid = str(note.data.get("mid") or note.data.get("message_id") or "")
        target = None
        if mid:
            part = await self._part(s, mid)
            if part is not None and part.message_id is not None:
                target = await s.get(Message, part.message_id)
            if target is None:
                target = (await s.execute(select(Message).where(
                    Message.channel == note.channel, Message.external_id == mid))
                ).scalars().first()
        if target is None:
            log.info("meta: a reaction on %s to a message frontdesk does not know", note.channel)
            return
        s.add(Event(kind="reaction", actor="customer", conversation_id=target.conversation_id,
                    message_id=target.id, created_at=self._clock(),
                    data={"channel": note.channel,
                          "emoji": str(note.data.get("emoji") or note.data.get("reaction")
                                       or ""),
                          "action": str(note.data.get("action") or "react")}))

    # -- profile names ---------------------------------------------------------------------------

    async def set_name(self, contact_id: int, name: str) -> bool:
        async with self._store.session() as s:
            contact = await s.get(Contact, contact_id)
            if contact is None or contact.name:
                return False
            contact.name = name[:200]
            contact.updated_at = self._clock()
        return True
