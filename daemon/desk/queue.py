"""The Slack desk's work as outbox rows, written in the caller's transaction (no Slack SDK here).

Every row is of kind :data:`KIND` with the conversation set, so the outbox keeps one order per
conversation: the root post first, then the thread posts, root refreshes and reactions in the
order they were written. ``payload["op"]`` says what to do:

* ``root``: post the conversation's root message (its card, rendered when it is sent);
* ``message``: mirror a stored message (a later customer message, a reply sent from the command
  line, an acknowledgement) into the thread;
* ``text``: post ready-made mrkdwn in the thread (delivery failures, actions, escalations);
* ``update``: refresh the root message with chat.update (skipped when nothing changed);
* ``reaction``: add an emoji to a Slack message (a staff reply that was sent);
* ``files``: upload a customer message's files into the thread (Slack's external upload), those
  up to ``slack.upload_max``; with ``announce``, the larger ones are named (files fetched after
  the message's thread line, which could not name them).

``payload["slack_channel"]`` is the Slack channel, for the per-channel backlog gauge (and
``payload["target"]`` names it in the outbox's logs). Other parts
of frontdesk (the scheduler's escalation notices) post in a thread with :meth:`SlackQueue.text`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import CoreSettings, SlackRoute
from frontdesk.domain.rules import Subject
from frontdesk.domain.sla import contact_tags
from frontdesk.storage.models import (
    Base,
    Contact,
    Conversation,
    Message,
    Outbox,
    SlackThread,
    core_table,
)

log = logging.getLogger(__name__)

KIND = "slack"


async def insert_once(session: AsyncSession, model: type[Base], key: str,
                      **values: Any) -> None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING``, on SQLite and PostgreSQL alike."""
    insert = sqlite.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert
    await session.execute(insert(core_table(model)).values(**values).on_conflict_do_nothing(
        index_elements=[key]))




def route(routes: list[SlackRoute], default: str, *, channel: str, inbox_address: str | None,
          text: str, tags: set[str]) -> str:
    """The Slack channel for a conversation: the first route whose every condition matches."""
    subject = Subject(channel, inbox_address, text, tags)
    for r in routes:
        if subject.matches(r):
            return r.channel_id
    return default


class SlackQueue:
    """Writes the Slack desk's outbox rows; knows the routes, so it can open a thread anywhere."""

    def __init__(self, settings: CoreSettings) -> None:
        self._slack = settings.slack

    async def thread(self, session: AsyncSession, conversation: Conversation,
                     now: datetime, first: Message | None = None, *,
                     new: bool = False) -> SlackThread:
        """The conversation's thread record, made (and routed) on first use. ``new``: the
        conversation was made in this transaction, so it has no record yet and one is added
        without a query."""
        if not new:
            found = await session.get(SlackThread, conversation.id)
            if found is not None:
                return found
        contact = await session.get(Contact, conversation.contact_id)
        if first is None:
            first = (await session.execute(
                select(Message).where(Message.conversation_id == conversation.id)
                .order_by(Message.id).limit(1))).scalars().first()
        text = f"{conversation.subject}\n{first.text if first else ''}"
        channel_id = route(self._slack.routes, self._slack.channel_id,
                           channel=conversation.channel, inbox_address=conversation.inbox_address,
                           text=text, tags=contact_tags(contact))
        values: dict[str, Any] = dict(
            conversation_id=conversation.id, channel_id=channel_id, ts=None,
            root_attempted_at=None, rendered_hash=None, alerts_only_notice=False, created_at=now,
            updated_at=now)
        if new:
            record = SlackThread(**values)
            session.add(record)
            return record
        await insert_once(session, SlackThread, "conversation_id", **values)
        return await session.get_one(SlackThread, conversation.id)

    async def _add(self, session: AsyncSession, conversation: Conversation, now: datetime,
                   op: str, key: str, first: Message | None = None, new: bool = False,
                   **payload: Any) -> Outbox:
        thread = await self.thread(session, conversation, now, first, new=new)
        if thread.ts:  # the root is posted: the post goes in its thread without a lookup
            payload.setdefault("thread_ts", thread.ts)
        row = Outbox(kind=KIND, conversation_id=conversation.id,
                     message_id=payload.get("message_id"),
                     payload={"op": op, "slack_channel": thread.channel_id,
                              "target": thread.channel_id, **payload},
                     idempotency_key=key, state="pending", attempts=0, next_attempt_at=now,
                     created_at=now)
        session.add(row)  # written with the rest of the transaction, in the order added
        return row

    async def root(self, session: AsyncSession, conversation: Conversation, first: Message,
                   now: datetime, *, new: bool = False) -> Outbox:
        """``new``: the conversation was made in this transaction (no thread record yet)."""
        return await self._add(session, conversation, now, "root",
                               f"slack-root-{conversation.id}", first=first, new=new)

    async def message(self, session: AsyncSession, conversation: Conversation, message_id: int,
                      now: datetime) -> Outbox:
        return await self._add(session, conversation, now, "message",
                               f"slack-message-{message_id}", message_id=message_id)

    async def text(self, session: AsyncSession, conversation: Conversation, text: str,
                   now: datetime, key: str | None = None) -> Outbox:
        """Post ``text`` (Slack mrkdwn; escape customer words with
        :func:`frontdesk.daemon.desk.blocks.escape`) in the conversation's thread. ``key``
        makes it idempotent (an escalation notice written twice is posted once)."""
        return await self._add(session, conversation, now, "text",
                               key or f"slack-text-{uuid.uuid4().hex}", text=text)

    async def update(self, session: AsyncSession, conversation: Conversation, now: datetime,
                     key: str | None = None) -> Outbox:
        return await self._add(session, conversation, now, "update",
                               key or f"slack-update-{uuid.uuid4().hex}")

    async def files(self, session: AsyncSession, conversation: Conversation, message_id: int,
                    attachment_ids: list[int], now: datetime, *, key: str | None = None,
                    announce: bool = False, slack_channel: str | None = None) -> Outbox:
        """Upload these attachments of a customer message into the thread, once (``key``).
        ``slack_channel``: the thread's channel when its record was made in this transaction
        (a new conversation's root row names it), so none is looked up."""
        payload: dict[str, Any] = {"message_id": message_id, "attachment_ids": attachment_ids,
                                   "announce": announce}
        if slack_channel is None:
            return await self._add(session, conversation, now, "files",
                                   key or f"slack-files-{message_id}", **payload)
        row = Outbox(kind=KIND, conversation_id=conversation.id, message_id=message_id,
                     payload={"op": "files", "slack_channel": slack_channel,
                              "target": slack_channel, **payload},
                     idempotency_key=key or f"slack-files-{message_id}", state="pending",
                     attempts=0, next_attempt_at=now, created_at=now)
        session.add(row)
        return row

    async def reaction(self, session: AsyncSession, conversation: Conversation, *, channel: str,
                       ts: str, name: str, now: datetime) -> Outbox:
        return await self._add(session, conversation, now, "reaction",
                               f"slack-reaction-{channel}-{ts}-{name}", in_channel=channel,
                               ts=ts, name=name)
