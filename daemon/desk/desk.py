"""The Slack staff desk as a daemon service: every conversation a thread, kept current.

Built by the daemon only when ``slack.bot_token`` is set. It plugs into the daemon:

* an inbound hook (inside the ingest transaction) queues the root post of a new conversation, or
  a thread post for a later customer message;
* a delivery hook (inside the transaction that marks a delivery sent or failed for good) queues a
  reaction on the staff member's Slack message, or mirrors a reply sent from elsewhere (the
  command line, a saved reply, an acknowledgement), or says in the thread why a reply failed;
* the outbox handler for kind ``"slack"`` talks to Slack (slack_sdk's ``AsyncWebClient``);
* a refresh loop follows the events audit and queues ``chat.update`` of the root message of
  every conversation that changed, whoever changed it (Slack, the command line, the scheduler);
* ``POST /slack/events`` (HTTP mode) or a Socket Mode connection brings thread replies, button
  clicks and the ``/frontdesk`` command to :mod:`.events`.

Posting is paced to ``slack.post_interval`` per Slack channel (Slack allows about one post a
second per channel) and a 429 holds that channel for its ``Retry-After``; both wait in the outbox
as :class:`~frontdesk.channels.base.Deferred` rows, which never count as failed attempts. A root
post that may have gone out before a crash is looked up by its message metadata before it is
posted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from prometheus_client import Gauge
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import Deferred, DeliveryError, PermanentFailure, TemporaryFailure
from frontdesk.config.schema import Settings
from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.queue import KIND, SlackQueue
from frontdesk.daemon.domain.messages import Receipt
from frontdesk.daemon.domain.replies import ReplyComposer
from frontdesk.storage.db import Backoff, Store
from frontdesk.storage.models import (
    Conversation,
    Event,
    Message,
    Outbox,
    SlackEvent,
    SlackMessage,
    SlackState,
    SlackThread,
    core_table,
)

if TYPE_CHECKING:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    from frontdesk.daemon.desk.events import DeskEvents
    from frontdesk.daemon.domain.business_hours import BusinessCalendar

log = logging.getLogger(__name__)

ROOT_METADATA = "frontdesk_conversation"
SENT_REACTION = "white_check_mark"
NOTE_REACTION = "memo"
_CURSOR = "events_cursor"
_QUIET_EVENTS = ("message_sent", "delivery_failed")  # they never change the root card
_SEEN_EVENTS_KEPT = timedelta(days=7)
_IN_CALL_RATE_LIMIT_WAIT = 2.0
_CONNECT_RETRY_MAX = 300.0


class _DaemonParts(Protocol):
    """What the desk takes from the daemon (see frontdesk.daemon.process.app.Daemon)."""

    settings: Settings
    store: Store
    clock: Callable[[], datetime]
    metrics: Any
    sla: Any
    http: Any
    inbound_hooks: list[Any]
    outbox_handlers: dict[str, Any]
    delivery_hooks: list[Any]
    outbox: Any
    replies: ReplyComposer


@dataclass(frozen=True)
class SlackUser:
    id: str
    name: str
    email: str = ""

    @property
    def actor(self) -> str:
        """How the events audit names this person."""
        return f"{self.name} <{self.email}>" if self.email else f"{self.name} (Slack {self.id})"


class UserDirectory:
    """users.info, cached for an hour; a failure gives a stand-in name, not an error."""

    ttl = 3600.0
    timeout = 2.5

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._cache: dict[str, tuple[float, SlackUser]] = {}

    async def get(self, user_id: str) -> SlackUser:
        hit = self._cache.get(user_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            response = await asyncio.wait_for(self._client.users_info(user=user_id),
                                              timeout=self.timeout)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("users.info for %s failed (%s); using the user id as the name",
                        user_id, _describe(exc))
            return hit[1] if hit is not None else SlackUser(user_id, f"Slack user {user_id}")
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = (profile.get("real_name") or user.get("real_name") or profile.get("display_name")
                or user.get("name") or user_id)
        found = SlackUser(user_id, str(name), str(profile.get("email") or ""))
        self._cache[user_id] = (time.monotonic(), found)
        return found


def _retry_after(headers: Mapping[str, Any] | None, default: float = 30.0) -> float:
    if not headers:
        return default
    for key, value in headers.items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return default
    return default


class BriefRateLimitRetry(AsyncRateLimitErrorRetryHandler):
    """Waits inside the call only for a short Retry-After; a longer one goes back to the outbox
    (as a Deferred row), so the outbox worker is not held up by one Slack channel."""

    def __init__(self, max_wait: float = _IN_CALL_RATE_LIMIT_WAIT) -> None:
        super().__init__(max_retry_count=1)
        self.max_wait = max_wait

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None,
                               error: Exception | None = None) -> bool:
        if response is None or response.status_code != 429:
            return False
        return _retry_after(response.headers) <= self.max_wait


def quiet_logger(name: str) -> logging.Logger:
    """The SDKs log every request (and retry) when their logger's level is DEBUG or unset; start
    them at INFO unless logging is configured for them."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def make_client(settings: Settings) -> AsyncWebClient:
    slack = settings.slack
    return AsyncWebClient(
        token=slack.bot_token.get_secret_value(), base_url=slack.api_base_url, timeout=15,
        logger=quiet_logger("frontdesk.daemon.desk.sdk"),
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(
                max_retry_count=1, interval_calculator=FixedValueRetryIntervalCalculator(0.2)),
            BriefRateLimitRetry(),
        ])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return f"{_error_code(exc)} (HTTP {exc.response.status_code})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_code(exc: SlackApiError) -> str:
    data = exc.response.data if exc.response is not None else None
    if isinstance(data, dict):
        return str(data.get("error") or "error")
    return "error"


