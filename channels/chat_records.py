"""The store-side half the chat channels (Twilio, Telegram) share.

Adapters know their remote protocol and nothing of the store; what they need kept is done here,
by objects the daemon composes (``channel.attach(daemon)``):

* :class:`AttachmentJob`: an outbox handler that fetches a stored message's files (MMS media,
  a voicemail recording, Telegram photos and documents) into the attachment store in the
  background, so a webhook is answered at once and a failed download is retried with the
  outbox's backoff. Each file has a fixed name, so a retry fetches only what is still missing.
* :class:`OutboundParts`: the remote messages a long outbound text was sent as, so a retry after
  a failure in the middle does not send the first parts twice, and the delivery status the
  remote side reports per part.
* :func:`automated_reply`: an outbox row for an automated answer outside any conversation
  (an SMS HELP reply, the Telegram /start greeting).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import DeliveryError, PermanentFailure, TemporaryFailure
from frontdesk.domain.messages import Attachment as FileData
from frontdesk.domain.messages import OutboundMessage, Receipt
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import Attachment, Event, Message, OutboundPart, Outbox

log = logging.getLogger(__name__)

FetchFile = Callable[[Mapping[str, Any]], Awaitable[FileData]]
"""Fetch one file described by a job item (``url`` or ``file_id``, ``filename``,
``content_type``); raises TemporaryFailure or PermanentFailure."""


class FileStore(Protocol):
    """What :class:`AttachmentJob` needs of the daemon's attachment store: ``put(data)`` writes
    the file under its SHA-256 and returns the digest."""

    def put(self, data: bytes) -> str: ...


def insert_for(dialect: str) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_*``)."""
    return sqlite.insert if dialect == "sqlite" else postgresql.insert


class AttachmentJob:
    """Outbox handler for one kind of file-fetching row (``twilio_media``, ``telegram_file``)."""

    def __init__(self, kind: str, store: Store, files: FileStore, fetch: FetchFile, *,
                 clock: Clock) -> None:
        self.kind = kind
        self._store = store
        self._files = files
        self._fetch = fetch
        self._clock = clock

    def row(self, message: Message, items: Sequence[Mapping[str, Any]], now: datetime) -> Outbox:
        """The outbox row that fetches ``items`` for ``message`` (add it to the session)."""
        return Outbox(
            kind=self.kind, conversation_id=message.conversation_id, message_id=message.id,
            payload={"channel": message.channel, "target": f"files of message {message.id}",
                     "files": [dict(i) for i in items]},
            idempotency_key=f"{self.kind}-{message.id}", state="pending", attempts=0,
            next_attempt_at=now, created_at=now,
        )

    async def __call__(self, row: Outbox) -> Receipt:
        items: list[Mapping[str, Any]] = list((row.payload or {}).get("files", []))
        if row.message_id is None:
            raise PermanentFailure("the job names no message to attach the files to")
        async with self._store.reader() as s:
            have = set((await s.execute(
                select(Attachment.filename).where(Attachment.message_id == row.message_id)
            )).scalars())
        todo = [i for i in items if i.get("filename") not in have]
        got: list[FileData] = []
        problems: list[DeliveryError] = []
        for item in todo:
            try:
                got.append(await self._fetch(item))
            except DeliveryError as exc:
                log.warning("fetching %s for message %d failed: %s", item.get("filename"),
                            row.message_id, exc.reason)
                problems.append(exc)
        if got:
            await asyncio.to_thread(lambda: [self._files.put(f.data) for f in got])
            now = self._clock()
            async with self._store.session() as s:
                message = await s.get(Message, row.message_id)
                if message is None:
                    raise PermanentFailure(f"message {row.message_id} is gone")
                for f in got:
                    s.add(Attachment(message_id=row.message_id, filename=f.filename[:512],
                                     content_type=f.content_type[:256], size=len(f.data),
                                     sha256=hashlib.sha256(f.data).hexdigest()))
                s.add(Event(kind="attachments_fetched", conversation_id=message.conversation_id,
                            message_id=message.id, created_at=now,
                            data={"files": [f.filename for f in got]}))
        missing = len(problems)
        if missing:
            temporary = [p for p in problems if isinstance(p, TemporaryFailure)]
            first = (temporary or problems)[0]
            reason = (f"{missing} of {len(items)} file(s) could not be fetched: {first.reason}")
            if temporary:
                waits = [p.retry_after for p in temporary if p.retry_after]
                raise TemporaryFailure(reason, retry_after=max(waits) if waits else None)
            raise PermanentFailure(reason)
        return Receipt(detail=f"{len(got)} file(s) stored")


