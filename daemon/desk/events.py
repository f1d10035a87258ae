"""What comes in from Slack: thread replies, button clicks and the ``/frontdesk`` command.

One slack-bolt ``AsyncApp`` on the daemon's loop serves both connection modes: HTTP (``POST
/slack/events`` on the daemon's server) and Socket Mode (the same app behind
``AsyncSocketModeHandler``). Bolt answers Slack only after the listener has committed its work
(``process_before_response``), so an event that got its 200 is in the store; Slack's retries of
the same event (same ``event_id``) are recognised and do nothing.

HTTP requests are checked here before bolt sees them (:meth:`DeskEvents.http_handler`): the
timestamp (a number, at most five minutes off) and the ``v0=`` signature of the raw body; a
refusal is a 401, nothing stored, and one short log line (bolt's own check, kept behind ours,
would log the whole unverified body at INFO: its logger is held at WARNING). Slack's unsigned
``ssl_check`` of a slash command URL is answered 200, as bolt did. A signed body that
is not what Slack sends (not JSON or a form, nested beyond the parser, fields of the wrong type:
:func:`malformed`) gets a 400 and one line; a message event with odd fields (a ``ts`` that is no
Slack timestamp) is a harmless 200 and ignored. No request is answered 500 with a traceback for
what it contains: an error inside a listener is logged as one line (its traceback at DEBUG).

A human message in a frontdesk thread becomes a staff reply to the customer, sent on the
customer's channel through the outbox; one that starts with ``note:`` stays an internal note
(as does every message when ``slack.replies_enabled`` is false). Files attached to a reply
(``file_share``) are fetched from Slack with the bot token (``url_private_download``, at most
``slack.download_max``), stored once in the attachment store and sent with the reply; when one
cannot be fetched, the reply is not sent and the thread says why. Messages from bots
(frontdesk's own posts included), edits, deletions and other subtypes, and messages in threads
that are not frontdesk conversations are ignored. A thread whose root frontdesk has just posted
but not yet recorded (the outbox records a root's ts when Slack answers, with the rest of that
round of sends) is recognised by the metadata of its root, asked of Slack
(``conversations.history``), and recorded then; when Slack cannot be asked, the event is not
answered 200, so Slack sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import DeliveryError
from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.actions import DeskActions, DeskParts
from frontdesk.daemon.desk.api import CALL_ERRORS, SlackUser, describe, quiet_logger
from frontdesk.daemon.desk.cards import ROOT_METADATA
from frontdesk.domain.conversations import CannotReply, add_staff_reply
from frontdesk.domain.files import MAX_FILES, FileProblem, store_files
from frontdesk.domain.messages import OutboundFile
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
_HUMAN_SUBTYPES = (None, "thread_broadcast", "file_share")  # file_share: a reply with files
_SEEN_EVENTS_KEPT = timedelta(days=7)
_SLACK_TS = re.compile(r"\d{1,12}\.\d{1,9}")
_MAX_SKEW = 300  # seconds: Slack's own rule for X-Slack-Request-Timestamp
BOLT_VERIFICATION_LOGGER = "slack_bolt.RequestVerification"
"""Bolt's signature middleware logs a refused request's whole body at INFO under this name."""

_TEXT = (str, type(None))
_TEXT_OR_OBJECT = (str, dict, type(None))
_OBJECT = (dict, type(None))
_ENVELOPE_FIELDS: dict[str, tuple[type, ...]] = {
    "type": _TEXT, "token": _TEXT, "team_id": _TEXT, "api_app_id": _TEXT, "event_id": _TEXT,
    "enterprise_id": _TEXT, "challenge": _TEXT, "command": _TEXT, "text": _TEXT,
    "user_id": _TEXT, "channel_id": _TEXT, "trigger_id": _TEXT, "response_url": _TEXT,
    "callback_id": _TEXT, "team": _TEXT_OR_OBJECT, "enterprise": _TEXT_OR_OBJECT,
    "user": _TEXT_OR_OBJECT, "channel": _TEXT_OR_OBJECT, "container": _OBJECT,
    "message": _OBJECT, "view": _OBJECT, "state": _OBJECT, "event": (dict,),
    "actions": (list,), "authorizations": (list, type(None)),
}
_ACTION_FIELDS: dict[str, tuple[type, ...]] = {
    "action_id": _TEXT, "block_id": _TEXT, "value": _TEXT, "type": _TEXT,
    "selected_option": _OBJECT,
}
_MESSAGE_EVENT_FIELDS = ("subtype", "ts", "thread_ts", "user", "channel", "text", "bot_id",
                         "event_ts", "channel_type", "team")


class _FilesFirst(Exception):
    """A reply with files in a thread that turned out to be ours after all (its root was
    recorded between the first look and the transaction): fetch the files, then take it."""


class _RootInFlight(Exception):
    """A message in a thread not recorded as frontdesk's while a root in that channel has been
    posted and its ts is not recorded yet (it is recorded with the rest of the outbox's round of
    sends): Slack is asked whether the thread is that root, then the message is taken again."""


class _RootUnknown(Exception):
    """Whether a thread is a root just posted could not be learned from Slack: the event is
    not answered 200, so Slack sends it again."""


def malformed(body: Any) -> str | None:
    """Why a signed request's body is not what Slack sends, in a few words; None when its
    shape is one bolt's matchers and frontdesk's listeners can read (the fields they read have
    the types Slack gives them)."""
    if not isinstance(body, dict):
        return "the body is not an object"
    for key, types in _ENVELOPE_FIELDS.items():
        if key in body and not isinstance(body[key], types):
            return f"{key} is not {_kind(types)}"
    if "command" in body and not str(body["command"]).startswith("/"):
        return "command is not a slash command"
    if body.get("type") == "event_callback" and "event" not in body:
        return "an event_callback without an event"
    event = body.get("event")
    if isinstance(event, dict):
        if not isinstance(event.get("type"), str):
            return "event.type is not a string"
        if event["type"] == "message":
            for key in _MESSAGE_EVENT_FIELDS:
                if not isinstance(event.get(key), _TEXT):
                    return f"event.{key} is not a string"
            files = event.get("files")
            if files is not None and (not isinstance(files, list)
                                      or not all(isinstance(f, dict) for f in files)):
                return "event.files is not a list of objects"
    if body.get("type") == "block_actions":  # a click: who clicked, on what
        user = body.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            return "a block_actions payload without user.id"
        if not body.get("actions"):
            return "a block_actions payload without actions"
    for key in ("authorizations", "actions"):
        if any(not isinstance(item, dict) for item in body.get(key) or ()):
            return f"{key} holds something that is not an object"
    for action in body.get("actions") or ():
        for key, types in _ACTION_FIELDS.items():
            if key in action and not isinstance(action[key], types):
                return f"an action's {key} is not {_kind(types)}"
        if not isinstance((action.get("selected_option") or {}).get("value"), _TEXT):
            return "an action's selected_option.value is not a string"
    return None


def _kind(types: tuple[type, ...]) -> str:
    names = {str: "a string", dict: "an object", list: "a list"}
    return " or ".join(names[t] for t in types if t in names)


def is_slack_ts(value: Any) -> bool:
    """Whether ``value`` is a Slack message timestamp (``"1790000400.000100"``)."""
    return isinstance(value, str) and _SLACK_TS.fullmatch(value) is not None


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
    if not user or not isinstance(user, str) or user == bot_user_id:
        return False
    if not isinstance(event.get("channel"), str) or not isinstance(event.get("text"), _TEXT):
        return False
    thread_ts, ts = event.get("thread_ts"), event.get("ts")
    return is_slack_ts(thread_ts) and is_slack_ts(ts) and thread_ts != ts


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
        # behind http_handler's own check, bolt's must never log an unverified body
        logging.getLogger(BOLT_VERIFICATION_LOGGER).setLevel(logging.WARNING)
        self._verifier = (SignatureVerifier(config.signing_secret.get_secret_value())
                          if config.mode == "http" else None)
        self.app.error(self._on_error)
        self.app.event("message")(self._message)
        for action_id in (blocks.ACTION_CLAIM, blocks.ACTION_RESOLVE, blocks.ACTION_REOPEN,
                          blocks.ACTION_SNOOZE, blocks.ACTION_PRIORITY):
            self.app.action(action_id)(self._action)
        self.app.command(re.compile(r".+"))(self._command)
        self.app.view(blocks.LOG_CALLBACK)(self._log_submitted)
        self.app.view(blocks.RESOLVE_CALLBACK)(self._resolve_submitted)
        self.app.shortcut(blocks.SAVE_REPLY_CALLBACK)(self._save_reply_shortcut)
        self.app.view(blocks.SAVE_REPLY_CALLBACK)(self._save_reply_submitted)
        self.app.event(re.compile(r".+"))(self._other_event)

    async def http_handler(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: Events API, interactivity and slash commands.

        Unsigned, forged or stale: 401 and one log line, the body unread when the headers
        already fail. Signed but not what Slack sends: 400 and one line. Then bolt."""
        if "X-Slack-Signature" not in request.headers and await self._ssl_check(request):
            return web.Response(status=200)
        text = await self._verified_body(request)
        if text is None:
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            bolt_request = AsyncBoltRequest(body=text, query=request.query_string,
                                            headers=request.headers)  # type: ignore[arg-type]
            why = malformed(bolt_request.body)
        except Exception as exc:  # noqa: BLE001 - bolt parses and reads the body's fields
            why = f"{type(exc).__name__} reading it"
        if why is not None:
            log.warning("refused a signed Slack request from %s: %s", request.remote, why[:200])
            return web.json_response({"error": "malformed request"}, status=400)
        response = await self.app.async_dispatch(bolt_request)
        if response.status == 401:  # bolt's own check, behind ours (a timestamp just expired)
            log.warning("refused a Slack request from %s: bad, missing or expired signature",
                        request.remote)
        return await to_aiohttp_response(response)

    async def _verified_body(self, request: web.Request) -> str | None:
        """The body of a request Slack signed (timestamp within five minutes, ``v0=`` HMAC of
        ``v0:{timestamp}:{body}``), else None after one log line saying why."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        why = ""
        if not timestamp or not signature:
            why = "no signature"
        elif not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            why = "a timestamp that is no number"
        elif abs(time.time() - int(timestamp)) > _MAX_SKEW:
            why = "an expired timestamp"
        else:
            raw = await request.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                why = "a body that is not UTF-8"
            else:
                if self._verifier is not None and self._verifier.is_valid(text, timestamp,
                                                                          signature):
                    return text
                why = "a bad signature"
        log.warning("refused a Slack request from %s: %s", request.remote, why)
        return None

    @staticmethod
    async def _ssl_check(request: web.Request) -> bool:
        """Slack's certificate check of a slash command URL (``ssl_check=1``), which bolt
        answers before any signature check: a small form, answered 200 and nothing more."""
        if request.content_type != "application/x-www-form-urlencoded" or \
                not 0 < (request.content_length or 0) <= 1024:
            return False
        form = await request.post()
        return form.get("ssl_check") == "1"

    async def _on_error(self, error: Exception) -> None:
        """bolt's error handler: one line, the traceback only at DEBUG."""
        if isinstance(error, _RootUnknown):  # answered 500: Slack sends the event again
            log.warning("%s", error)
            return
        log.error("a Slack request failed: %s: %s", type(error).__name__, str(error)[:200])
        log.debug("the failure", exc_info=error)

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
            text=str(event.get("text") or ""), files=event.get("files") or [])
        log.info("slack message %s in thread %s: %s", event.get("ts"), event.get("thread_ts"),
                 outcome)

    async def _action(self, ack: AsyncAck, body: dict[str, Any]) -> BoltResponse:
        await self.actions.on_action(body)
        return await ack()

    async def _command(self, ack: AsyncAck, command: dict[str, Any]) -> BoltResponse:
        text = await self.actions.on_command(command)
        if not text:  # a form opened (/frontdesk log): nothing to say
            return await ack()
        return await ack(text=text, response_type="ephemeral")

    async def _log_submitted(self, ack: AsyncAck, body: dict[str, Any],
                             view: dict[str, Any]) -> BoltResponse:
        errors, text = await self.actions.log_submitted(body, view)
        if errors:
            return await ack(response_action="errors", errors=errors)
        return await ack(response_action="update", view=blocks.logged_modal(text))

    async def _resolve_submitted(self, ack: AsyncAck, body: dict[str, Any],
                                 view: dict[str, Any]) -> BoltResponse:
        text = await self.actions.resolve_submitted(body, view)
        if text.startswith(":warning:"):
            return await ack(response_action="update", view=blocks.done_modal("Not resolved", text))
        return await ack()

    async def _save_reply_shortcut(self, ack: AsyncAck, body: dict[str, Any]) -> BoltResponse:
        await self.actions.save_reply_shortcut(body)
        return await ack()

    async def _save_reply_submitted(self, ack: AsyncAck, body: dict[str, Any],
                                    view: dict[str, Any]) -> BoltResponse:
        errors, text = await self.actions.save_reply_submitted(body, view)
        if errors:
            return await ack(response_action="errors", errors=errors)
        return await ack(response_action="update", view=blocks.done_modal("Saved reply", text))

    async def _other_event(self, body: dict[str, Any]) -> None:
        log.debug("slack event %s ignored", (body.get("event") or {}).get("type"))

    # -- a staff message in a thread ---------------------------------------------------------------

    async def take_thread_message(self, *, event_id: str, channel: str, thread_ts: str, ts: str,
                                  user_id: str, text: str,
                                  files: Sequence[Mapping[str, Any]] = ()) -> str:
        """Store a thread message as a staff reply or a note; returns what happened. The files
        of a reply are fetched from Slack and stored first; one that cannot be fetched keeps the
        reply from going, and the thread says why."""
        desk = self.desk
        user = await desk.api.users.get(user_id)
        names: dict[str, str] = {}
        for mentioned in dict.fromkeys(_MENTIONED.findall(text[:4000])[:5]):
            names[mentioned] = (await desk.api.users.get(mentioned)).name
        plain = blocks.slack_to_plain(text, names)
        wanted = bool(files) and desk.config.replies_enabled and not _NOTE.match(plain)
        fetched: tuple[list[OutboundFile], str | None] | None = ([], None)
        if wanted:
            fetched = (await self._fetch_files(files)
                       if await self._unseen(event_id, channel, thread_ts, ts) else None)
        root: int | Literal[False] | None = None
        while True:
            try:
                return await self._take(event_id=event_id, channel=channel,
                                        thread_ts=thread_ts, ts=ts, user=user, plain=plain,
                                        fetched=fetched, root=root)
            except _FilesFirst:  # the thread turned out to be ours: fetch, then take
                fetched = await self._fetch_files(files)
            except _RootInFlight:
                root = await self._posted_root(channel, thread_ts)

    async def _posted_root(self, channel: str, thread_ts: str) -> int | Literal[False]:
        """The conversation whose root Slack has at ``thread_ts``, by the metadata frontdesk
        posts it with; False when the message there is not a frontdesk root."""
        try:
            message = await self.desk.api.top_message(channel, thread_ts)
        except CALL_ERRORS as exc:
            raise _RootUnknown(f"cannot ask Slack whether thread {thread_ts} in {channel} is a "
                              f"conversation's root just posted ({describe(exc)}); Slack will "
                              "send the message again") from exc
        meta = (message or {}).get("metadata") or {}
        payload = meta.get("event_payload") or {}
        found = payload.get("conversation_id")
        if meta.get("event_type") != ROOT_METADATA or type(found) is not int:
            return False
        return found

    async def _take(self, *, event_id: str, channel: str, thread_ts: str, ts: str,
                    user: SlackUser, plain: str,
                    fetched: tuple[list[OutboundFile], str | None] | None,
                    root: int | Literal[False] | None = None) -> str:
        """Store a thread message (``fetched``: its files, or why they could not be fetched;
        None when they were not fetched because the thread did not look like ours: raises
        :class:`_FilesFirst` when it is). ``root``: the conversation Slack says the thread's
        root belongs to (False: none), when the thread was not recorded as ours."""
        desk = self.desk
        now = desk.clock()
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
                    thread = await self._just_posted(s, channel, thread_ts, root, now)
                if thread is None:
                    return "ignored: not a frontdesk thread"
                if (await s.execute(select(SlackMessage.id).where(
                        SlackMessage.channel_id == channel, SlackMessage.ts == ts))).first():
                    return "already handled (same message)"
                conversation = await s.get_one(Conversation, thread.conversation_id)
                if fetched is None:
                    raise _FilesFirst  # nothing written yet: rolled back
                staged, problem = fetched
                if problem is not None:  # not sent: the thread says why
                    await desk.queue.text(s, conversation, f":warning: Not sent to the customer: "
                                          f"{blocks.escape(problem)}", now)
                    outcome = f"not sent: {problem}"
                else:
                    outcome, message_id = await self._store(s, conversation, thread, user, plain,
                                                            channel=channel, ts=ts, now=now,
                                                            files=staged)
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

    @staticmethod
    async def _just_posted(s: AsyncSession, channel: str, thread_ts: str,
                           root: int | Literal[False] | None, now: datetime) -> SlackThread | None:
        """A thread whose root the outbox has posted and not recorded yet: its ts is recorded
        with the rest of the outbox's round of sends, and a staff member can answer in the
        thread before that, the more so under load. Without ``root``, raises
        :class:`_RootInFlight` when a root in ``channel`` is being posted (so Slack is asked
        whose root the thread is); with it, records ``thread_ts`` as that conversation's root
        (the same ts the round writes) and returns its thread."""
        if root is None:
            if (await s.execute(select(SlackThread.conversation_id).where(
                    SlackThread.channel_id == channel, SlackThread.ts.is_(None),
                    SlackThread.root_attempted_at.is_not(None)).limit(1))).first() is not None:
                raise _RootInFlight
            return None
        if root is False:
            return None
        thread = await s.get(SlackThread, root)
        if thread is None or thread.channel_id != channel or thread.ts not in (None, thread_ts):
            return None
        thread.ts, thread.updated_at = thread_ts, now
        log.info("FD-%d: a message in its thread came before the outbox recorded the root %s; "
                 "recorded it now", root, thread_ts)
        return thread

    async def _unseen(self, event_id: str, channel: str, thread_ts: str, ts: str) -> bool:
        """A message in a frontdesk thread not taken yet (its files are worth fetching)."""
        async with self.desk.store.reader() as s:
            if event_id and await s.get(SlackEvent, event_id) is not None:
                return False
            if (await s.execute(select(SlackMessage.id).where(
                    SlackMessage.channel_id == channel, SlackMessage.ts == ts))).first():
                return False
            return (await s.execute(select(SlackThread.conversation_id).where(
                SlackThread.channel_id == channel, SlackThread.ts == thread_ts))).first() \
                is not None

    async def _fetch_files(self, files: Sequence[Mapping[str, Any]]
                           ) -> tuple[list[OutboundFile], str | None]:
        """A staff reply's files, from Slack (the bot token, ``files:read``) into the attachment
        store (once each); or why they cannot be sent."""
        try:
            if len(files) > MAX_FILES:
                raise FileProblem(f"a reply carries at most {MAX_FILES} files, not "
                                  f"{len(files)}")
            got = [await self.desk.api.download(f) for f in files]
            return await asyncio.to_thread(store_files, got, self.desk.attachments), None
        except DeliveryError as exc:
            return [], exc.reason
        except FileProblem as exc:
            return [], str(exc)

    async def _store(self, s: AsyncSession, conversation: Conversation, thread: SlackThread,
                     user: SlackUser, plain: str, *, channel: str, ts: str,
                     now: datetime, files: Sequence[OutboundFile] = ()) -> tuple[str, int | None]:
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
                                          event_data=data, files=files)
        except CannotReply as exc:
            await desk.queue.text(s, conversation, f":warning: Not sent to the customer: "
                                  f"{blocks.escape(str(exc))}", now)
            return f"not sent: {exc}", None
        if reply.is_note:  # nothing reaches the customer: the thread says to call back
            return f"kept as note #{reply.id}: the customer must be called back", reply.id
        return f"queued as staff reply #{reply.id}", reply.id
