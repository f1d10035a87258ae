"""The scheduler: acknowledgements, SLA warnings and escalations, surveys, snoozes, reminders.

Time lives in the store. Every conversation carries its due times (``ack_due_at``,
``first_response_due_at``, ``next_response_due_at``, ``resolution_due_at``,
``escalation_due_at``, ``survey_due_at``, ``reminder_due_at``, ``snoozed_until``) and the earliest
of what the scheduler must act on, ``next_due_at`` (indexed). APScheduler (3.x, in-memory job
store, on the daemon's event loop) only wakes the sweeps: at the next due time and on
``scheduler.interval`` as a safety net. A restart loses no timer, because there are none outside
the store.

A sweep claims the conversations that are due, or that changed since the scheduler last planned
them (``updated_at <> sla_checked_at``: a staff reply, resolve or snooze made in Slack or on the
command line, whatever the writer's clock said), and in the same transaction writes the outbox
rows of what it does and advances their due times. On PostgreSQL the claim is
``SELECT ... FOR UPDATE SKIP LOCKED``, so several instances never act on the same conversation
at once; on SQLite every transaction begins ``IMMEDIATE`` (one writer at a time), so the select
inside it is already a claim. Each escalation level is counted on its SLA clock in that same
transaction and carries an idempotency key ``esc:<conversation>:<clock>:<stage>:<due>:<target>``:
it fires once per due time, across restarts and instances. An acknowledgement is decided under
the recipient's transaction advisory lock on PostgreSQL (:data:`ACK_LOCK_KEYS`), so the
per-recipient rate limits hold when several instances acknowledge one customer at once.

The ingest hook (:meth:`Scheduler.on_inbound`) runs inside the processing transaction: it starts
the SLA clocks of a customer message, sets ``ack_due_at`` for a new conversation, recognises a
survey answer ("5") and wakes the scheduler once the transaction commits.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from frontdesk.channels.base import PermanentFailure
from frontdesk.config.schema import PHONE_CHANNELS, EscalationLevel, Settings, parse_duration
from frontdesk.daemon.domain import notices
from frontdesk.daemon.domain.business_hours import BusinessCalendar
from frontdesk.daemon.domain.conversations import PRIORITIES, iso, reopen, set_priority
from frontdesk.daemon.domain.messages import OutboundMessage, Receipt
from frontdesk.daemon.domain.replies import ReplyComposer
from frontdesk.daemon.domain.sla import (
    KIND_WORDS,
    SlaClock,
    SlaEngine,
    SlaState,
    contact_tags,
    next_stage,
)
from frontdesk.storage.db import Backoff, Store, store_unavailable
from frontdesk.storage.models import (
    Acknowledgement,
    Contact,
    Conversation,
    Event,
    Message,
    Outbox,
    PhoneOptOut,
    core_table,
)

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from frontdesk.daemon.process.journal import StepAside

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ACTOR = "scheduler"
CHANNEL_POST = "escalation_post"
"""Outbox kind of an escalation notice in a Slack channel outside the thread (managers)."""
_WAKE_KEY = "frontdesk.scheduler.wake"
_RETRY_AFTER_ERROR = timedelta(minutes=5)
ACK_LOCK_KEYS = "hashtext('frontdesk.acknowledgement'), hashtext(:recipient)"
"""The two keys of a recipient's transaction advisory lock (PostgreSQL), held while an
acknowledgement to them is decided and written (``:recipient`` lower-cased)."""
_ACK_BUSY_RETRY = timedelta(seconds=1)
_OWN_COLUMNS = ("sla_state", "sla_policy", "priority", "escalation_level", "escalation_due_at",
                "first_response_due_at", "next_response_due_at", "resolution_due_at",
                "ack_due_at", "survey_due_at", "survey_sent_at", "reminder_due_at", "rating",
                "rated_at", "next_due_at", "sla_checked_at")
_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5)?\s*[.!]?\s*$")
_SIGNATURE = re.compile(r"\n--\s*\n.*", re.DOTALL)


class ThreadPoster(Protocol):
    """What the scheduler needs of the Slack desk's queue (``SlackQueue.text``): post text in the
    conversation's thread, written as an outbox row in the caller's transaction."""

    async def text(self, session: AsyncSession, conversation: Conversation, text: str,
                   now: datetime, key: str | None = None) -> Any: ...


class ChannelPoster(Protocol):
    """What the scheduler needs of the Slack desk to post in a channel outside any thread (a
    managers' channel): ``post_to_channel(channel_id, text) -> Receipt``, raising the outbox's
    DeliveryError kinds."""

    async def post_to_channel(self, channel_id: str, text: str) -> Receipt: ...


class _DaemonParts(Protocol):
    settings: Settings
    store: Store
    clock: Clock
    metrics: Any
    sla: Any
    channels: list[Any]
    services: list[Any]
    inbound_hooks: list[Any]
    outbox_handlers: dict[str, Any]
    outbox: Any
    replies: ReplyComposer


def parse_rate_limits(specs: list[str]) -> list[tuple[int, timedelta, str]]:
    """``["10/10m", ...]`` → ``[(10, 10 minutes, "10/10m"), ...]``."""
    out = []
    for spec in specs:
        count, _, window = spec.partition("/")
        out.append((int(count), parse_duration(window), spec))
    return out


def parse_rating(text: str) -> int | None:
    """The score of a survey answer that is just a digit 1-5 ("5", " 4. ", "5/5"), else None.
    A signature after a "-- " line is ignored."""
    text = _SIGNATURE.sub("", text.replace("\r\n", "\n"))
    m = _RATING.match(text)
    return int(m.group(1)) if m else None


def slack_mention(mention: str) -> str:
    """A configured mention as Slack writes it: <@U123>, <!subteam^S123>, <!here>."""
    if not mention:
        return ""
    if mention.startswith("@"):
        return f"<!{mention[1:]}>"
    if mention.startswith("S"):
        return f"<!subteam^{mention}>"
    return f"<@{mention}>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{max(1, seconds // 60)}m" if seconds >= 60 else f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest >= 60 else f"{hours}h"


class Scheduler:
    """The daemon service; see the module docstring."""

    name = "scheduler"

    def __init__(self, daemon: _DaemonParts) -> None:
        self.daemon = daemon
        self.settings = daemon.settings
        self.store = daemon.store
        self.replies: ReplyComposer = daemon.replies
        self.clock = daemon.clock
        self.calendar: BusinessCalendar = daemon.sla.calendar
        self.engine = SlaEngine(self.settings.sla, self.calendar, list(self.settings.escalation))
        self.config = self.settings.scheduler
        self.rate_limits = parse_rate_limits(self.settings.acknowledgement.rate_limits)
        self.channel_names = {name for c in daemon.channels
                              for name in getattr(c, "channel_names", (c.name,))}
        self.kick_outbox: Callable[[], None] = daemon.outbox.kick
        # Sweeps step aside while messages arrive, like processing and sending do.
        self._step_aside: StepAside | None = getattr(daemon, "step_aside", None)
        self._last_sweep = 0.0
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._apscheduler: AsyncIOScheduler | None = None
        self._wake_at: datetime | None = None  # real (wall-clock) time of the pending wake job
        self._queued: list[dict[str, Any]] = []  # outbox rows of the batch in hand (one sweep
        # at a time: self._lock)
        registry = daemon.metrics.registry
        self.actions = Counter("frontdesk_scheduler_actions",
                               "What the scheduler did: acknowledgement, warning, escalation, "
                               "survey, rating, reminder, wake", ["action"], registry=registry)
        self.sweep_seconds = Histogram("frontdesk_scheduler_sweep_seconds",
                                       "Time one sweep took", registry=registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                5, 10, 30))
        daemon.inbound_hooks.append(self.on_inbound)
        daemon.outbox_handlers[CHANNEL_POST] = self.handle_channel_post

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._stopping = False
        scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        scheduler.add_job(self._wake_job, "interval", id="sweep",
                          seconds=self.config.interval.total_seconds(),
                          next_run_time=datetime.now(UTC))
        self._task = asyncio.create_task(self._run(), name="scheduler-sweeps")
        scheduler.start()
        self._apscheduler = scheduler
        log.info("scheduler running: sweeps at each due time and every %s",
                 _span(self.config.interval))

    async def stop(self) -> None:
        """Finish the sweep in hand; every due time stays in the store for the next start."""
        self._stopping = True
        if self._apscheduler is not None and self._apscheduler.running:
            self._apscheduler.shutdown(wait=False)
        self._apscheduler = None
        self._kick.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def ready(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def _wake_job(self) -> None:
        self._kick.set()

    async def _run(self) -> None:
        backoff = Backoff("the scheduler's sweep", log)  # the store away: one warning
        while not self._stopping:
            await self._kick.wait()
            self._kick.clear()
            if self._stopping:
                break
            if self._step_aside is not None:
                await self._step_aside.wait(self._last_sweep, lambda: self._stopping)
            began = time.monotonic()
            try:
                await self.sweep()
                self._last_sweep = time.monotonic() - began
                backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                delay = backoff.failed(exc)
                self.wake(self.clock() + timedelta(seconds=delay))  # or the interval sweep

    def wake(self, when: datetime | None = None) -> None:
        """Sweep at ``when`` (the daemon's clock), or at once when None. Safe to call when not
        running (the command line's daemon for ``journal retry`` never starts it)."""
        if self._apscheduler is None or self._stopping:
            return
        delay = timedelta(0) if when is None else when - self.clock()
        if delay <= timedelta(0):
            self._kick.set()
            return
        if delay >= self.config.interval:
            return  # the interval sweep comes first
        real = datetime.now(UTC) + delay
        if self._wake_at is not None and datetime.now(UTC) < self._wake_at <= real:
            return  # an earlier wake is already set
        self._wake_at = real
        self._apscheduler.add_job(self._wake_job, "date", run_date=real, id="wake",
                                  replace_existing=True)

    def _wake_after_commit(self, session: AsyncSession, when: datetime | None) -> None:
        if when is None:
            return
        info = session.sync_session.info
        if _WAKE_KEY not in info:
            event.listen(session.sync_session, "after_commit", self._after_commit, once=True)
            info[_WAKE_KEY] = when
        else:
            info[_WAKE_KEY] = min(info[_WAKE_KEY], when)

    def _after_commit(self, session: Session) -> None:
        when = session.info.pop(_WAKE_KEY, None)
        if when is not None:
            self.wake(when)

    # -- the ingest hook -----------------------------------------------------------------------

    async def on_inbound(self, session: AsyncSession, conversation: Conversation,
                         message: Message, is_new: bool) -> None:
        now = self.clock()
        c = conversation
        if not is_new:
            await self._reload_own_columns(session, c)
        contact = await session.get(Contact, c.contact_id)
        if message.author == "customer" and not message.automated:
            await self._rating_reply(session, c, message, now)
            if is_new and self.settings.acknowledgement.enabled:
                c.ack_due_at = now + self.settings.acknowledgement.delay
        self.engine.refresh(c, contact_tags(contact), now, at=now)
        self._plan(c, now)
        self._wake_after_commit(session, c.next_due_at)

    async def _reload_own_columns(self, session: AsyncSession, c: Conversation) -> None:
        """Lock the conversation and take the scheduler's columns as committed now: a sweep of
        another instance (or of this one) may have fired an escalation level since the
        processor read the row, and planning from the older copy would undo it."""
        columns = [getattr(Conversation, name) for name in _OWN_COLUMNS]
        row = (await session.execute(select(*columns).where(Conversation.id == c.id)
                                     .with_for_update(key_share=True))).one()
        for name, value in zip(_OWN_COLUMNS, row, strict=True):
            set_committed_value(c, name, value)

    async def _rating_reply(self, s: AsyncSession, c: Conversation, message: Message,
                            now: datetime) -> bool:
        """A digit 1-5 in answer to the survey: stored as the rating. A good score leaves the
        conversation resolved (undoing the reopen the processor just did); a low one
        (``survey.low_score`` or less) leaves it open for a follow-up."""
        survey = self.settings.survey
        if c.survey_sent_at is None or now - c.survey_sent_at > survey.window:
            return False
        text = message.text_new if message.text_new is not None else message.text
        score = parse_rating(text or "")
        if score is None:
            return False
        c.rating, c.rated_at = score, now
        state = SlaState.load(c.sla_state)
        low = score <= survey.low_score
        await s.flush()
        reopened = (await s.execute(
            select(Event).where(Event.message_id == message.id,
                                Event.kind == "conversation_reopened"))).scalars().first()
        if not low:
            state.settled_at = now  # a rating needs no answer
            if reopened is not None:  # resolved it stays: the reopen never happened
                await s.execute(delete(Event).where(Event.id == reopened.id))
                c.status = "resolved"
                resolved_at = state.extra.get("resolved_at")
                c.resolved_at = datetime.fromisoformat(resolved_at) if resolved_at \
                    else c.survey_sent_at
            c.sla_state = state.dump()
        s.add(Event(kind="rating_received", actor="customer", conversation_id=c.id,
                    contact_id=c.contact_id, message_id=message.id, created_at=now,
                    data={"rating": score, "low": low, "reopened": low and c.status == "open"}))
        text_line = f"Rating {score}/5 from the customer"
        if low:
            text_line += (f": {c.reference} is open again for a follow-up" if c.status == "open"
                          else " (low)")
        await self._thread_post(s, c, text_line + ".", now, key=f"rating-{message.id}")
        self.actions.labels("rating").inc()
        log.info("%s rated %d/5%s", c.reference, score, " (low: reopened)" if low else "")
        return True

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, c: Conversation, now: datetime) -> None:
        """Survey and reminder times, ``next_due_at``, and ``sla_checked_at``."""
        state = SlaState.load(c.sla_state)
        survey = self.settings.survey
        if survey.enabled and c.status == "resolved" and c.survey_sent_at is None \
                and c.first_responded_at is not None and c.resolved_at is not None:
            if c.survey_due_at is None:
                c.survey_due_at = self._send_time(c.channel, c.resolved_at + survey.delay)
        else:
            c.survey_due_at = None
        reminder = self.settings.reminder
        last_staff = c.last_staff_message_at
        if reminder.enabled and c.status == "pending" and last_staff is not None \
                and not self.engine.owes_answer(c, state) \
                and state.extra.get("reminded_for") != iso(last_staff):
            c.reminder_due_at = self._send_time(c.channel, last_staff + reminder.after)
        else:
            c.reminder_due_at = None
        times = [c.ack_due_at, c.escalation_due_at, c.survey_due_at, c.reminder_due_at]
        if c.status == "snoozed":
            times.append(c.snoozed_until)
        c.next_due_at = min((t for t in times if t is not None), default=None)
        c.sla_checked_at = c.updated_at

    def _send_time(self, channel: str, at: datetime) -> datetime:
        """Mail may go at any hour; a text waits until the desk is open."""
        return at if channel == "email" else self.calendar.next_open(at)

    # -- the sweep -----------------------------------------------------------------------------

    async def sweep(self) -> dict[str, int]:
        """Act on every due conversation (and re-plan every changed one); returns what was done.
        Tests call it directly after moving the clock."""
        async with self._lock:
            started = time.perf_counter()
            tally: Tally[str] = Tally()
            try:
                await self._sweep(tally)
            finally:
                self.sweep_seconds.observe(time.perf_counter() - started)
            for action, count in tally.items():
                if action != "planned":
                    self.actions.labels(action).inc(count)
            if any(v for k, v in tally.items() if k != "planned"):
                log.info("scheduler sweep: %s", ", ".join(f"{v} {k}" for k, v in
                                                          sorted(tally.items())))
            return dict(tally)

    async def _begin(self, s: AsyncSession) -> datetime:
        """Begin the transaction (SQLite: BEGIN IMMEDIATE, the write lock), then read the clock:
        every change committed before it then lies at or before "now"."""
        await s.connection()
        return self.clock()

    async def _sweep(self, tally: Tally[str]) -> None:
        now = self.clock()
        seen: set[int] = set()
        while True:
            batch: Tally[str] = Tally()
            ids: list[int] = []
            try:
                async with self.store.session() as s:
                    now = await self._begin(s)
                    ids = [i for i in await self._claim(s, now) if i not in seen]
                    seen.update(ids)
                    if ids:
                        await self._batch(s, ids, now, batch)
            except Exception as exc:
                if store_unavailable(exc):
                    raise  # not this batch's fault: the sweep is retried when the store is back
                log.exception("a scheduler batch of %d conversation(s) failed; handling them one "
                              "at a time", len(ids))
                batch = Tally()
                for conversation_id in ids:
                    await self._alone(conversation_id, now, batch)
            tally.update(batch)
            if len(ids) < self.config.batch_size:
                break
        if any(v for k, v in tally.items() if k != "planned"):
            self.kick_outbox()
        self._wake_at = None
        async with self.store.reader() as s:
            following = (await s.execute(select(func.min(Conversation.next_due_at)))).scalar()
        if following is None:
            return  # nothing is due at any time: the interval sweep looks again
        if following <= now:
            # due but not claimed: another instance holds it; look again in a moment
            following = now + timedelta(seconds=1)
        self.wake(following)

    def _claimable(self, query: Any) -> Any:
        if self.store.dialect == "postgresql":
            # NO KEY UPDATE: a claimed conversation still takes new messages, events and outbox
            # rows that point at it (their foreign-key checks would otherwise wait on the sweep)
            return query.with_for_update(skip_locked=True, key_share=True)
        return query  # SQLite: the transaction began IMMEDIATE, one writer at a time

    async def _claim(self, s: AsyncSession, now: datetime) -> list[int]:
        limit = self.config.batch_size
        due = (select(Conversation.id).where(Conversation.next_due_at <= now)
               .order_by(Conversation.next_due_at).limit(limit))
        changed = (select(Conversation.id)
                   .where(Conversation.updated_at != Conversation.sla_checked_at).limit(limit))
        postgres = self.store.dialect == "postgresql"
        if postgres:
            # PostgreSQL guesses that "updated_at <> sla_checked_at" matches most rows and, to
            # lock a few, would rather read the whole table than the (nearly empty) partial
            # index ix_conversations_sla_dirty; forbid that for the claim only.
            await s.execute(text("SET LOCAL enable_seqscan = off"))
        ids = list((await s.execute(self._claimable(due))).scalars())
        ids += [i for i in (await s.execute(self._claimable(changed))).scalars() if i not in ids]
        if postgres:
            await s.execute(text("SET LOCAL enable_seqscan = on"))
        return ids

    async def _batch(self, s: AsyncSession, ids: list[int], now: datetime,
                     tally: Tally[str]) -> None:
        """The claimed conversations, loaded at once; their new rows written together."""
        self._queued = []
        rows = (await s.execute(select(Conversation).where(Conversation.id.in_(ids))
                                .execution_options(populate_existing=True))).unique().scalars()
        for c in list(rows):
            await self._process(s, c, now, tally)
            tally["planned"] += 1
        await self._write_queued(s)

    async def _alone(self, conversation_id: int, now: datetime, tally: Tally[str]) -> None:
        """After a batch failed: one conversation in its own transaction. One that fails again
        is logged and left for ``_RETRY_AFTER_ERROR``; the others go on."""
        part: Tally[str] = Tally()
        try:
            async with self.store.session() as s:
                now = await self._begin(s)
                claimed = (await s.execute(self._claimable(
                    select(Conversation.id).where(Conversation.id == conversation_id)))).first()
                if claimed is None:
                    return
                self._queued = []
                c = await s.get_one(Conversation, conversation_id, populate_existing=True)
                await self._process(s, c, now, part)
                await self._write_queued(s)
        except Exception:
            log.exception("FD-%d: the scheduler could not handle it; trying again in %s",
                          conversation_id, _span(_RETRY_AFTER_ERROR))
            async with self.store.session() as s:
                await s.execute(update(Conversation).where(Conversation.id == conversation_id)
                                .values(next_due_at=now + _RETRY_AFTER_ERROR,
                                        sla_checked_at=Conversation.updated_at))
            return
        tally.update(part)
        tally["planned"] += 1

    async def _process(self, s: AsyncSession, c: Conversation, now: datetime,
                       tally: Tally[str]) -> None:
        contact = await s.get(Contact, c.contact_id)
        tags = contact_tags(contact)
        if c.status == "snoozed" and c.snoozed_until is not None and c.snoozed_until <= now:
            await reopen(s, c, actor=ACTOR, now=now,
                         data={"reason": "snooze ended", "snoozed_until": iso(c.snoozed_until)})
            tally["wake"] += 1
        state = self.engine.refresh(c, tags, now)
        if c.ack_due_at is not None and c.ack_due_at <= now:
            c.ack_due_at = None
            if await self._acknowledge(s, c, contact, state, now):
                tally["acknowledgement"] += 1
        for _round in range(len(self.engine.levels) + 2):
            raised = await self._escalate(s, c, state, now, tally)
            if not raised:
                break
            state = self.engine.refresh(c, tags, now)  # a new priority may bring a new policy
        if c.survey_due_at is not None and c.survey_due_at <= now:
            c.survey_due_at = None
            if await self._survey(s, c, contact, now):
                tally["survey"] += 1
        if c.reminder_due_at is not None and c.reminder_due_at <= now:
            c.reminder_due_at = None
            if await self._remind(s, c, contact, now):
                tally["reminder"] += 1
        self._plan(c, now)

    # -- acknowledgements ----------------------------------------------------------------------

    async def _acknowledge(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                           state: SlaState, now: datetime) -> bool:
        first = (await s.execute(
            select(Message).where(Message.conversation_id == c.id, Message.direction == "in",
                                  Message.author == "customer")
            .order_by(Message.id).limit(1))).scalars().first()
        reason = None
        if not self.settings.acknowledgement.enabled:
            reason = "acknowledgements are disabled"
        elif first is None:
            reason = "there is no customer message"
        elif first.automated:
            reason = "the message was automated"
        elif c.first_responded_at is not None or c.last_staff_message_at is not None:
            reason = "staff already answered"
        elif c.status == "resolved":
            reason = "the conversation is already resolved"
        elif (await s.execute(select(Acknowledgement.id)
                              .where(Acknowledgement.conversation_id == c.id))).first():
            reason = "it was already acknowledged"
        else:
            reason = await self._cannot_send(s, c.channel, first.address)
            if reason is None:
                if not await self._recipient_lock(s, first.address):
                    c.ack_due_at = now + _ACK_BUSY_RETRY  # another instance acknowledges them
                    log.debug("%s: acknowledgement postponed: another instance is "
                              "acknowledging %s", c.reference, first.address)
                    return False
                reason = await self._rate_limited(s, first.address, now)
        if reason is not None or first is None:
            s.add(Event(kind="acknowledgement_skipped", actor=ACTOR, conversation_id=c.id,
                        contact_id=c.contact_id, created_at=now, data={"reason": reason}))
            log.info("%s: no acknowledgement: %s", c.reference, reason)
            return False
        response = state.clocks.get("response")
        due = (response.due if response is not None else None) or c.first_response_due_at \
            or self.calendar.add(now, self.engine.policies.default.first_response)
        language = self._language(contact, first)
        template = notices.choose("acknowledgement", c.channel, language,
                                  self.config.default_language,
                                  self.settings.acknowledgement.templates)
        sentence, when = notices.expectation(due, now, self.calendar, language)
        values = self._values(c, contact, first, language) | {"due": when,
                                                              "expectation": sentence}
        message = await self._customer_message(s, c, first, kind="acknowledgement",
                                               author_name="Automatic reply",
                                               template=template, values=values, now=now)
        s.add(Acknowledgement(conversation_id=c.id, message_id=message.id, channel=c.channel,
                              recipient=first.address.lower(), created_at=now))
        s.add(Event(kind="acknowledgement_sent", actor=ACTOR, conversation_id=c.id,
                    contact_id=c.contact_id, message_id=message.id, created_at=now,
                    data={"channel": c.channel, "to": first.address, "due": iso(due),
                          "language": language}))
        return True

    async def _cannot_send(self, s: AsyncSession, channel: str, address: str) -> str | None:
        if channel not in self.channel_names:
            return f"the {channel} channel is not enabled"
        if channel in PHONE_CHANNELS:
            number = address.removeprefix("whatsapp:")
            opted_out = (await s.execute(select(PhoneOptOut.opted_out)
                                         .where(PhoneOptOut.address == number))).scalar()
            if opted_out:
                return f"{number} opted out of messages"
        return None

    async def _recipient_lock(self, s: AsyncSession, address: str) -> bool:
        """PostgreSQL: take the recipient's acknowledgement lock until the transaction ends;
        False when another instance holds it. Two instances acknowledging two conversations of
        one recipient at once would each count only the acknowledgements committed before, and
        together pass a rate limit (a mail loop is what the limits are for)."""
        if self.store.dialect != "postgresql" or not self.rate_limits:
            return True
        taken = (await s.execute(text(f"SELECT pg_try_advisory_xact_lock({ACK_LOCK_KEYS})"),
                                 {"recipient": address.lower()})).scalar()
        return bool(taken)

    async def _rate_limited(self, s: AsyncSession, address: str, now: datetime) -> str | None:
        if not self.rate_limits:
            return None
        longest = max(window for _, window, _ in self.rate_limits)
        sent = list((await s.execute(
            select(Acknowledgement.created_at)
            .where(Acknowledgement.recipient == address.lower(),
                   Acknowledgement.created_at > now - longest))).scalars())
        for count, window, spec in self.rate_limits:
            if sum(1 for t in sent if t > now - window) >= count:
                return f"the rate limit {spec} for {address} is reached"
        return None

    def _language(self, contact: Contact | None, message: Message | None) -> str:
        tags = contact.tags if contact is not None and contact.tags else {}
        language = tags.get("language")
        if isinstance(language, str) and language.strip():
            return language.strip().lower()
        headers = {k.lower(): v for k, v in ((message.headers or {}) if message else {}).items()}
        header = str(headers.get("content-language") or "").split(",")[0].strip()
        if header:
            return header.lower()
        return self.config.default_language

    def _values(self, c: Conversation, contact: Contact | None, message: Message | None,
                language: str) -> dict[str, str]:
        name = (contact.name if contact is not None else "") or \
            (message.author_name if message is not None else "")
        full, first = notices.greeting_name(name, language)
        return {"reference": c.reference, "name": full, "first_name": first,
                "subject": c.subject.strip() or "your message"}

    async def _customer_message(self, s: AsyncSession, c: Conversation, reply_to: Message, *,
                                kind: str, author_name: str, template: notices.Template,
                                values: dict[str, str], now: datetime) -> Message:
        """Store an automatic message (author ``system``) and queue it on the customer's
        channel as automated (email: Auto-Submitted: auto-replied, null return path)."""
        text = notices.render(template.text, values)
        subject = notices.render(template.subject, values) if template.subject else ""
        return await self.replies.queue(s, c, answering=reply_to, text=text, author="system",
                                        author_name=author_name, subject=subject,
                                        automated=True, headers={"X-Frontdesk-Kind": kind},
                                        now=now)

    # -- surveys and reminders -----------------------------------------------------------------

    async def _last_customer_message(self, s: AsyncSession, c: Conversation) -> Message | None:
        return (await s.execute(
            select(Message).where(Message.conversation_id == c.id, Message.direction == "in",
                                  Message.author == "customer", Message.automated.is_(False))
            .order_by(Message.id.desc()).limit(1))).scalars().first()

    async def _survey(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                      now: datetime) -> bool:
        last = await self._last_customer_message(s, c)
        reason = None
        if c.status != "resolved":
            reason = "the conversation is not resolved"
        elif c.survey_sent_at is not None:
            reason = "a survey was already sent"
        elif last is None:
            reason = "there is no customer message"
        else:
            reason = await self._cannot_send(s, c.channel, last.address)
        if reason is not None or last is None:
            s.add(Event(kind="survey_skipped", actor=ACTOR, conversation_id=c.id,
                        contact_id=c.contact_id, created_at=now, data={"reason": reason}))
            return False
        language = self._language(contact, last)
        template = notices.choose("survey", c.channel, language, self.config.default_language,
                                  self.settings.survey.templates)
        message = await self._customer_message(
            s, c, last, kind="survey", author_name="Satisfaction survey", template=template,
            values=self._values(c, contact, last, language), now=now)
        c.survey_sent_at = now
        state = SlaState.load(c.sla_state)
        state.extra["resolved_at"] = iso(c.resolved_at)
        c.sla_state = state.dump()
        s.add(Event(kind="survey_sent", actor=ACTOR, conversation_id=c.id,
                    contact_id=c.contact_id, message_id=message.id, created_at=now,
                    data={"channel": c.channel, "to": last.address}))
        return True

    async def _remind(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                      now: datetime) -> bool:
        state = SlaState.load(c.sla_state)
        state.extra["reminded_for"] = iso(c.last_staff_message_at)
        c.sla_state = state.dump()
        last = await self._last_customer_message(s, c)
        reason = None
        if c.status != "pending" or self.engine.owes_answer(c, state):
            reason = "the conversation is not waiting on the customer"
        elif last is None:
            reason = "there is no customer message"
        else:
            reason = await self._cannot_send(s, c.channel, last.address)
        if reason is not None or last is None:
            s.add(Event(kind="reminder_skipped", actor=ACTOR, conversation_id=c.id,
                        contact_id=c.contact_id, created_at=now, data={"reason": reason}))
            return False
        language = self._language(contact, last)
        template = notices.choose("reminder", c.channel, language, self.config.default_language,
                                  self.settings.reminder.templates)
        message = await self._customer_message(
            s, c, last, kind="reminder", author_name="Reminder", template=template,
            values=self._values(c, contact, last, language), now=now)
        s.add(Event(kind="reminder_sent", actor=ACTOR, conversation_id=c.id,
                    contact_id=c.contact_id, message_id=message.id, created_at=now,
                    data={"channel": c.channel, "to": last.address}))
        return True

    # -- escalations ---------------------------------------------------------------------------

    async def _escalate(self, s: AsyncSession, c: Conversation, state: SlaState, now: datetime,
                        tally: Tally[str]) -> bool:
        """Fire every warning and level that is due on the running clocks, in order (a warning
        whose breach has already passed is skipped); True if a level raised the priority."""
        raised = False
        changed = False
        levels = self.engine.levels
        for clock in state.clocks.values():
            while True:
                stage = next_stage(clock, levels, self.settings.sla.warn_before)
                if stage is None:
                    break
                when = clock.at(stage.position, self.calendar)
                if when is None or when > now or clock.due is None:
                    break
                changed = True
                if stage.name == "warning":
                    clock.warned = True
                    if clock.used(now, self.calendar) >= clock.target:
                        continue  # already past the due time: the first level says it
                    await self._warn(s, c, clock, now)
                    tally["warning"] += 1
                else:
                    clock.level = stage.level
                    clock.warned = True
                    if await self._level(s, c, clock, stage.level, levels[stage.level - 1], now):
                        raised = True
                    tally["escalation"] += 1
        if changed:
            c.sla_state = state.dump()
            c.escalation_level = max((k.level for k in state.clocks.values()), default=0)
            c.escalation_due_at = self.engine.next_escalation(state)
        return raised

    def _local(self, at: datetime) -> str:
        local = at.astimezone(self.calendar.tz)
        return f"{local:%a %d %b %H:%M} {local.tzname() or ''}".strip()

    async def _warn(self, s: AsyncSession, c: Conversation, clock: SlaClock,
                    now: datetime) -> None:
        assert clock.due is not None
        what = KIND_WORDS[clock.kind]
        left = timedelta(seconds=clock.target - clock.used(now, self.calendar))
        text = (f"SLA warning: the {what} for {c.reference} is due {self._local(clock.due)} "
                f"({_span(left)} of business time left).")
        mention = slack_mention(self.settings.sla.warn_mention)
        if mention:
            text += f" {mention}"
        key = f"esc:{c.id}:{clock.kind}:warning:{clock.due.isoformat()}"
        posted = await self._thread_post(s, c, text, now, key=f"{key}:slack")
        s.add(Event(kind="sla_warning", actor=ACTOR, conversation_id=c.id,
                    contact_id=c.contact_id, created_at=now,
                    data={"clock": clock.kind, "due": iso(clock.due), "posted": posted}))
        log.info("%s: SLA warning (%s due %s)", c.reference, what, iso(clock.due))

    async def _level(self, s: AsyncSession, c: Conversation, clock: SlaClock, number: int,
                     level: EscalationLevel, now: datetime) -> bool:
        """One escalation level: its notices (each once, by key) and its priority raise."""
        assert clock.due is not None
        what = KIND_WORDS[clock.kind]
        overdue = timedelta(seconds=max(0.0, clock.used(now, self.calendar) - clock.target))
        head = f"Escalation level {number}"
        detail = (f"the {what} for {c.reference} was due {self._local(clock.due)}"
                  f" ({_span(overdue)} of business time overdue)")
        mention = slack_mention(level.mention)
        key = f"esc:{c.id}:{clock.kind}:{number}:{clock.due.isoformat()}"
        notified: list[str] = []
        skipped: list[str] = []
        for target in level.notify:
            if target == "slack":
                text = f"{head}: {detail}." + (f" {mention}" if mention else "")
                if await self._thread_post(s, c, text, now, key=f"{key}:slack"):
                    notified.append("slack thread")
                else:
                    skipped.append("slack thread: the Slack desk is not configured")
            elif target == "channel":
                contact = await s.get(Contact, c.contact_id)
                who = _escape((contact.name if contact else "") or "customer")
                text = (f"{head}: {detail}. {c.channel} conversation with {who}: "
                        f"{_escape(c.subject[:200]) or '(no subject)'}"
                        + (f" {mention}" if mention else ""))
                if self._desk() is None:
                    skipped.append(f"slack {level.channel_id}: the Slack desk is not configured")
                else:
                    self._queue_outbox(
                        kind=CHANNEL_POST, key=f"{key}:channel", now=now,
                        payload={"slack_channel": level.channel_id, "target": level.channel_id,
                                 "text": text, "conversation_id": c.id})
                    notified.append(f"slack {level.channel_id}")
            elif target == "email":
                subject = f"[{c.reference}] {head}: {what} overdue"
                body = (f"{head}: {detail}.\n\nConversation: {c.reference} ({c.channel}), "
                        f"priority {c.priority}, status {c.status}\nSubject: {c.subject}\n\n"
                        f"See it with: frontdesk show {c.reference}\n")
                if await self._oncall(s, "email", level.email, body, key, now, subject=subject):
                    notified.append(f"email {level.email}")
                else:
                    skipped.append("email: the email channel is not enabled")
            elif target == "sms":
                body = f"frontdesk {head.lower()}: {c.reference} {what} overdue " \
                       f"(due {self._local(clock.due)})."
                if await self._oncall(s, "sms", level.sms, body, key, now):
                    notified.append(f"sms {level.sms}")
                else:
                    skipped.append("sms: the sms channel is not enabled")
        raised_to = await self._raise_priority(s, c, level, number, now)
        s.add(Event(kind="escalated", actor=ACTOR, conversation_id=c.id, contact_id=c.contact_id,
                    created_at=now,
                    data={"level": number, "clock": clock.kind, "due": iso(clock.due),
                          "notified": notified, "skipped": skipped,
                          **({"priority": raised_to} if raised_to else {})}))
        for line in skipped:
            log.warning("%s %s: %s not sent", c.reference, head.lower(), line)
        log.info("%s: %s (%s due %s) to %s", c.reference, head.lower(), what, iso(clock.due),
                 ", ".join(notified) or "nobody")
        return raised_to is not None

    async def _raise_priority(self, s: AsyncSession, c: Conversation, level: EscalationLevel,
                              number: int, now: datetime) -> str | None:
        if level.raise_priority is False:
            return None
        current = PRIORITIES.index(c.priority) if c.priority in PRIORITIES else 1
        if level.raise_priority is True:
            wanted = PRIORITIES[min(current + 1, len(PRIORITIES) - 1)]
        else:
            wanted = str(level.raise_priority)
        if PRIORITIES.index(wanted) <= current:
            return None
        await set_priority(s, c, wanted, actor=ACTOR, now=now,
                           data={"reason": f"escalation level {number}"})
        return wanted

    async def _oncall(self, s: AsyncSession, channel: str, address: str, text: str, key: str,
                      now: datetime, *, subject: str = "") -> bool:
        """An escalation to a person on call (not a customer message; no conversation order)."""
        if channel not in self.channel_names:
            return False
        full_key = f"{key}:{channel}"
        out = OutboundMessage(channel=channel, to_address=address, text=text, subject=subject,
                              automated=True, idempotency_key=full_key)
        self._queue_outbox(kind="deliver", payload=asdict(out), key=full_key, now=now)
        return True

    def _queue_outbox(self, *, kind: str, payload: dict[str, Any], key: str,
                      now: datetime) -> None:
        """An outbox row (not about one customer message) written at the end of the batch,
        unless a row with the same idempotency key is already there."""
        self._queued.append({"kind": kind, "conversation_id": None, "message_id": None,
                             "payload": payload, "idempotency_key": key, "state": "pending",
                             "attempts": 0, "next_attempt_at": now, "last_error": None,
                             "created_at": now, "done_at": None})

    async def _write_queued(self, s: AsyncSession) -> None:
        if not self._queued:
            return
        insert = sqlite.insert if self.store.dialect == "sqlite" else postgresql.insert
        await s.execute(insert(core_table(Outbox))
                        .on_conflict_do_nothing(index_elements=["idempotency_key"]), self._queued)
        self._queued = []

    # -- Slack ---------------------------------------------------------------------------------

    def _desk(self) -> Any | None:
        return next((svc for svc in self.daemon.services if getattr(svc, "name", "") == "slack"),
                    None)

    async def _thread_post(self, s: AsyncSession, c: Conversation, text: str, now: datetime, *,
                           key: str) -> bool:
        """Post in the conversation's Slack thread through the desk's queue; False without a
        desk. Written once per key."""
        desk = self._desk()
        queue: ThreadPoster | None = getattr(desk, "queue", None) if desk is not None else None
        if queue is None:
            return False
        exists = (await s.execute(select(Outbox.id).where(Outbox.idempotency_key == key))).first()
        if exists is None:
            await queue.text(s, c, text, now, key=key)
        return True

    async def handle_channel_post(self, row: Outbox) -> Receipt:
        """The outbox handler of :data:`CHANNEL_POST`: a notice in a managers' channel."""
        desk = self._desk()
        if desk is None:
            raise PermanentFailure("the Slack desk is not configured (slack.bot_token)")
        payload = row.payload or {}
        channel, text = str(payload["slack_channel"]), str(payload["text"])
        post = getattr(desk, "post_to_channel", None)
        if post is not None:
            receipt: Receipt = await post(channel, text)
            return receipt
        # Until the desk offers post_to_channel (ChannelPoster), use its paced chat.postMessage,
        # which raises the outbox's DeliveryError kinds (rate limits, missing channel).
        ts, where = await desk._post(channel, text=text)
        return Receipt(remote_id=ts, detail=where)

