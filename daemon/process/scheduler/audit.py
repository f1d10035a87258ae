"""The scheduler's lines in the events audit (``events``): what it did or left undone, and why."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import Conversation, Event

ACTOR = "scheduler"
"""How the events audit (and a staff action's ``actor``) names the scheduler."""


def audit(s: AsyncSession, kind: str, c: Conversation, now: datetime,
          data: Mapping[str, object], *, message_id: int | None = None,
          actor: str = ACTOR) -> None:
    """An event about ``c``, written with the session's transaction."""
    s.add(Event(kind=kind, actor=actor, conversation_id=c.id, contact_id=c.contact_id,
                message_id=message_id, created_at=now, data=dict(data)))