_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "token_revoked", "token_expired",
                          "account_inactive", "no_permission", "ekm_access_denied"})
_PERMANENT_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long",
                               "no_text", "invalid_arguments", "message_not_found",
                               "cant_update_message", "edit_window_closed", "invalid_name",
                               "too_many_reactions", "invalid_metadata_format",
                               "invalid_metadata_schema", "metadata_too_large"})


@dataclass(frozen=True)
class Thread:
    conversation_id: int
    reference: str
    channel_id: str
    ts: str
    rendered_hash: str | None


class SlackDesk:
    """The service; see the module docstring."""

    name = "slack"

    def __init__(self, daemon: _DaemonParts) -> None:
        self.settings = daemon.settings
        self.config = daemon.settings.slack
        self.store = daemon.store
        self.replies: ReplyComposer = daemon.replies
        self.clock = daemon.clock
        self.calendar: BusinessCalendar = daemon.sla.calendar
        self.queue = SlackQueue(daemon.settings)
        self.client = make_client(daemon.settings)
        self.users = UserDirectory(self.client)
        self.kick_outbox: Callable[[], None] = daemon.outbox.kick
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self._authed = False
        self._not_before: dict[str, datetime] = {}
        self._refresh_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._stopping = False
        self._last_cleanup = 0.0
        self.backlog = Gauge(
            "frontdesk_slack_backlog",
            "Slack posts waiting in the outbox, by Slack channel (Slack takes about one a second "
            "per channel)", ["slack_channel"], registry=daemon.metrics.registry)
        from frontdesk.daemon.desk.events import DeskEvents

        self.events: DeskEvents = DeskEvents(self)
        daemon.inbound_hooks.append(self.on_inbound)
        daemon.delivery_hooks.append(self.on_delivery)
        daemon.outbox_handlers[KIND] = self.handle
        if self.config.mode == "http":
            daemon.http.app.router.add_post("/slack/events", self.events.http_handler)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        self.client.session = self._session
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
                auth = await self.client.auth_test()
            except SlackApiError as exc:
                code = _error_code(exc)
                if code in _AUTH_ERRORS:
                    log.error("Slack refused slack.bot_token (%s); the desk stays down until "
                              "the token is fixed and frontdesk restarted", code)
                    return
                log.warning("slack auth.test failed (%s); retrying in %.0fs",
                            _describe(exc), delay)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("Slack cannot be reached (%s); retrying in %.0fs",
                            _describe(exc), delay)
            else:
                self.bot_user_id, self.bot_id = auth.get("user_id"), auth.get("bot_id")
                self.team_id = auth.get("team_id")
                log.info("slack desk signed in as %s (bot user %s) in %s", auth.get("user"),
                         self.bot_user_id, auth.get("team") or self.team_id)
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, _CONNECT_RETRY_MAX)
        if self._stopping:
            return
        if self.config.mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(
                self.events.app, self.config.app_token.get_secret_value(),
                web_client=self.client, logger=quiet_logger("frontdesk.daemon.desk.socket"))
            await self._socket.connect_async()
            log.info("slack desk connected over Socket Mode")
        self._authed = True

    # -- hooks (inside other transactions) -------------------------------------------------------

    async def on_inbound(self, session: AsyncSession, conversation: Conversation,
                         message: Message, is_new: bool) -> None:
        now = self.clock()
        if is_new:
            await self.queue.root(session, conversation, message, now)
        else:
            await self.queue.message(session, conversation, message.id, now)
        sync = session.sync_session  # post as soon as the ingest transaction commits
        if not event.contains(sync, "after_commit", self._after_ingest_commit):
            event.listen(sync, "after_commit", self._after_ingest_commit, once=True)

    def _after_ingest_commit(self, _session: Any) -> None:
        self.kick_outbox()

    async def on_delivery(self, session: AsyncSession, row: Outbox,
                          error: DeliveryError | None) -> None:
        if row.kind != "deliver" or row.message_id is None or row.conversation_id is None:
            return
        now = self.clock()
        conversation = await session.get_one(Conversation, row.conversation_id)
        origin = (await session.execute(
            select(SlackMessage).where(SlackMessage.message_id == row.message_id)
        )).scalars().first()
        message = await session.get_one(Message, row.message_id)
        if error is None:
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
            return await self._react(str(payload["in_channel"]), str(payload["ts"]),
                                     str(payload["name"]))
        if row.conversation_id is None:
            raise PermanentFailure(f"a Slack {op} without a conversation")
        thread, posted_now = await self.ensure_root(row.conversation_id)
        if op == "root":
            return Receipt(remote_id=thread.ts, detail=thread.channel_id)
        if op == "update":
            if posted_now:
                return Receipt(remote_id=thread.ts, detail="posted with the current state")
            return await self._update(thread)
        if op == "message":
            text = await self._mirror_text(int(payload["message_id"]))
            if text is None:
                return Receipt(detail="nothing to show in the thread")
        elif op == "text":
            text = str(payload.get("text") or "")
        else:
            raise PermanentFailure(f"unknown Slack desk work {op!r}")
        ts, _channel = await self._post(thread.channel_id, text=text, thread_ts=thread.ts)
        return Receipt(remote_id=ts, detail=thread.channel_id)

    async def ensure_root(self, conversation_id: int) -> tuple[Thread, bool]:
        """The conversation's root message, posted now if it is not there yet."""
        async with self.store.session() as s:
            conversation = await s.get_one(Conversation, conversation_id)
            record = await self.queue.thread(s, conversation, self.clock())
            reference = conversation.reference
        if record.ts:
            return Thread(conversation_id, reference, record.channel_id, record.ts,
                          record.rendered_hash), False
        text, root_blocks = await self.render_root(conversation_id)
        if record.root_attempted_at is not None:  # an earlier try may have posted it
            found = await self._find_root(record.channel_id, reference)
            if found is not None:
                log.info("%s: found the root message an earlier attempt posted", reference)
                return await self._save_root(conversation_id, reference, record.channel_id,
                                             found, None), False
        self._pace(record.channel_id)
        async with self.store.session() as s:
            current = await s.get_one(SlackThread, conversation_id)
            current.root_attempted_at = current.updated_at = self.clock()
        ts, channel = await self._post(
            record.channel_id, text=text, blocks=root_blocks, paced=True,
            metadata={"event_type": ROOT_METADATA,
                      "event_payload": {"reference": reference,
                                        "conversation_id": conversation_id}})
        thread = await self._save_root(conversation_id, reference, channel, ts,
                                       blocks.fingerprint(text, root_blocks))
        return thread, True

    async def _save_root(self, conversation_id: int, reference: str, channel: str, ts: str,
                         rendered: str | None) -> Thread:
        async with self.store.session() as s:
            record = await s.get_one(SlackThread, conversation_id)
            record.channel_id, record.ts = channel, ts
            record.rendered_hash = rendered
            record.updated_at = self.clock()
        return Thread(conversation_id, reference, channel, ts, rendered)

    async def _find_root(self, channel: str, reference: str) -> str | None:
        try:
            history = await self.client.conversations_history(
                channel=channel, limit=200, include_all_metadata=True)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("cannot check %s for an earlier root of %s (%s); posting it",
                        channel, reference, _describe(exc))
            return None
        for m in history.get("messages") or []:
            meta = m.get("metadata") or {}
            if meta.get("event_type") == ROOT_METADATA and \
                    (meta.get("event_payload") or {}).get("reference") == reference:
                return str(m["ts"])
        return None

    async def _update(self, thread: Thread) -> Receipt:
        text, root_blocks = await self.render_root(thread.conversation_id)
        rendered = blocks.fingerprint(text, root_blocks)
        if rendered == thread.rendered_hash:
            return Receipt(remote_id=thread.ts, detail="unchanged")
        try:
            await self.client.chat_update(channel=thread.channel_id, ts=thread.ts, text=text,
                                          blocks=root_blocks)
        except SlackApiError as exc:
            raise self._failure(exc, "chat.update", thread.channel_id) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"Slack could not be reached ({_describe(exc)})") from None
        async with self.store.session() as s:
            record = await s.get_one(SlackThread, thread.conversation_id)
            record.rendered_hash, record.updated_at = rendered, self.clock()
        return Receipt(remote_id=thread.ts, detail="updated")

    async def _react(self, channel: str, ts: str, name: str) -> Receipt:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as exc:
            if _error_code(exc) == "already_reacted":
                return Receipt(detail="already there")
            raise self._failure(exc, "reactions.add", channel) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"Slack could not be reached ({_describe(exc)})") from None
        return Receipt(detail=f":{name}: on {ts}")

    def _pace(self, channel: str) -> None:
        now = self.clock()
        wait_until = self._not_before.get(channel)
        if wait_until is not None and now < wait_until:
            raise Deferred(f"pacing posts to Slack channel {channel}",
                           retry_after=(wait_until - now).total_seconds())
        self._not_before[channel] = now + self.config.post_interval

    async def _post(self, channel: str, *, text: str, thread_ts: str | None = None,
                    blocks: list[dict[str, Any]] | None = None,
                    metadata: dict[str, Any] | None = None,
                    paced: bool = False) -> tuple[str, str]:
        if not paced:
            self._pace(channel)
        try:
            response = await self.client.chat_postMessage(
                channel=channel, text=text, blocks=blocks, thread_ts=thread_ts,
                metadata=metadata, unfurl_links=False, unfurl_media=False)
        except SlackApiError as exc:
            raise self._failure(exc, "chat.postMessage", channel) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"Slack could not be reached ({_describe(exc)})") from None
        return str(response["ts"]), str(response.get("channel") or channel)

    def _failure(self, exc: SlackApiError, method: str, channel: str) -> DeliveryError:
        status = exc.response.status_code if exc.response is not None else 0
        code = _error_code(exc)
        if status == 429 or code == "ratelimited":
            wait = _retry_after(exc.response.headers if exc.response is not None else None)
            self._not_before[channel] = self.clock() + timedelta(seconds=wait)
            return Deferred(f"Slack rate limit on {method} in {channel}: retry after {wait:.0f}s",
                            retry_after=wait)
        if status >= 500:
            return TemporaryFailure(f"Slack answered HTTP {status} to {method}")
        if code == "channel_not_found":
            return TemporaryFailure(f"the Slack channel {channel} does not exist or the bot "
                                    "cannot see it (check slack.channel_id and the routes)")
        if code == "not_in_channel":
            return TemporaryFailure(f"the bot is not a member of the Slack channel {channel}: "
                                    "invite it there (/invite @frontdesk)")
        if code == "is_archived":
            return TemporaryFailure(f"the Slack channel {channel} is archived")
        if code in _AUTH_ERRORS:
            return TemporaryFailure(f"Slack refused slack.bot_token ({code})")
        if code == "missing_scope":
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            return TemporaryFailure(
                f"the Slack app lacks the scope {data.get('needed', '?')} for {method}: add it "
                "under OAuth & Permissions and reinstall the app")
        if code in _PERMANENT_ERRORS:
            return PermanentFailure(f"Slack refused {method}: {code}")
        return TemporaryFailure(f"Slack refused {method}: {code}")

    # -- what the root and the thread show ---------------------------------------------------------

    async def render_root(self, conversation_id: int) -> tuple[str, list[dict[str, Any]]]:
        async with self.store.reader() as s:
            card = await self.card(s, conversation_id)
        return blocks.root_message(card)

    async def card(self, s: AsyncSession, conversation_id: int) -> blocks.Card:
        c = await s.get_one(Conversation, conversation_id)
        contact = c.contact
        first = (await s.execute(
            select(Message).where(Message.conversation_id == c.id, Message.direction == "in")
            .order_by(Message.id).limit(1))).scalars().first()
        earlier_query = select(Conversation).where(Conversation.contact_id == c.contact_id,
                                                   Conversation.id < c.id)
        earlier = (await s.execute(select(func.count()).select_from(
            earlier_query.subquery()))).scalar_one()
        last = (await s.execute(earlier_query.order_by(Conversation.id.desc()).limit(1))
                ).unique().scalars().first()
        return blocks.Card(
            conversation_id=c.id, reference=c.reference, channel=c.channel, subject=c.subject,
            status=c.status, priority=c.priority, assignee=c.assignee,
            created_at=c.created_at, first_response_due_at=c.first_response_due_at,
            first_responded_at=c.first_responded_at, snoozed_until=c.snoozed_until,
            escalation_level=c.escalation_level, contact_name=contact.name,
            identities=tuple((i.channel, i.address) for i in contact.identities),
            earlier=earlier,
            last_earlier=(last.reference, last.status, last.subject) if last else None,
            first_text=_shown_text(first) if first else "",
            first_automated="automated" if first is not None and first.automated else None,
            attachments=tuple(a.filename for a in first.attachments) if first else (),
            inbox_address=c.inbox_address, replies_enabled=self.config.replies_enabled)

    async def _mirror_text(self, message_id: int) -> str | None:
        async with self.store.reader() as s:
            m = await s.get(Message, message_id)
            if m is None or m.is_note:
                return None
            conversation = await s.get_one(Conversation, m.conversation_id)
            reference = conversation.reference
            if m.direction == "in":
                return blocks.customer_line(
                    m.author_name or m.address, m.channel, _shown_text(m), reference=reference,
                    automated="automated" if m.automated else None,
                    attachments=tuple(a.filename for a in m.attachments))
            return blocks.outbound_line(m.author_name, m.author, m.channel, m.text,
                                        reference=reference, address=m.address)

    # -- keeping root messages current ------------------------------------------------------------

    def kick_refresh(self) -> None:
        self._refresh_wakeup.set()

    async def _refresh_loop(self) -> None:
        interval = self.settings.daemon.outbox_poll.total_seconds()
        backoff = Backoff("refreshing Slack root messages", log)  # the store away: one warning
        while not self._stopping:
            wait = interval
            try:
                if await self.refresh_roots():
                    self.kick_outbox()
                await self._forget_old_events()
                backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                wait = max(wait, backoff.failed(exc))
            try:
                await asyncio.wait_for(self._refresh_wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass
            self._refresh_wakeup.clear()

    async def refresh_roots(self) -> int:
        """Queue a root refresh for every conversation with a thread that has new audit events;
        returns how many were queued."""
        now = self.clock()
        queued = 0
        async with self.store.session() as s:
            query = select(SlackState).where(SlackState.name == _CURSOR)
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update()
            state = (await s.execute(query)).scalars().first()
            if state is None:
                top = (await s.execute(select(func.max(Event.id)))).scalar() or 0
                insert = sqlite.insert if s.get_bind().dialect.name == "sqlite" \
                    else postgresql.insert
                await s.execute(insert(core_table(SlackState)).values(
                    name=_CURSOR, value=str(top), updated_at=now).on_conflict_do_nothing(
                    index_elements=["name"]))
                return 0
            cursor = int(state.value or 0)
            rows = (await s.execute(
                select(Event.id, Event.conversation_id, Event.kind).where(Event.id > cursor)
                .order_by(Event.id).limit(1000))).all()
            if not rows:
                return 0
            latest: dict[int, int] = {}
            for event_id, conversation_id, kind in rows:
                if conversation_id is not None and kind not in _QUIET_EVENTS:
                    latest[conversation_id] = event_id
            if latest:
                with_thread = (await s.execute(
                    select(SlackThread.conversation_id)
                    .where(SlackThread.conversation_id.in_(list(latest))))).scalars().all()
                for conversation_id in with_thread:
                    conversation = await s.get_one(Conversation, conversation_id)
                    await self.queue.update(
                        s, conversation, now,
                        key=f"slack-update-{conversation_id}-{latest[conversation_id]}")
                    queued += 1
            state.value, state.updated_at = str(rows[-1][0]), now
        return queued

    async def _forget_old_events(self) -> None:
        if time.monotonic() - self._last_cleanup < 3600:
            return
        self._last_cleanup = time.monotonic()
        async with self.store.session() as s:
            await s.execute(delete(SlackEvent).where(
                SlackEvent.received_at < self.clock() - _SEEN_EVENTS_KEPT))

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


def _shown_text(m: Message) -> str:
    """The new part of a customer's reply when the parser found one, else the whole text."""
    return str(getattr(m, "text_new", None) or m.text or "")

