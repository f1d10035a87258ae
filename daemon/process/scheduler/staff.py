"""Notices to staff on the Slack desk: a line in a conversation's thread (an SLA warning, an
escalation level, a rating) and a post in a Slack channel outside any thread (a managers' channel).

The scheduler is handed the desk by the daemon and reaches it only through the
:class:`Desk` Protocol (:class:`frontdesk.daemon.desk.service.SlackDesk` satisfies it), so it
depends on no Slack class. Both kinds of notice go through the outbox: a thread line as the desk's
own row (:attr:`Desk.queue`'s ``text``, in order with the conversation's other Slack work), a
channel post as a row of kind :data:`CHANNEL_POST` that :meth:`StaffNotices.handle_channel_post`
hands to the desk's :meth:`Desk.post_to_channel`. Without a desk (no ``slack.bot_token``) no
notice is written and the caller records why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import PermanentFailure
from frontdesk.daemon.process.scheduler.rows import OutboxRows
from frontdesk.domain.messages import Receipt
from frontdesk.storage.models import Conversation, Outbox

CHANNEL_POST = "escalation_post"
"""Outbox kind of an escalation notice in a Slack channel outside the thread (managers)."""

class ThreadPoster(Protocol):
    """The desk's queue (``SlackQueue.text``): post text in the conversation's thread, written as
    an outbox row in the caller's transaction; ``key`` makes it idempotent."""

    async def text(self, session: AsyncSession, conversation: Conversation, text: str,
                   now: datetime, key: str | None = None) -> object: ...


class Desk(Protocol):
    """What the scheduler needs of the Slack desk."""

    @property
    def name(self) -> str: ...

    @property
    def queue(self) -> ThreadPoster: ...

    async def post_to_channel(self, channel_id: str, text: str) -> Receipt:
        """Post in a Slack channel outside any thread, paced; raises the outbox's
        DeliveryError kinds (rate limits, a missing channel)."""
        ...


class StaffNotices:
    """Slack notices, through whichever desk the daemon runs."""

    def __init__(self, desk: Desk | None) -> None:
        self._desk = desk

    def desk(self) -> Desk | None:
        """The Slack desk; None when it is not configured."""
        return self._desk

    async def in_thread(self, s: AsyncSession, c: Conversation, text: str, now: datetime, *,
                        key: str) -> bool:
        """Post in the conversation's Slack thread through the desk's queue; False without a
        desk. Written once per key."""
        desk = self.desk()
        if desk is None:
            return False
        exists = (await s.execute(select(Outbox.id).where(Outbox.idempotency_key == key))).first()
        if exists is None:
            await desk.queue.text(s, c, text, now, key=key)
        return True

    def in_channel(self, rows: OutboxRows, channel_id: str, text: str, *, conversation_id: int,
                   key: str, now: datetime) -> bool:
        """Queue a post in the Slack channel ``channel_id`` with the batch's rows (kind
        :data:`CHANNEL_POST`); False without a desk."""
        if self.desk() is None:
            return False
        rows.add(kind=CHANNEL_POST, key=key, now=now,
                 payload={"slack_channel": channel_id, "target": channel_id, "text": text,
                          "conversation_id": conversation_id})
        return True

    async def handle_channel_post(self, row: Outbox) -> Receipt:
        """The outbox handler of :data:`CHANNEL_POST`: the desk posts the notice."""
        desk = self.desk()
        if desk is None:
            raise PermanentFailure("the Slack desk is not configured (slack.bot_token)")
        payload = row.payload or {}
        return await desk.post_to_channel(str(payload["slack_channel"]), str(payload["text"]))
