"""Conversations written straight into the store, for the tests of figures (the dashboard, the
weekly digest, ``report --by``): several weeks, channels, tags, assignees, ratings and first
responses, with times chosen around a given ``now``.

Each :class:`Seed` becomes a contact, a conversation, the customer's first message (at
``created_at``) and, when it was answered, a staff reply at ``first_responded_at``; an internal
note is added to each too (never counted). The first-response due time is one hour after the
start (the tests' SLA: business hours "always", first_response "1h").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from frontdesk.storage.db import Store
from frontdesk.storage.models import Contact, Conversation, Event, Message

DUE = timedelta(hours=1)


@dataclass(frozen=True)
class Seed:
    created_at: datetime
    channel: str = "email"
    tags: list[str] = field(default_factory=list)
    first_response: timedelta | None = None
    """How long after the start staff answered (None: not yet)."""
    rating: int | None = None
    status: str = "open"
    assignee: str | None = None
    escalations: int = 0


async def seed(store: Store, seeds: list[Seed]) -> list[int]:
    """Write ``seeds``; their conversation ids, in order."""
    ids: list[int] = []
    async with store.session() as s:
        for n, spec in enumerate(seeds):
            at = spec.created_at
            contact = Contact(name=f"Customer {n}", created_at=at, updated_at=at)
            s.add(contact)
            await s.flush()
            answered = None if spec.first_response is None else at + spec.first_response
            resolved = spec.status == "resolved"
            c = Conversation(
                status=spec.status, channel=spec.channel, contact_id=contact.id,
                subject=f"Question {n}", assignee=spec.assignee, created_at=at,
                updated_at=answered or at, last_customer_message_at=at,
                first_response_due_at=at + DUE, first_responded_at=answered,
                resolved_at=(answered or at) + timedelta(minutes=5) if resolved else None,
                survey_sent_at=(answered or at) + timedelta(hours=1)
                if spec.rating is not None else None,
                rating=spec.rating, tags=list(spec.tags))
            s.add(c)
            await s.flush()
            ids.append(c.id)
            s.add(Message(conversation_id=c.id, direction="in", author="customer",
                          channel=spec.channel, text="Hello", created_at=at,
                          external_id=f"seed-{c.id}-in"))
            s.add(Message(conversation_id=c.id, direction="out", author="staff",
                          channel=spec.channel, text="a note", is_note=True,
                          created_at=at + timedelta(minutes=1)))
            if answered is not None:
                s.add(Message(conversation_id=c.id, direction="out", author="staff",
                              channel=spec.channel, text="Hi!", created_at=answered,
                              delivery_status="sent"))
            for level in range(spec.escalations):
                s.add(Event(kind="escalated", conversation_id=c.id, contact_id=contact.id,
                            created_at=at + DUE + timedelta(minutes=level),
                            data={"level": level + 1}))
    return ids
