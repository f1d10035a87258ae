"""The Slack staff desk as a daemon service: every conversation a thread, kept current.

Built by the daemon only when ``slack.bot_token`` is set. :class:`SlackDesk` composes the desk's
parts (:mod:`.api` talks to Slack, :mod:`.cards` builds and refreshes root cards, :mod:`.events`
and :mod:`.actions` take what staff do, :mod:`.queue` writes the outbox rows) and plugs them into
the daemon:

* an inbound hook (inside the ingest transaction) queues the root post of a new conversation, or
  a thread post for a later customer message;
* a delivery hook (inside the transaction that marks a delivery sent or failed for good) queues a
  reaction on the staff member's Slack message, or mirrors a reply sent from elsewhere (the
  command line, a saved reply, an acknowledgement), or says in the thread why a reply failed;
* the outbox handler for kind ``"slack"`` does that work in Slack (a customer's files are
  uploaded into the thread after the message's line, those up to ``slack.upload_max``);
* a refresh loop follows the events audit and queues ``chat.update`` of the root message of
  every conversation that changed (:meth:`.cards.RootCards.refresh_roots`);
* ``POST /slack/events`` (HTTP mode) or a Socket Mode connection brings thread replies, button
  clicks and the ``/frontdesk`` command to :mod:`.events`.

It is ready once ``auth.test`` has worked (and, in Socket Mode, while the socket is open).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from slack_sdk.errors import SlackApiError
from sqlalchemy import event, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from frontdesk.channels.base import (
    DeliveryError,
    DeliveryHook,
    Held,
    InboundHook,
    OutboxHandler,
    PermanentFailure,
    RoundPreload,
    TemporaryFailure,
)
from frontdesk.channels.logged.intake import Intake
from frontdesk.config.schema import CoreSettings, SlackConfig
from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.api import (
    AUTH_ERRORS,
    UNREACHABLE,
    SlackApi,
    describe,
    error_code,
    quiet_logger,
)
from frontdesk.daemon.desk.cards import ROOT_METADATA, THREADS_OF, RootCards, Thread
from frontdesk.daemon.desk.events import DeskEvents
from frontdesk.daemon.desk.queue import KIND, SlackQueue
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.messages import Receipt
from frontdesk.domain.replies import ReplyComposer
from frontdesk.domain.similar import SimilarConversations
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Backoff, Store
from frontdesk.storage.models import (
    Attachment,
    Conversation,
    Message,
    Outbox,
    SlackMessage,
    SlackThread,
)

if TYPE_CHECKING:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

log = logging.getLogger(__name__)

SENT_REACTION = "white_check_mark"
_CONNECT_RETRY_MAX = 300.0
_FORGET_EVERY = 3600.0


class _Metrics(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class _Sla(Protocol):
    @property
    def calendar(self) -> BusinessCalendar: ...


class _Http(Protocol):
    @property
    def app(self) -> web.Application: ...


class _Outbox(Protocol):
    def kick(self) -> None: ...


class DaemonParts(Protocol):
    """What the desk takes from the daemon (see frontdesk.daemon.process.app.Daemon)."""

    @property
    def settings(self) -> CoreSettings: ...
    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    @property
    def metrics(self) -> _Metrics: ...
    @property
    def sla(self) -> _Sla: ...
    @property
    def http(self) -> _Http: ...
    @property
    def inbound_hooks(self) -> list[InboundHook]: ...
    @property
    def outbox_handlers(self) -> dict[str, OutboxHandler]: ...
    @property
    def delivery_hooks(self) -> list[DeliveryHook]: ...
    @property
    def round_preloads(self) -> list[RoundPreload]: ...
    @property
    def outbox(self) -> _Outbox: ...
    @property
    def replies(self) -> ReplyComposer: ...
    @property
    def intake(self) -> Intake | None: ...
    @property
    def known_channels(self) -> tuple[str, ...]: ...
    @property
    def attachments(self) -> AttachmentStore: ...


class SlackDesk:
    """The service; see the module docstring."""

    name = "slack"

    def __init__(self, daemon: DaemonParts) -> None:
        self.settings: CoreSettings = daemon.settings
        self.config: SlackConfig = daemon.settings.slack
        self.store: Store = daemon.store
        self.replies: ReplyComposer = daemon.replies
        self.intake: Intake | None = daemon.intake
        self.known_channels: tuple[str, ...] = daemon.known_channels
        self.attachments: AttachmentStore = daemon.attachments
        """Customers' files to upload; staff files fetched from Slack are stored here."""
        self.clock: Callable[[], datetime] = daemon.clock
        self.calendar: BusinessCalendar = daemon.sla.calendar
        self.queue = SlackQueue(self.settings)
        self.api = SlackApi(self.config, self.clock)
        # At most one look at the store's changes every 2 s while cards are rendered (a burst
        # of new conversations); a resolve or reopen in this process asks for one at once.
        self.similar = SimilarConversations(refresh_interval=2.0)
        """Resolved conversations like a new one, for its card and ``/frontdesk similar``."""
        self.cards = RootCards(self.config, self.store, self.api, self.queue, self.clock,
                               similar=self.similar)
        self.kick_outbox: Callable[[], None] = daemon.outbox.kick
        self._refresh_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._authed = False
        self._stopping = False
        self._last_cleanup = 0.0
        self.backlog = Gauge(
            "frontdesk_slack_backlog",
            "Slack posts waiting in the outbox, by Slack channel (Slack takes about one a second "
            "per channel)", ["slack_channel"], registry=daemon.metrics.registry)
        self.events = DeskEvents(self)
        daemon.inbound_hooks.append(self.on_inbound)
        daemon.delivery_hooks.append(self.on_delivery)
        daemon.round_preloads.append(self._threads_of_round)
        daemon.outbox_handlers[KIND] = self.handle
        if self.config.mode == "http":
            daemon.http.app.router.add_post("/slack/events", self.events.http_handler)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        self.api.client.session = self._session
        await self.api.files.start()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="slack-refresh"),
            asyncio.create_task(self._connect(), name="slack-connect"),
        ]
        log.info("slack desk starting (%s mode, posting to %s%s)", self.config.mode,
                 self.config.channel_id,
                 f" and {len(self.config.routes)} routed channel(s)" if self.config.routes else "")

    async def stop(self) -> None:
        self._stopping = True
        self._refresh_wakeup.set()
        refresh, connect = self._tasks if self._tasks else (None, None)
        if connect is not None:
            connect.cancel()  # a sleep between sign-in attempts, or a Slack call: safe to cut
        for task in (refresh, connect):
            if task is None:
                continue
            try:  # the refresh loop finishes the store work in hand, then ends
                await asyncio.wait_for(task, timeout=10)
            except (asyncio.CancelledError, TimeoutError):
                pass
            except Exception:  # stopping; already logged where it happened
                log.debug("slack task ended with an error", exc_info=True)
        self._tasks = []
        if self._socket is not None:
            try:
                await self._socket.close_async()
            except Exception:  # closing a socket that may already be gone
                log.debug("closing the Socket Mode connection failed", exc_info=True)
            self._socket = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.api.files.close()
        self._authed = False

    @property
    def ready(self) -> bool:
        if not self._authed:
            return False
        if self.config.mode == "socket":
            session = self._socket.client.current_session if self._socket else None
            return session is not None and not session.closed
        return True

    async def _connect(self) -> None:
        """auth.test until it works (readiness), then the Socket Mode connection if configured."""
        delay = 1.0
        while not self._stopping:
            try:
                auth = await self.api.sign_in()
            except SlackApiError as exc:
                code = error_code(exc)
                if code in AUTH_ERRORS:
                    log.error("Slack refused slack.bot_token (%s); the desk stays down until "
                              "the token is fixed and frontdesk restarted", code)
                    return
                log.warning("slack auth.test failed (%s); retrying in %.0fs",
                            describe(exc), delay)
            except UNREACHABLE as exc:
                log.warning("Slack cannot be reached (%s); retrying in %.0fs",
                            describe(exc), delay)
            else:
                log.info("slack desk signed in as %s (bot user %s) in %s", auth.get("user"),
                         self.api.bot_user_id, auth.get("team") or self.api.team_id)
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, _CONNECT_RETRY_MAX)
        if self._stopping:
            return
        if self.config.mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(
                self.events.app, self.config.app_token.get_secret_value(),
                web_client=self.api.client, logger=quiet_logger("frontdesk.daemon.desk.socket"))
            await self._socket.connect_async()
            log.info("slack desk connected over Socket Mode")
        self._authed = True

    # -- hooks (inside other transactions) -------------------------------------------------------

    async def on_inbound(self, session: AsyncSession, conversation: Conversation,
                         message: Message, is_new: bool) -> None:
        now = self.clock()
        if is_new:
            row = await self.queue.root(session, conversation, message, now, new=True)
        else:
            row = await self.queue.message(session, conversation, message.id, now)
        uploads = self._uploadable(message)
        if uploads:  # after the card or the line, which name them
            await self.queue.files(session, conversation, message.id, uploads, now,
                                   slack_channel=str(row.payload["slack_channel"]))
        sync = session.sync_session  # post as soon as the ingest transaction commits
        if not event.contains(sync, "after_commit", self._after_ingest_commit):
            event.listen(sync, "after_commit", self._after_ingest_commit, once=True)

    def _uploadable(self, message: Message) -> list[int]:
        """The ids of a new customer message's files that go into the thread (stored with it:
        email, the website; a chat channel's files come later, see RootCards.refresh_roots).
        Automated mail's (a bounce's returned message) are only named."""
        if message.automated or "attachments" in inspect(message).unloaded:
            return []
        return [a.id for a in message.attachments if a.size <= self.config.upload_max]

    def _after_ingest_commit(self, _session: Session) -> None:
        self.kick_outbox()

    async def _threads_of_round(self, session: AsyncSession,
                                rows: Sequence[Outbox]) -> list[SlackThread]:
        """The thread records of a round's conversations, read at once: marking the round
        then finds them in the session (a root's ts is written to its record; a customer
        reply's line is queued in its thread, :meth:`on_delivery`) instead of reading each."""
        ids = {r.conversation_id for r in rows
               if r.conversation_id is not None and r.kind in (KIND, "deliver")}
        if not ids:
            return []
        return list((await session.execute(THREADS_OF, {"ids": sorted(ids)})).scalars())

    async def on_delivery(self, session: AsyncSession, row: Outbox,
                          error: DeliveryError | None) -> None:
        if row.kind != "deliver" or row.message_id is None or row.conversation_id is None:
            return
        now = self.clock()
        conversation = await session.get_one(Conversation, row.conversation_id)
        message = await session.get_one(Message, row.message_id)
        # the staff member's message in the thread it came from (none for what frontdesk
        # wrote itself: an acknowledgement, a survey)
        origin = None if message.author != "staff" else (await session.execute(
            select(SlackMessage).where(SlackMessage.message_id == row.message_id)
        )).scalars().first()
        if isinstance(error, Held):
            await self.queue.text(
                session, conversation,
                blocks.held_line(error.reason, address=message.address, channel=message.channel,
                                 author=message.author_name),
                now, key=f"slack-held-{row.id}")
        elif error is None:
            if origin is not None:
                await self.queue.reaction(session, conversation, channel=origin.channel_id,
                                          ts=origin.ts, name=SENT_REACTION, now=now)
            else:
                await self.queue.message(session, conversation, message.id, now)
        else:
            await self.queue.text(
                session, conversation,
                blocks.failure_line(error.reason, address=message.address,
                                    channel=message.channel, author=message.author_name,
                                    text="" if origin is not None else message.text,
                                    reference=conversation.reference,
                                    what="automatic message" if message.author == "system"
                                    else "reply"),
                now, key=f"slack-failed-{row.id}")
        self.kick_outbox()

    # -- the outbox handler ------------------------------------------------------------------------

    async def handle(self, row: Outbox) -> Receipt:
        payload = row.payload or {}
        op = payload.get("op")
        if op == "reaction":
            return await self.api.react(str(payload["in_channel"]), str(payload["ts"]),
                                        str(payload["name"]))
        if op == "erase":  # a contact's erasure (frontdesk.domain.privacy)
            return await self._erase_thread(payload)
        if row.conversation_id is None:
            raise PermanentFailure(f"a Slack {op} without a conversation")
        # The channel's posting slot is taken before anything is awaited: the outbox sends a
        # round of rows at once, and paced posts then still go in the order of the rows.
        slot = str(payload.get("slack_channel") or "")
        paced = bool(slot) and op in ("root", "message", "text", "files")
        if paced:
            self.api.pace(slot)
        if payload.get("thread_ts") and op in ("message", "text", "files"):
            # queued after its root was posted (SlackQueue): the thread is known, and a
            # thread's root never changes once posted
            thread, posted_now = Thread(row.conversation_id, f"FD-{row.conversation_id}", slot,
                                        str(payload["thread_ts"]), None), False
        else:
            thread, posted_now = await self.cards.ensure_root(row.conversation_id, paced=paced)
        save = None if thread.saved else self.cards.save(thread)  # with the row's mark
        if op == "root":
            return Receipt(remote_id=thread.ts, detail=thread.channel_id, record=save)
        if op == "update":
            if posted_now:
                return Receipt(remote_id=thread.ts, detail="posted with the current state",
                               record=save)
            return await self.cards.update(thread)
        if op == "files":
            receipt = await self._upload(thread, payload, paced=paced and not posted_now)
            return dataclasses.replace(receipt, record=save)
        if op == "message":
            text = await self.cards.thread_line(int(payload["message_id"]))
            if text is None:
                return Receipt(detail="nothing to show in the thread", record=save)
        elif op == "text":
            text = str(payload.get("text") or "")
        else:
            raise PermanentFailure(f"unknown Slack desk work {op!r}")
        ts, _channel = await self.api.post(thread.channel_id, text=text, thread_ts=thread.ts,
                                           paced=paced and not posted_now)
        return Receipt(remote_id=ts, detail=thread.channel_id, record=save)

    async def _upload(self, thread: Thread, payload: dict[str, Any], *, paced: bool) -> Receipt:
        """A customer message's files into its thread: those up to ``slack.upload_max`` through
        Slack's external upload; with ``announce`` the larger ones named (and sized) in the
        upload's comment, or in a post of their own when none is small enough."""
        ids = [int(i) for i in payload.get("attachment_ids") or []]
        async with self.store.reader() as s:
            rows = (await s.execute(select(Attachment).where(Attachment.id.in_(ids))
                                    .order_by(Attachment.id))).scalars().all()
        cap = self.config.upload_max
        small = [r for r in rows if r.size <= cap]
        large = [(r.filename, r.size) for r in rows if r.size > cap]
        note = blocks.files_not_uploaded(large, cap) if payload.get("announce") and large \
            else None

        def read() -> list[tuple[str, bytes]]:
            found = []
            for r in small:
                try:
                    found.append((r.filename, self.attachments.read(r.sha256)))
                except FileNotFoundError:  # erased since: nothing to show
                    continue
            return found

        files = await asyncio.to_thread(read) if small else []
        if files:
            return await self.api.upload(thread.channel_id, thread.ts, files, comment=note,
                                         paced=paced)
        if note:
            ts, _channel = await self.api.post(thread.channel_id, text=note, thread_ts=thread.ts,
                                               paced=paced)
            return Receipt(remote_id=ts, detail=thread.channel_id)
        return Receipt(detail="no file to upload")

    async def _erase_thread(self, payload: dict[str, Any]) -> Receipt:
        channel, ts = str(payload.get("in_channel") or ""), str(payload.get("ts") or "")
        if channel and not ts and payload.get("reference"):  # the root post may have gone out
            try:
                ts = await self.api.find_posted(channel, ROOT_METADATA,
                                                {"reference": payload["reference"]}) or ""
            except (SlackApiError, *UNREACHABLE) as exc:
                raise TemporaryFailure(f"cannot look for the root post in {channel} "
                                       f"({describe(exc)})") from None
        if not channel or not ts:
            return Receipt(detail="nothing in Slack to delete")
        return await self.api.delete_thread(channel, ts)

    async def post_to_channel(self, channel_id: str, text: str) -> Receipt:
        """Post ``text`` (mrkdwn) in a Slack channel outside any conversation's thread (a
        managers' channel), paced like every post; raises the outbox's DeliveryError kinds. For
        the outbox handler of another part of frontdesk (the scheduler's escalation notices)."""
        ts, channel = await self.api.post(channel_id, text=text)
        return Receipt(remote_id=ts, detail=channel)

    # -- keeping root messages current ------------------------------------------------------------

    def kick_refresh(self) -> None:
        self._refresh_wakeup.set()

    def kick(self) -> None:
        """Wake the outbox worker and the root refresh (a commit queued work or changed a
        conversation)."""
        self.kick_outbox()
        self.kick_refresh()

    async def _refresh_loop(self) -> None:
        interval = self.settings.daemon.outbox_poll.total_seconds()
        backoff = Backoff("refreshing Slack root messages", log)  # the store away: one warning
        while not self._stopping:
            wait = interval
            try:
                if await self.cards.refresh_roots():
                    self.kick_outbox()
                if time.monotonic() - self._last_cleanup >= _FORGET_EVERY:
                    self._last_cleanup = time.monotonic()
                    await self.events.forget_old_events()
                backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                wait = max(wait, backoff.failed(exc))
            try:
                await asyncio.wait_for(self._refresh_wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass
            self._refresh_wakeup.clear()

    # -- metrics --------------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        channel = Outbox.payload["slack_channel"].as_string()
        async with self.store.reader() as s:
            rows = (await s.execute(
                select(channel, func.count()).where(Outbox.kind == KIND,
                                                    Outbox.state == "pending")
                .group_by(channel))).all()
        self.backlog.clear()
        for known in {self.config.channel_id, *(r.channel_id for r in self.config.routes)}:
            self.backlog.labels(known).set(0)
        for name, count in rows:
            self.backlog.labels(name or "unknown").set(count)
