"""Which conversations a sweep takes, and how it holds them while it acts on them.

A sweep claims the conversations that are due (``next_due_at <= now``) or that changed since the
scheduler last planned them (``updated_at <> sla_checked_at``: a staff reply, resolve or snooze
made in Slack or on the command line, whatever the writer's clock said). On PostgreSQL the claim
is ``SELECT ... FOR NO KEY UPDATE SKIP LOCKED``, so several instances never act on the same
conversation at once; on SQLite every transaction begins ``IMMEDIATE`` (one writer at a time), so
the select inside it is already a claim. The ingest hook locks the conversation it plans the same
way (:func:`reload_own_columns`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Select, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from frontdesk.storage.models import Conversation

OWN_COLUMNS = ("sla_state", "sla_policy", "priority", "escalation_level", "escalation_due_at",
               "first_response_due_at", "next_response_due_at", "resolution_due_at",
               "ack_due_at", "survey_due_at", "survey_sent_at", "reminder_due_at", "rating",
               "rated_at", "next_due_at", "sla_checked_at")
"""The columns of a conversation the scheduler writes (its due times and bookkeeping)."""


async def begin(s: AsyncSession, clock: Callable[[], datetime]) -> datetime:
    """Begin the transaction (SQLite: BEGIN IMMEDIATE, the write lock), then read the clock:
    every change committed before it then lies at or before "now"."""
    await s.connection()
    return clock()


def _claimable(query: Select[int], dialect: str) -> Select[int]:
    if dialect == "postgresql":
        # NO KEY UPDATE: a claimed conversation still takes new messages, events and outbox
        # rows that point at it (their foreign-key checks would otherwise wait on the sweep)
        return query.with_for_update(skip_locked=True, key_share=True)
    return query  # SQLite: the transaction began IMMEDIATE, one writer at a time


async def claim(s: AsyncSession, dialect: str, now: datetime, limit: int) -> list[int]:
    """Up to ``limit`` due and up to ``limit`` changed conversations no other sweep holds."""
    due = (select(Conversation.id).where(Conversation.next_due_at <= now)
           .order_by(Conversation.next_due_at).limit(limit))
    changed = (select(Conversation.id)
               .where(Conversation.updated_at != Conversation.sla_checked_at).limit(limit))
    postgres = dialect == "postgresql"
    if postgres:
        # PostgreSQL guesses that "updated_at <> sla_checked_at" matches most rows and, to lock
        # a few, would rather read the whole table than the (nearly empty) partial index
        # ix_conversations_sla_dirty; forbid that for the claim only.
        await s.execute(text("SET LOCAL enable_seqscan = off"))
    ids = list((await s.execute(_claimable(due, dialect))).scalars())
    ids += [i for i in (await s.execute(_claimable(changed, dialect))).scalars() if i not in ids]
    if postgres:
        await s.execute(text("SET LOCAL enable_seqscan = on"))
    return ids


async def claim_one(s: AsyncSession, dialect: str, conversation_id: int) -> bool:
    """Claim one conversation; False when another sweep holds it (or it is gone)."""
    query = select(Conversation.id).where(Conversation.id == conversation_id)
    return (await s.execute(_claimable(query, dialect))).first() is not None


async def reload_own_columns(s: AsyncSession, c: Conversation) -> None:
    """Lock the conversation and take the scheduler's columns as committed now: a sweep of
    another instance (or of this one) may have fired an escalation level since the processor
    read the row, and planning from the older copy would undo it."""
    columns = [getattr(Conversation, name) for name in OWN_COLUMNS]
    row = (await s.execute(select(*columns).where(Conversation.id == c.id)
                           .with_for_update(key_share=True))).one()
    for name, value in zip(OWN_COLUMNS, row, strict=True):
        set_committed_value(c, name, value)
