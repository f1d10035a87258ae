"""The website channel's store side: what a visitor may read, what they have seen, the email
they gave, and the mail of a reply they did not see.

A visitor's conversations are the ``web`` conversations of their contact in which they wrote
(a message with their visitor id as its address): a visitor id names exactly one browser, and
nothing here takes a conversation or message id from a visitor without checking it is theirs.

"Seen" is a ``web_seen`` event per staff message (the widget reports what it showed in an open
panel); the message's ``delivery_status`` becomes ``delivered``. A staff reply that is not seen
``offline_email_after`` after it went out is mailed to the address the visitor gave: a
``web_offline_mail`` outbox job checks and queues the mail (threaded like every mail of ours,
so an answer by mail joins the conversation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import DeliveryError
from frontdesk.channels.web.parse import WEB_EMAIL, WEB_PAGE
from frontdesk.domain.contacts import ContactError, request_link, root_contact
from frontdesk.domain.messages import OutboundFile, OutboundMessage, Receipt
from frontdesk.domain.replies import ReplyComposer, ReplyContext, attach_files
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    IdentityLink,
    Message,
    Outbox,
)

log = logging.getLogger(__name__)

OFFLINE_MAIL = "web_offline_mail"
"""The outbox kind of the check "was this reply seen; if not, mail it"."""
OFFLINE_KIND = "web-offline-mail"
"""``X-Frontdesk-Kind`` of the stored copy of such a mail (not shown again in the widget)."""
SEEN = "web_seen"
HISTORY_LIMIT = 200


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def message_view(m: Message) -> dict[str, Any]:
    """A message as the widget shows it: text only, never markup."""
    client_id = None
    if m.channel == "web" and m.direction == "in" and m.external_id and ":" in m.external_id:
        client_id = m.external_id.split(":", 1)[1]
    text = m.text_new if m.direction == "in" and m.text_new is not None else m.text
    return {"id": m.id, "client_id": client_id,
            "author": m.author if m.author in ("customer", "staff", "system") else "system",
            "author_name": m.author_name if m.author == "staff" else "",
            "text": text or "", "created_at": _iso(m.created_at),
            "attachments": [{"id": a.id, "name": a.filename, "content_type": a.content_type,
                             "size": a.size} for a in m.attachments]}


def shown(m: Message) -> bool:
    """Whether the widget shows a message of a visitor's conversation (not an internal note,
    not the mailed copy of a reply it already shows, not a reply that failed: its files were
    over the widget's cap)."""
    if m.is_note or m.direction not in ("in", "out"):
        return False
    if m.direction == "out" and m.delivery_status == "failed":
        return False
    return not (m.direction == "out" and (m.headers or {}).get("X-Frontdesk-Kind") == OFFLINE_KIND)


@dataclass(frozen=True)
class History:
    reference: str | None
    email: str | None
    messages: list[dict[str, Any]]


