"""What comes in from Slack: thread replies, button clicks and the ``/frontdesk`` command.

One slack-bolt ``AsyncApp`` on the daemon's loop serves both connection modes: HTTP (``POST
/slack/events`` on the daemon's server, every request's signature and timestamp checked by
bolt, 401 and nothing stored when they are wrong) and Socket Mode (the same app behind
``AsyncSocketModeHandler``). Bolt answers Slack only after the listener has committed its work
(``process_before_response``), so an event that got its 200 is in the store; Slack's retries of
the same event (same ``event_id``) are recognised and do nothing.

A human message in a frontdesk thread becomes a staff reply to the customer, sent on the
customer's channel through the outbox; one that starts with ``note:`` stays an internal note
(as does every message when ``slack.replies_enabled`` is false). Messages from bots (frontdesk's
own posts included), edits, deletions and other subtypes, and messages in threads that are not
frontdesk conversations are ignored.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.response import BoltResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.actions import DeskActions, DeskParts
from frontdesk.daemon.desk.api import SlackUser, quiet_logger
from frontdesk.domain.conversations import CannotReply, add_staff_reply
from frontdesk.storage.models import (
    Conversation,
    Event,
    Message,
    SlackEvent,
    SlackMessage,
    SlackThread,
)

log = logging.getLogger(__name__)

_NOTE = re.compile(r"^\s*note:\s*", re.IGNORECASE)
_MENTIONED = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
ALERTS_ONLY_NOTICE = (
    ":no_entry_sign: This desk is alerts-only (`slack.replies_enabled = false`): messages in "
    "this thread are *not* sent to the customer. They are kept as internal notes on {ref}.")
_HUMAN_SUBTYPES = (None, "thread_broadcast")
_SEEN_EVENTS_KEPT = timedelta(days=7)


def is_human_thread_reply(event: dict[str, Any], bot_user_id: str | None,
                          bot_id: str | None) -> bool:
    """A person's new message inside a thread (not a bot's, not an edit, deletion or other
    subtype, not a top-level message)."""
    if event.get("type") != "message" or event.get("subtype") not in _HUMAN_SUBTYPES:
        return False
    if event.get("bot_id") or event.get("bot_profile") or event.get("hidden"):
        return False
    if bot_id is not None and event.get("bot_id") == bot_id:
        return False
    user = event.get("user")
    if not user or user == bot_user_id:
        return False
    thread_ts, ts = event.get("thread_ts"), event.get("ts")
    return bool(thread_ts and ts and thread_ts != ts)


class DeskEvents:
    """The bolt app and its listeners."""

    def __init__(self, desk: DeskParts) -> None:
        self.desk = desk
        self.actions = DeskActions(desk)
        config = desk.config
        self.app = AsyncApp(
            client=desk.api.client, name="frontdesk",
            signing_secret=config.signing_secret.get_secret_value(),
            request_verification_enabled=config.mode == "http",
            process_before_response=True,
            logger=quiet_logger("frontdesk.daemon.desk.bolt"),
        )
        self.app.event("message")(self._message)
        for action_id in (blocks.ACTION_CLAIM, blocks.ACTION_RESOLVE, blocks.ACTION_REOPEN,
                          blocks.ACTION_SNOOZE, blocks.ACTION_PRIORITY):
            self.app.action(action_id)(self._action)
        self.app.command(re.compile(r".+"))(self._command)
        self.app.event(re.compile(r".+"))(self._other_event)

    async def http_handler(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: Events API, interactivity and slash commands."""
        response = await self.app.async_dispatch(await to_bolt_request(request))
        if response.status == 401:  # slack-bolt says why only at INFO, under its own logger
            log.warning("refused a Slack request from %s: bad, missing or expired signature",
                        request.remote)
        return await to_aiohttp_response(response)

    async def forget_old_events(self) -> None:
        """Forget the ``event_id`` of events seen more than a week ago (Slack retries an event
        for minutes, not days)."""
        async with self.desk.store.session() as s:
            await s.execute(delete(SlackEvent).where(
                SlackEvent.received_at < self.desk.clock() - _SEEN_EVENTS_KEPT))

    # -- listeners -----------------------------------------------------------------------------

    async def _message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not is_human_thread_reply(event, self.desk.api.bot_user_id, self.desk.api.bot_id):
            return
        outcome = await self.take_thread_message(
            event_id=str(body.get("event_id") or ""), channel=str(event.get("channel") or ""),
            thread_ts=str(event["thread_ts"]), ts=str(event["ts"]), user_id=str(event["user"]),
            text=str(event.get("text") or ""))
        log.info("slack message %s in thread %s: %s", event.get("ts"), event.get("thread_ts"),
                 outcome)

    async def _action(self, ack: AsyncAck, body: dict[str, Any]) -> BoltResponse:
        await self.actions.on_action(body)
        return await ack()

    async def _command(self, ack: AsyncAck, command: dict[str, Any]) -> BoltResponse:
        text = await self.actions.on_command(command)
        return await ack(text=text, response_type="ephemeral")

    async def _other_event(self, body: dict[str, Any]) -> None:
        log.debug("slack event %s ignored", (body.get("event") or {}).get("type"))

    # -- a staff message in a thread ---------------------------------------------------------------

    async def take_thread_message(self, *, event_id: str, channel: str, thread_ts: str, ts: str,
                                  user_id: str, text: str) -> str:
        """Store a thread message as a staff reply or a note; returns what happened."""
        desk = self.desk
        user = await desk.api.users.get(user_id)
        names: dict[str, str] = {}
        for mentioned in dict.fromkeys(_MENTIONED.findall(text[:4000])[:5]):
            names[mentioned] = (await desk.api.users.get(mentioned)).name
        now = desk.clock()
        plain = blocks.slack_to_plain(text, names)
        try:
            async with desk.store.session() as s:
                if event_id:
                    if await s.get(SlackEvent, event_id) is not None:
                        return "already handled (same event_id)"
                    s.add(SlackEvent(event_id=event_id, received_at=now))
                thread = (await s.execute(select(SlackThread).where(
                    SlackThread.channel_id == channel, SlackThread.ts == thread_ts))
                ).scalars().first()
                if thread is None:
                    return "ignored: not a frontdesk thread"
                if (await s.execute(select(SlackMessage.id).where(
                        SlackMessage.channel_id == channel, SlackMessage.ts == ts))).first():
                    return "already handled (same message)"
                conversation = await s.get_one(Conversation, thread.conversation_id)
                outcome, message_id = await self._store(s, conversation, thread, user, plain,
                                                        channel=channel, ts=ts, now=now)
                if outcome == "ignored: empty":
                    return outcome
                s.add(SlackMessage(message_id=message_id, conversation_id=conversation.id,
                                   channel_id=channel, ts=ts, user_id=user.id,
                                   user_name=user.name[:256], user_email=user.email[:320],
                                   created_at=now))
        except IntegrityError:  # the same event or message, committed a moment ago
            return "already handled (at the same time)"
        desk.kick()
        return outcome

    async def _store(self, s: AsyncSession, conversation: Conversation, thread: SlackThread,
                     user: SlackUser, plain: str, *, channel: str, ts: str,
                     now: datetime) -> tuple[str, int | None]:
        desk = self.desk
        data = user.audit_data(slack_ts=ts)
        note = _NOTE.match(plain)
        if note or not desk.config.replies_enabled:
            body = plain[note.end():].strip() if note else plain
            if not body:
                return "ignored: empty", None
            message = Message(conversation_id=conversation.id, direction="out", author="staff",
                              author_name=user.name[:256], channel=conversation.channel,
                              address="", subject="", text=body, headers={}, is_note=True,
                              delivery_status=None, created_at=now)
            s.add(message)
            await s.flush()
            s.add(Event(kind="note_added", actor=user.actor, conversation_id=conversation.id,
                        contact_id=conversation.contact_id, message_id=message.id,
                        created_at=now, data=data))
            conversation.updated_at = now
            if not note and not thread.alerts_only_notice:
                thread.alerts_only_notice = True
                await desk.queue.text(s, conversation,
                                      ALERTS_ONLY_NOTICE.format(ref=conversation.reference), now,
                                      key=f"slack-alerts-only-{conversation.id}")
            await desk.queue.reaction(s, conversation, channel=channel, ts=ts,
                                      name="memo", now=now)
            return "kept as an internal note", message.id
        try:
            reply = await add_staff_reply(s, conversation, plain, author=user.name[:256],
                                          replies=desk.replies, now=now, actor=user.actor,
                                          event_data=data)
        except CannotReply as exc:
            await desk.queue.text(s, conversation, f":warning: Not sent to the customer: "
                                  f"{blocks.escape(str(exc))}", now)
            return f"not sent: {exc}", None
        return f"queued as staff reply #{reply.id}", reply.id
