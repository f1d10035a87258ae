"""The scheduler as a daemon service: start and stop, wake-ups, the ingest hook and the sweep.

APScheduler (3.x, in-memory job store, on the daemon's event loop) only wakes the sweeps: at the
next due time and on ``scheduler.interval`` as a safety net. A sweep takes the claimed
conversations (:mod:`.claims`) in batches of ``scheduler.batch_size``, one transaction each, and
does for each what is due, in order: the end of a snooze, the acknowledgement
(:mod:`.acknowledgements`), SLA warnings and escalation levels (:mod:`.escalations`), the survey
and the reminder (:mod:`.surveys`); then it plans the conversation's next due time. The outbox
rows of what it did are written in the same transaction (:mod:`.rows`). A batch that fails is
done again one conversation at a time, and a conversation that fails alone is left for a while.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from frontdesk.daemon.process.scheduler import claims
from frontdesk.daemon.process.scheduler.acknowledgements import Acknowledgements
from frontdesk.daemon.process.scheduler.audit import ACTOR
from frontdesk.daemon.process.scheduler.customers import CustomerNotices
from frontdesk.daemon.process.scheduler.escalations import Escalations
from frontdesk.daemon.process.scheduler.host import SchedulerHost
from frontdesk.daemon.process.scheduler.rows import OutboxRows
from frontdesk.daemon.process.scheduler.staff import CHANNEL_POST, StaffNotices
from frontdesk.daemon.process.scheduler.surveys import FollowUps
from frontdesk.daemon.process.scheduler.wording import span
from frontdesk.domain.conversations import iso, reopen
from frontdesk.domain.sla import SlaEngine, contact_tags
from frontdesk.storage.db import Backoff, store_unavailable
from frontdesk.storage.models import Contact, Conversation, Message

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

_WAKE_KEY = "frontdesk.scheduler.wake"
_RETRY_AFTER_ERROR = timedelta(minutes=5)


class Scheduler:
    """The daemon service; see the module docstring and the package's."""

    name = "scheduler"
    sweep_gap = 0.25
    """Seconds from the start of one woken sweep to the start of the next, at least: while new
    conversations keep coming (each processing commit wakes the sweep), a sweep takes those of
    the last quarter second together instead of one or two each. A wake after a quiet spell
    sweeps at once. Measured (benchmarks/e2e_latency.py, open loop of 100 new customers a
    second): sweeping at every wake, 62.6-66.3 cards a second; 50 ms apart, 69.4-80.4; 250 ms
    apart (two pairs of runs against 50 ms), 78.9-81.9 against 74.2-74.8, the sweeps' share
    of the daemon's CPU 1.3-1.4 s against 2.0 s for 1,000 conversations."""

    def __init__(self, daemon: SchedulerHost) -> None:
        settings = daemon.settings
        self.settings = settings
        self.config = settings.scheduler
        self.store = daemon.store
        self.clock = daemon.clock
        self.calendar = daemon.sla.calendar
        self.engine = SlaEngine(settings.sla, self.calendar, list(settings.escalation))
        self.channel_names = frozenset(name for c in daemon.channels for name in c.channel_names)
        self.kick_outbox: Callable[[], None] = daemon.outbox.kick
        staff = StaffNotices(daemon.desk)
        customers = CustomerNotices(daemon.replies, channel_names=self.channel_names,
                                    default_language=self.config.default_language)
        self.acknowledgements = Acknowledgements(settings.acknowledgement, engine=self.engine,
                                                 customers=customers, dialect=self.store.dialect)
        self.follow_ups = FollowUps(settings.survey, settings.reminder, engine=self.engine,
                                    customers=customers, staff=staff)
        self.escalations = Escalations(settings.sla, engine=self.engine, staff=staff,
                                       channel_names=self.channel_names)
        # Sweeps step aside while messages arrive, like processing and sending do.
        self._step_aside = daemon.step_aside
        self._last_sweep = 0.0
        self._began = -self.sweep_gap  # when the last woken sweep began (time.monotonic())
        self._lock = asyncio.Lock()  # one sweep at a time
        self._kick = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._apscheduler: AsyncIOScheduler | None = None
        self._wake_at: datetime | None = None  # real (wall-clock) time of the pending wake job
        registry = daemon.metrics.registry
        self.actions = Counter("frontdesk_scheduler_actions",
                               "What the scheduler did: acknowledgement, warning, escalation, "
                               "survey, rating, reminder, wake", ["action"], registry=registry)
        # Only a scheduler that sweeps shows its sweep times (ratings still count when it is off).
        self.sweep_seconds = Histogram("frontdesk_scheduler_sweep_seconds",
                                       "Time one sweep took",
                                       registry=registry if self.config.enabled else None,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                5, 10, 30))
        daemon.inbound_hooks.append(self.on_inbound)
        daemon.outbox_handlers[CHANNEL_POST] = staff.handle_channel_post

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
                 span(self.config.interval))

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
            gap = self._began + self.sweep_gap - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)  # what wakes it meanwhile is in this sweep too
                self._kick.clear()
                if self._stopping:
                    break
            began = self._began = time.monotonic()
            try:
                await self.sweep()
                self._last_sweep = time.monotonic() - began
                backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                delay = backoff.failed(exc)
                self.wake(self.clock() + timedelta(seconds=delay))  # or the interval sweep

    # -- wake-ups ------------------------------------------------------------------------------

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
        """Inside the processing transaction: start the SLA clocks of a customer message, plan
        the acknowledgement of a new conversation, take a survey answer ("5") as the rating,
        and wake the scheduler once the transaction commits."""
        now = self.clock()
        c = conversation
        if not is_new and self.store.dialect != "sqlite":
            # PostgreSQL: a sweep may have fired since the processor read the row. On SQLite the
            # processor read it in this same write transaction, which no sweep can interleave.
            await claims.reload_own_columns(session, c)
        contact = await session.get(Contact, c.contact_id)
        if message.author == "customer" and not message.automated:
            if await self.follow_ups.rating_reply(session, c, message, now):
                self.actions.labels("rating").inc()
            if is_new:
                self.acknowledgements.plan(c, now)
        self.engine.refresh(c, contact_tags(contact), now, at=now)
        self._plan(c)
        self._wake_after_commit(session, c.next_due_at)

    def _plan(self, c: Conversation) -> None:
        """Survey and reminder times, ``next_due_at`` (the earliest thing to do) and
        ``sla_checked_at`` (planned as of this ``updated_at``)."""
        self.follow_ups.plan(c)
        times = [c.ack_due_at, c.escalation_due_at, c.survey_due_at, c.reminder_due_at]
        if c.status == "snoozed":
            times.append(c.snoozed_until)
        c.next_due_at = min((t for t in times if t is not None), default=None)
        c.sla_checked_at = c.updated_at

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

    async def _sweep(self, tally: Tally[str]) -> None:
        now = self.clock()
        seen: set[int] = set()
        while True:
            batch: Tally[str] = Tally()
            ids: list[int] = []
            try:
                async with self.store.session() as s:
                    now = await claims.begin(s, self.clock)
                    claimed = await claims.claim(s, self.store.dialect, now,
                                                 self.config.batch_size)
                    ids = [i for i in claimed if i not in seen]
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

    async def _batch(self, s: AsyncSession, ids: list[int], now: datetime,
                     tally: Tally[str]) -> None:
        """The claimed conversations, loaded at once; their new rows written together."""
        rows = OutboxRows(self.store.dialect)
        loaded = list((await s.execute(select(Conversation).where(Conversation.id.in_(ids))
                                       .execution_options(populate_existing=True))
                       ).unique().scalars())
        await self.acknowledgements.prepare(
            s, [c for c in loaded if c.ack_due_at is not None and c.ack_due_at <= now], now)
        try:
            for c in loaded:
                await self._process(s, c, now, tally, rows)
                tally["planned"] += 1
            await self.acknowledgements.settle(s)
        finally:
            self.acknowledgements.finish()
        await rows.write(s)

    async def _alone(self, conversation_id: int, now: datetime, tally: Tally[str]) -> None:
        """After a batch failed: one conversation in its own transaction. One that fails again
        is logged and left for ``_RETRY_AFTER_ERROR``; the others go on."""
        part: Tally[str] = Tally()
        try:
            async with self.store.session() as s:
                now = await claims.begin(s, self.clock)
                if not await claims.claim_one(s, self.store.dialect, conversation_id):
                    return
                rows = OutboxRows(self.store.dialect)
                c = await s.get_one(Conversation, conversation_id, populate_existing=True)
                await self._process(s, c, now, part, rows)
                await rows.write(s)
        except Exception as exc:
            log.error("FD-%d: the scheduler could not handle it (%s: %s); trying again in %s",
                      conversation_id, type(exc).__name__, exc, span(_RETRY_AFTER_ERROR))
            log.debug("FD-%d: the scheduler could not handle it", conversation_id,
                      exc_info=True)
            async with self.store.session() as s:
                await s.execute(update(Conversation).where(Conversation.id == conversation_id)
                                .values(next_due_at=now + _RETRY_AFTER_ERROR,
                                        sla_checked_at=Conversation.updated_at))
            return
        tally.update(part)
        tally["planned"] += 1

    async def _process(self, s: AsyncSession, c: Conversation, now: datetime,
                       tally: Tally[str], rows: OutboxRows) -> None:
        """What is due for one claimed conversation, then its next plan."""
        contact = await s.get(Contact, c.contact_id)
        tags = contact_tags(contact)
        if c.status == "snoozed" and c.snoozed_until is not None and c.snoozed_until <= now:
            await reopen(s, c, actor=ACTOR, now=now,
                         data={"reason": "snooze ended", "snoozed_until": iso(c.snoozed_until)})
            tally["wake"] += 1
        state = self.engine.refresh(c, tags, now)
        if c.ack_due_at is not None and c.ack_due_at <= now:
            c.ack_due_at = None
            if await self.acknowledgements.acknowledge(s, c, contact, state, now):
                tally["acknowledgement"] += 1
        for _round in range(len(self.engine.levels) + 2):
            raised = await self.escalations.escalate(s, c, state, now, tally, rows)
            if not raised:
                break
            state = self.engine.refresh(c, tags, now)  # a new priority may bring a new policy
        if c.survey_due_at is not None and c.survey_due_at <= now:
            c.survey_due_at = None
            if await self.follow_ups.survey(s, c, contact, now):
                tally["survey"] += 1
        if c.reminder_due_at is not None and c.reminder_due_at <= now:
            c.reminder_due_at = None
            if await self.follow_ups.remind(s, c, contact, now):
                tally["reminder"] += 1
        self._plan(c)
