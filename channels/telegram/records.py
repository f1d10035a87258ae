"""The Telegram channel's store-side half: the getUpdates offset, /start and file jobs.

* The offset is saved after the updates before it are journaled, so a restart starts from it:
  nothing lost (it never runs ahead of the journal) and nothing stored twice (a re-fetched
  update hits the journal's unique key).
* /start (a user opening the bot) is answered with ``telegram.greeting`` and opens no
  conversation.
* Photos, documents and voice notes are fetched by a background outbox job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.chat_records import (
    AttachmentJob,
    OutboundParts,
    automated_reply,
    insert_for,
    kick_after_commit,
)
from frontdesk.channels.telegram.parse import COMMAND, file_items
from frontdesk.domain.messages import InboundMessage
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation, Event, Message, TelegramOffset, core_table

log = logging.getLogger(__name__)

FILE_JOB = "telegram_file"


class TelegramRecords:
    def __init__(self, store: Store, *, clock: Clock, greeting: str, files: AttachmentJob,
                 kick: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._kick = kick
        self._clock = clock
        self._greeting = greeting
        self.files = files
        self.parts = OutboundParts(store, clock=clock)
        self._insert = insert_for(store.dialect)

    async def load_offset(self, bot_id: str) -> int | None:
        async with self._store.reader() as s:
            return (await s.execute(
                select(TelegramOffset.next_offset).where(TelegramOffset.bot_id == bot_id)
            )).scalar()

    async def save_offset(self, bot_id: str, offset: int) -> None:
        now = self._clock()
        stmt = self._insert(core_table(TelegramOffset)).values(
            bot_id=bot_id, next_offset=offset, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["bot_id"],
                                          set_={"next_offset": offset, "updated_at": now})
        async with self._store.session() as s:
            await s.execute(stmt)

    async def before_store(self, session: AsyncSession, m: InboundMessage, journal_id: int,
                           now: datetime) -> bool:
        if m.channel != "telegram" or m.headers.get(COMMAND) != "start":
            return False
        session.add(automated_reply(channel="telegram", to_address=m.headers.get("chat_id")
                                    or m.sender_address, text=self._greeting,
                                    key=f"telegram-greeting-{journal_id}", now=now))
        kick_after_commit(session, self._kick)
        session.add(Event(kind="bot_started", actor="customer", created_at=now,
                          data={"user_id": m.sender_address, "journal_id": journal_id}))
        return True

    async def after_store(self, session: AsyncSession, conversation: Conversation,
                          message: Message, is_new: bool) -> None:
        if message.channel != "telegram":
            return
        items = file_items(message.headers or {})
        if items:
            session.add(self.files.row(message, items, self._clock()))
            kick_after_commit(session, self._kick)