class WebRecords:
    def __init__(self, store: Store, *, clock: Clock, replies: ReplyComposer, title: str,
                 offline_after: timedelta, kick: Any) -> None:
        self._store = store
        self._clock = clock
        self._replies = replies
        self._title = title
        self._offline_after = offline_after
        self._kick = kick

    # -- what a visitor may read -----------------------------------------------------------------

    def reader(self) -> AsyncSession:
        return self._store.reader()

    async def conversations(self, session: AsyncSession, visitor: str) -> list[int]:
        """The ids of the visitor's conversations, oldest first."""
        contact_id = (await session.execute(
            select(Identity.contact_id).where(Identity.channel == "web",
                                              Identity.address == visitor))).scalar()
        if contact_id is None:
            return []
        contact = await root_contact(session, await session.get_one(Contact, contact_id))
        candidates = (await session.execute(
            select(Conversation.id).where(Conversation.contact_id == contact.id,
                                          Conversation.channel == "web")
            .order_by(Conversation.id))).scalars().all()
        if not candidates:
            return []
        mine = (await session.execute(
            select(Message.conversation_id).where(
                Message.conversation_id.in_(candidates), Message.channel == "web",
                Message.direction == "in", Message.address == visitor)
            .group_by(Message.conversation_id))).scalars().all()
        return sorted(mine)

    async def history(self, visitor: str, *, after: int = 0, limit: int = HISTORY_LIMIT,
                      conversations: Sequence[int] | None = None) -> History:
        """The visitor's messages after ``after`` (``conversations``: theirs, when the caller
        has just looked them up)."""
        async with self._store.reader() as s:
            ids = list(conversations) if conversations is not None \
                else await self.conversations(s, visitor)
            if not ids:
                return History(None, None, [])
            rows = (await s.execute(
                select(Message).where(Message.conversation_id.in_(ids), Message.id > after)
                .order_by(Message.id.desc()).limit(limit))).scalars().all()
            latest = await s.get_one(Conversation, ids[-1])
            email = (await s.execute(
                select(Message.headers).where(Message.conversation_id.in_(ids),
                                              Message.channel == "web",
                                              Message.address == visitor)
                .order_by(Message.id.desc()).limit(20))).scalars().all()
        given = next((h[WEB_EMAIL] for h in email if h and h.get(WEB_EMAIL)), None)
        views = [message_view(m) for m in reversed(rows) if shown(m)]
        return History(latest.reference, given, views)

    async def attachment(self, visitor: str, attachment_id: int) -> Attachment | None:
        """An attachment of one of the visitor's conversations, else None."""
        async with self._store.reader() as s:
            found = (await s.execute(
                select(Attachment, Message.conversation_id)
                .join(Message, Message.id == Attachment.message_id)
                .where(Attachment.id == attachment_id))).first()
            if found is None:
                return None
            attachment, conversation_id = found
            message = await s.get(Message, attachment.message_id)
            if message is None or not shown(message):  # a failed reply's files stay unsent
                return None
            mine = await self.conversations(s, visitor)
        return attachment if conversation_id in mine else None

    async def mark_seen(self, visitor: str, ids: Iterable[int]) -> int:
        """Record that the visitor's open widget showed these staff or system messages; ids
        that are not theirs are ignored. The number newly marked."""
        wanted = sorted({int(i) for i in ids})[:500]
        if not wanted:
            return 0
        now = self._clock()
        async with self._store.session() as s:
            mine = await self.conversations(s, visitor)
            if not mine:
                return 0
            rows = (await s.execute(
                select(Message).where(Message.id.in_(wanted), Message.conversation_id.in_(mine),
                                      Message.direction == "out"))).scalars().all()
            seen = set((await s.execute(
                select(Event.message_id).where(Event.kind == SEEN,
                                               Event.message_id.in_([m.id for m in rows]))
            )).scalars().all())
            marked = 0
            for m in rows:
                if m.id in seen:
                    continue
                s.add(Event(kind=SEEN, actor="customer", conversation_id=m.conversation_id,
                            message_id=m.id, created_at=now, data={"visitor": visitor}))
                if m.delivery_status == "sent":
                    m.delivery_status = "delivered"
                marked += 1
        return marked

    async def reference_of(self, external_id: str, *, timeout: float = 15.0) -> str | None:
        """The conversation a journaled message went into, once the processor stored it (the
        contact form names it); None if that takes longer than ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        while True:
            async with self._store.reader() as s:
                found = (await s.execute(
                    select(Message.conversation_id).where(Message.external_id == external_id)
                    .limit(1))).scalar()
            if found is not None:
                return f"FD-{found}"
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    # -- hooks in the core's transactions --------------------------------------------------------

    async def after_store(self, session: AsyncSession, conversation: Conversation,
                          message: Message, is_new: bool) -> None:
        """A visitor who gives an email address gets a code there (the verified-link rule: an
        address typed into a widget proves nothing; only the code coming back in the chat
        links it, and merges the contact who had it)."""
        if message.channel != "web" or message.direction != "in":
            return
        address = (message.headers or {}).get(WEB_EMAIL)
        if not address:
            return
        contact = await root_contact(session,
                                     await session.get_one(Contact, conversation.contact_id))
        owned = (await session.execute(
            select(Identity.id).where(Identity.contact_id == contact.id,
                                      Identity.channel == "email", Identity.address == address)
        )).first()
        asked = (await session.execute(
            select(IdentityLink.id).where(IdentityLink.contact_id == contact.id,
                                          IdentityLink.channel == "email",
                                          IdentityLink.address == address,
                                          IdentityLink.state.in_(("pending", "verified")))
        )).first()
        if owned or asked:
            return
        try:
            await request_link(session, contact, address, replies=self._replies,
                               now=message.created_at, requested_by="customer",
                               conversation=conversation)
        except ContactError as exc:
            log.info("web: no verification code sent to the address visitor %s gave: %s",
                     message.address, exc)

    async def after_delivery(self, session: AsyncSession, row: Outbox,
                             error: DeliveryError | None) -> None:
        """A staff reply shown to a visitor: seen already (a fast widget reports it before the
        outbox marks it sent) stays ``delivered``; else a mail follows if it stays unseen."""
        if error is not None or row.kind != "deliver" or row.message_id is None:
            return
        if (row.payload or {}).get("channel") != "web":
            return
        message = await session.get(Message, row.message_id)
        if message is None:
            return
        if (await session.execute(select(Event.id).where(
                Event.kind == SEEN, Event.message_id == message.id))).first():
            message.delivery_status = "delivered"
            return
        if message.author != "staff":
            return
        now = self._clock()
        key = f"web-offline-{message.id}"
        session.add(Outbox(kind=OFFLINE_MAIL, conversation_id=row.conversation_id,
                           message_id=message.id, payload={"message_id": message.id},
                           idempotency_key=key, state="pending", attempts=0,
                           next_attempt_at=now + self._offline_after, created_at=now))

    # -- the offline mail ------------------------------------------------------------------------

    async def offline_mail(self, row: Outbox) -> Receipt:
        """The outbox handler of :data:`OFFLINE_MAIL`: mail the reply unless it was seen."""
        now = self._clock()
        async with self._store.session() as s:
            message = await s.get(Message, row.message_id) if row.message_id else None
            if message is None:
                return Receipt(detail="the reply is gone; nothing to mail")
            if (await s.execute(select(Event.id).where(
                    Event.kind == SEEN, Event.message_id == message.id))).first():
                return Receipt(detail="the visitor saw the reply in the widget; not mailed")
            conversation = await s.get_one(Conversation, message.conversation_id)
            given = (await s.execute(
                select(Message).where(Message.conversation_id == conversation.id,
                                      Message.channel == "web", Message.direction == "in")
                .order_by(Message.id.desc()).limit(50))).scalars().all()
            source = next((m for m in given if (m.headers or {}).get(WEB_EMAIL)), None)
            if source is None:
                return Receipt(detail="the visitor gave no email address; not mailed")
            address = source.headers[WEB_EMAIL]
            page = next((m.headers[WEB_PAGE] for m in given if (m.headers or {}).get(WEB_PAGE)),
                        "")
            earlier = [e for e in (await s.execute(
                select(Message.external_id).where(Message.conversation_id == conversation.id,
                                                  Message.channel == "email",
                                                  Message.external_id.is_not(None))
                .order_by(Message.id))).scalars() if e]
            text = self.mail_text(conversation.reference, message, page)
            out = self._replies.compose(
                OutboundMessage(channel="email", to_address=address, text=text,
                                subject=f"{self._title}: a reply to your message "
                                        f"[{conversation.reference}]",
                                conversation_reference=conversation.reference),
                ReplyContext(reference=conversation.reference, subject=conversation.subject,
                             inbox_address=conversation.inbox_address,
                             answering=earlier[-1] if earlier else None, earlier=earlier))
            copy = Message(conversation_id=conversation.id, direction="out", author="system",
                           author_name="Website chat", channel="email",
                           external_id=out.message_id, address=address, subject=out.subject,
                           text=text, headers={"X-Frontdesk-Kind": OFFLINE_KIND},
                           automated=True, delivery_status="queued", created_at=now)
            s.add(copy)
            await s.flush()
            files = await attach_files(s, copy, [  # the reply's files go with the mail
                OutboundFile(a.filename, a.content_type, a.size, a.sha256)
                for a in message.attachments])
            key = f"message-{copy.id}"
            s.add(Outbox(kind="deliver", conversation_id=conversation.id, message_id=copy.id,
                         payload=asdict(replace(out, idempotency_key=key, attachments=files)),
                         idempotency_key=key, state="pending", attempts=0,
                         next_attempt_at=now, created_at=now))
            s.add(Event(kind="web_offline_mail", actor="system",
                        conversation_id=conversation.id, message_id=message.id,
                        created_at=now, data={"to": address, "mail_message_id": copy.id}))
        self._kick()
        return Receipt(detail=f"not seen in the widget; mailed to {address}")

    def mail_text(self, reference: str, reply: Message, page: str) -> str:
        who = reply.author_name or self._title
        quoted = "\n".join(f"> {line}" if line else ">" for line in reply.text.splitlines())
        back = (f"\n\nYou can also answer on the page you wrote from:\n{page}\n" if page
                else "\n")
        return (f"Hello,\n\n{who} answered your message to {self._title} ({reference}) while "
                f"you were away:\n\n{quoted}\n\nReply to this email to answer; your answer joins "
                f"the same conversation.{back}")


async def message_ids_after(session: AsyncSession, floor: int,
                            limit: int = 5000) -> Sequence[int]:
    """The ids of the messages above ``floor``, in order (the live streams' feed)."""
    return (await session.execute(
        select(Message.id).where(Message.id > floor).order_by(Message.id).limit(limit)
    )).scalars().all()


async def messages_by_id(session: AsyncSession, ids: Sequence[int]) -> Sequence[Message]:
    return (await session.execute(
        select(Message).where(Message.id.in_(list(ids))).order_by(Message.id)
    )).scalars().all()


async def newest_message_id(session: AsyncSession) -> int:
    found = (await session.execute(select(Message.id).order_by(Message.id.desc()).limit(1))
             ).scalar()
    return int(found or 0)