class OutboundParts:
    """Which parts of an outbound message went out, keyed by the outbox idempotency key."""

    def __init__(self, store: Store, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def sent(self, channel: str, key: str) -> dict[int, str]:
        """``{part: remote_id}`` of the parts already accepted by the remote side."""
        if not key:
            return {}
        async with self._store.reader() as s:
            rows = (await s.execute(
                select(OutboundPart.part, OutboundPart.remote_id)
                .where(OutboundPart.channel == channel, OutboundPart.outbox_key == key)
            )).all()
        return {r.part: r.remote_id for r in rows}

    async def record(self, channel: str, key: str, part: int, parts: int, remote_id: str,
                     status: str, *, rank: Callable[[str], int] = lambda _: 0) -> None:
        """Remember one sent part. A status the remote side reported before this (a fast
        status callback) is kept when it is further along (``rank``)."""
        now = self._clock()
        async with self._store.session() as s:
            message_id = None
            if key:
                message_id = (await s.execute(
                    select(Outbox.message_id).where(Outbox.idempotency_key == key)
                )).scalar()
            existing = (await s.execute(
                select(OutboundPart).where(OutboundPart.channel == channel,
                                           OutboundPart.remote_id == remote_id)
            )).scalars().first()
            if existing is None:
                s.add(OutboundPart(channel=channel, remote_id=remote_id, outbox_key=key or None,
                                   message_id=message_id, part=part, parts=parts, status=status,
                                   created_at=now, updated_at=now))
                return
            existing.outbox_key = key or None
            existing.message_id = message_id
            existing.part, existing.parts = part, parts
            if rank(status) > rank(existing.status):
                existing.status = status
            existing.updated_at = now


HELD = "waiting for the customer to write again: the 24-hour window is closed"
"""How a reply held for a closed WhatsApp window starts its outbox ``last_error`` (``frontdesk
show`` prints it): the approved template went out and the reply waits, without counting
attempts, until the customer's next message releases it (:func:`release_held`)."""
HOLD_FOR = 30 * 24 * 3600.0
"""How long a held reply waits before the outbox looks at it again anyway (seconds)."""


async def last_written(store: Store, channel: str, address: str) -> datetime | None:
    """When the customer at ``address`` last wrote on ``channel`` (a messaging window's
    start), or None if they never did."""
    async with store.reader() as s:
        return (await s.execute(
            select(Message.created_at).where(Message.channel == channel,
                                             Message.direction == "in",
                                             Message.address == address,
                                             Message.automated.is_(False))
            .order_by(Message.id.desc()).limit(1))).scalar()


async def release_held(session: AsyncSession, message: Message, now: datetime) -> int:
    """The customer wrote (``message``): every reply held for a closed window in their
    conversation on that channel is due now. The number released (audited)."""
    result = await session.execute(
        update(Outbox).where(Outbox.state == "pending", Outbox.kind == "deliver",
                             Outbox.channel == message.channel,
                             Outbox.conversation_id == message.conversation_id,
                             Outbox.last_error.like(HELD + "%"))
        .values(next_attempt_at=now))
    released = int(getattr(result, "rowcount", 0) or 0)
    if released:
        session.add(Event(kind="held_replies_released", conversation_id=message.conversation_id,
                          message_id=message.id, created_at=now,
                          data={"channel": message.channel, "replies": released}))
    return released


def kick_after_commit(session: AsyncSession, kick: Callable[[], None]) -> None:
    """Wake the outbox worker once the session's transaction commits (rows written in it are
    then visible), rather than at its next poll."""
    event.listen(session.sync_session, "after_commit", lambda _s: kick(), once=True)


def automated_reply(*, channel: str, to_address: str, text: str, key: str,
                    now: datetime) -> Outbox:
    """An outbox row that sends an automated text outside any conversation."""
    out = OutboundMessage(channel=channel, to_address=to_address, text=text, automated=True,
                          idempotency_key=key)
    return Outbox(kind="deliver", conversation_id=None, message_id=None, payload=asdict(out),
                  idempotency_key=key, state="pending", attempts=0, next_attempt_at=now,
                  created_at=now)


async def journal_siblings(session: AsyncSession, channel: str,
                           remote_ids: Sequence[str]) -> list[Any]:
    """Journal rows of ``channel`` with the given remote ids (raw and meta), oldest first."""
    from frontdesk.storage.models import InboundJournal

    if not remote_ids:
        return []
    return list((await session.execute(
        select(InboundJournal.id, InboundJournal.raw, InboundJournal.meta)
        .where(InboundJournal.channel == channel, InboundJournal.remote_id.in_(remote_ids))
        .order_by(InboundJournal.id)
    )).all())
