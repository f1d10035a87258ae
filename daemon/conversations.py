"""What staff can do to a conversation, the same from the command line as from Slack.

Also the JSON views of conversations and messages that CONTRACT.md fixes.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import make_msgid, parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import OutboundMessage
from frontdesk.config.schema import Settings
from frontdesk.storage.models import Contact, Conversation, Event, Message, Outbox

_REF = re.compile(r"^\s*(?:FD-?)?(\d+)\s*$", re.IGNORECASE)


class UnknownConversation(LookupError):
    pass


class CannotReply(ValueError):
    pass


def parse_reference(ref: str) -> int:
    m = _REF.match(ref)
    if not m:
        raise UnknownConversation(f"{ref!r} is not a conversation reference (like FD-12 or 12)")
    return int(m.group(1))


async def get_conversation(session: AsyncSession, ref: str | int) -> Conversation:
    number = ref if isinstance(ref, int) else parse_reference(ref)
    conversation = await session.get(Conversation, number)
    if conversation is None:
        raise UnknownConversation(f"no conversation FD-{number}")
    return conversation


async def messages_of(session: AsyncSession, conversation_id: int) -> list[Message]:
    return list((await session.execute(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    )).scalars().all())


def _reply_subject(subject: str, reference: str) -> str:
    subject = subject.strip() or "Your message"
    return f"Re: {subject} [{reference}]"


def _plus_address(inbox: str, reference: str) -> str:
    local, _, domain = inbox.partition("@")
    return f"{local}+{reference}@{domain}"


async def add_staff_reply(session: AsyncSession, conversation: Conversation, text: str, *,
                          author: str, settings: Settings, now: datetime) -> Message:
    """Store a staff reply and queue its delivery on the customer's channel."""
    text = text.strip()
    if not text:
        raise CannotReply("the reply is empty")
    history = await messages_of(session, conversation.id)
    customer = [m for m in history if m.direction == "in" and m.author == "customer"]
    if not customer:
        raise CannotReply(f"{conversation.reference} has no customer message to answer")
    last = customer[-1]
    channel = conversation.channel
    reference = conversation.reference
    out: dict[str, Any] = {"channel": channel, "to_address": last.address, "text": text,
                           "conversation_reference": reference,
                           "to_name": conversation.contact.name or last.author_name}
    external_id: str | None = None
    subject = ""
    if channel == "email":
        from_domain = parseaddr(settings.email.outbound.from_)[1].rpartition("@")[2] or None
        external_id = make_msgid(domain=from_domain).strip("<>")
        refs = [m.external_id for m in history if m.channel == "email" and m.external_id]
        inbox = conversation.inbox_address or next(iter(settings.email.inbox_addresses), None)
        subject = _reply_subject(conversation.subject, reference)
        out.update(subject=subject, message_id=external_id, in_reply_to=last.external_id,
                   references=tuple(refs[-20:]),
                   reply_to=_plus_address(inbox, reference) if inbox else None)
    message = Message(conversation_id=conversation.id, direction="out", author="staff",
                      author_name=author, channel=channel, external_id=external_id,
                      address=last.address, subject=subject, text=text, headers={},
                      delivery_status="queued", created_at=now)
    session.add(message)
    await session.flush()
    out["idempotency_key"] = f"message-{message.id}"
    session.add(Outbox(kind="deliver", conversation_id=conversation.id, message_id=message.id,
                       payload=asdict(OutboundMessage(**out)),
                       idempotency_key=out["idempotency_key"],
                       state="pending", attempts=0, next_attempt_at=now, created_at=now))
    if conversation.first_responded_at is None:
        conversation.first_responded_at = now
    conversation.last_staff_message_at = now
    conversation.updated_at = now
    if conversation.status == "open":
        conversation.status = "pending"
    session.add(Event(kind="staff_reply", actor=author, conversation_id=conversation.id,
                      message_id=message.id, created_at=now, data={"channel": channel}))
    await session.flush()
    return message


# --- JSON views (CONTRACT.md "--json shapes") -------------------------------------------------

def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def contact_view(contact: Contact) -> dict[str, Any]:
    return {"id": contact.id, "name": contact.name,
            "identities": [{"channel": i.channel, "address": i.address}
                           for i in contact.identities]}


def conversation_view(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id, "reference": c.reference, "status": c.status, "channel": c.channel,
        "subject": c.subject, "priority": c.priority, "assignee": c.assignee,
        "created_at": iso(c.created_at), "updated_at": iso(c.updated_at),
        "first_response_due_at": iso(c.first_response_due_at),
        "first_responded_at": iso(c.first_responded_at), "resolved_at": iso(c.resolved_at),
        "escalation_level": c.escalation_level, "inbox_address": c.inbox_address,
        "contact": contact_view(c.contact),
    }


def message_view(m: Message) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": m.id, "direction": m.direction, "author": m.author, "author_name": m.author_name,
        "channel": m.channel, "address": m.address, "subject": m.subject, "text": m.text,
        "created_at": iso(m.created_at), "delivery_status": m.delivery_status,
        "automated": m.automated, "note": m.is_note, "external_id": m.external_id,
        "sent_at": iso(m.sent_at),
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                         "sha256": a.sha256} for a in m.attachments],
    }
    if m.failure_reason:
        view["failure_reason"] = m.failure_reason
    return view


def conversation_detail(c: Conversation, messages: list[Message]) -> dict[str, Any]:
    return {**conversation_view(c), "messages": [message_view(m) for m in messages]}
