"""The outbox worker: delivers what the store says must be sent, with retry and backoff.

Rows are written in the same transaction as whatever caused them (a staff reply, later an
acknowledgement or a Slack post). The worker sends each due row with the channel's sender, then
marks it done; a crash between the two can only repeat a send, and every send carries a stable
id (an email's Message-ID) so the far side can tell.

Order is kept where it matters and nowhere else: within a *lane*, the rows of one kind for one
conversation going to one channel (``outbox.channel``: the customer channel, ``slack`` for the
desk's posts). A row waits while an earlier row of its lane is still pending, so a second reply
follows the first; but a text message that cannot go never holds up an email reply in the same
conversation, a Slack post never holds up a reply, and conversations never wait for each other.
The worker goes in rounds: the due rows of a round are each the head of a different lane, so they
are sent together (at most ``sends_per_remote`` at a time to one remote) and their outcomes are
recorded in one transaction. A round takes a person's words first (a staff reply before the
automatic messages), then each remote's oldest rows in turn, so a backlog at one remote never
holds up another.
A row for a customer channel that does not run in this daemon (no credentials configured) fails
at once, for good, saying so, rather than waiting out hours of retries. When a remote answers
again after failures (the first successful send to it), its other rows waiting in backoff are
made due at once, so a relay that was down for an hour does not leave replies waiting another
hour; each row is pulled forward that way only once per run, so a row that fails for reasons of
its own (one recipient's mailbox) still waits out its backoff.

Several instances on one PostgreSQL share the outbox. An instance sends a row only after claiming
it: a short transaction picks a few due head-of-lane rows with ``FOR UPDATE SKIP LOCKED`` (rows
another instance is claiming at that moment are passed over, never waited for) and pushes their
``next_attempt_at`` ahead by the lease (``daemon.outbox_lease``) with ``claimed_by`` set to this
instance, so they are not due for anyone else while it sends. Marking a row sent or failed ends
the claim. A claim whose instance died simply falls due again when the lease runs out, and another
instance sends the row. A claim never outlives its lease while its instance works: a claimed
round whose lease is half gone before it is sent is renewed first, a send is cut short
(and retried) before the lease ends, and a stopping instance hands back what it did not send.
Lane order holds across instances because a claimed row stays ``pending``: the next row of its
lane is not at the head of the lane until the claimed one is done. SQLite has one instance, whose
rounds already run one at a time, so there the due rows are simply read, as before.

The module also holds what the command line does with the outbox (``frontdesk outbox``): list
the pending and failed rows (:func:`outbox_items`), make rows due now (:func:`retry_rows`) and
give one up (:func:`cancel_row`). A row another instance is sending right now (a live claim) is
left alone by both.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Integer,
    and_,
    bindparam,
    exists,
    func,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from frontdesk.channels.base import (
    Deferred,
    DeliveryError,
    DeliveryHook,
    Held,
    OutboxHandler,
    PermanentFailure,
    RoundPreload,
    TemporaryFailure,
    Unanswered,
)
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.notify import OUTBOX_CHANNEL, instance_id
from frontdesk.domain.conversations import iso
from frontdesk.domain.messages import OutboundMessage, Receipt
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Backoff, Store, store_unavailable
from frontdesk.storage.models import Conversation, Event, Message, Outbox, outbox_remote

if TYPE_CHECKING:
    from frontdesk.daemon.process.journal import StepAside

log = logging.getLogger(__name__)

Sender = Callable[[OutboundMessage], Awaitable[Receipt]]
"""A customer channel's send: rows of kind ``deliver`` go to ``senders[payload.channel]``."""


@dataclass(frozen=True)
class RetryPolicy:
    initial: timedelta = timedelta(seconds=30)
    maximum: timedelta = timedelta(hours=1)
    max_attempts: int = 12

    def delay(self, attempts: int, retry_after: float | None = None) -> timedelta:
        """Exponential backoff with ±10 % jitter; a remote Retry-After wins when longer."""
        base = min(self.initial * (2 ** max(0, attempts - 1)), self.maximum)
        jittered = base * random.uniform(0.9, 1.1)
        if retry_after is not None:
            jittered = max(jittered, timedelta(seconds=retry_after))
        return jittered


DEFAULT_LEASE = timedelta(minutes=2)
CANCELLED = "cancelled by "
"""How the reason of a row given up with ``frontdesk outbox cancel`` begins."""
_SPENT_LIMIT = 10_000
_AUDITED_IDS = 1000  # row ids an audit event of `outbox retry --all` names at most


def not_configured(channel: str) -> str:
    """Why a row for a customer channel that does not run here fails at once."""
    return (f"the {channel} channel is not configured here (`frontdesk check` names what it "
            "lacks), so this cannot be sent")


def head_of_lane() -> Any:
    """The condition "no earlier row of this row's lane is still pending", a lane being the rows
    of one kind for one conversation going to one channel. Each test is one probe of
    ``ix_outbox_lane`` (state, kind, conversation_id, channel, id). Rows without a conversation
    wait for nothing. A row an older version wrote has no channel: it waits for, and holds up,
    every earlier or later row of its kind and conversation, as that version would have."""
    earlier = aliased(Outbox)
    same = (earlier.state == "pending", earlier.kind == Outbox.kind,
            earlier.conversation_id == Outbox.conversation_id, earlier.id < Outbox.id)
    return and_(~exists().where(*same, earlier.channel == Outbox.channel),
                ~exists().where(*same, earlier.channel.is_(None)),
                or_(Outbox.channel.is_not(None), ~exists().where(*same)))


def _remotes() -> Any:
    """The remotes (``outbox.channel``) with pending rows, each found by one probe of
    ``ix_outbox_round`` (a skip scan: the least channel after the last one found), and None when
    a row an older version wrote (no channel) is pending."""
    first = (select(func.min(Outbox.channel).label("channel"))
             .where(Outbox.state == "pending").cte("remotes", recursive=True))
    later = aliased(Outbox)
    remotes = first.union_all(
        select(select(func.min(later.channel))
               .where(later.state == "pending", later.channel > first.c.channel)
               .scalar_subquery())
        .where(first.c.channel.is_not(None)))
    legacy = select(null()).where(exists().where(Outbox.state == "pending",
                                                 Outbox.channel.is_(None)))
    return union_all(select(remotes.c.channel).where(remotes.c.channel.is_not(None)), legacy)


def _head(channel: Any) -> Any:
    """One remote's due heads of lanes, in the order they go (urgency, then age); at most
    ``:per_remote`` of them."""
    # next_attempt_at is never NULL: the COALESCE only keeps the stores from taking the due rows
    # by ix_outbox_state_next_attempt_at (all of them, in a burst) and sorting them; read in
    # ix_outbox_round's order, the scan stops at the limit.
    due = func.coalesce(Outbox.next_attempt_at, Outbox.created_at) <= bindparam("now")
    return (select(Outbox.id, Outbox.urgency)
            .where(Outbox.state == "pending", channel, due, head_of_lane())
            .order_by(Outbox.urgency, Outbox.id)
            .limit(bindparam("per_remote", type_=Integer)))


_REMOTES = _remotes()
_REMOTE_HEAD = _head(Outbox.channel == bindparam("remote"))
_LEGACY_HEAD = _head(Outbox.channel.is_(None))


class OutboxWorker:
    batch_size = 100
    """Rows attempted in one round at most (``deliver_due``)."""
    claim_size = 100
    """PostgreSQL: rows claimed at a time (a round: they are sent together, so they are held
    from the other instances only while they go)."""
    sends_per_remote = 8
    """Rows sent to one remote (``outbox.channel``: email, slack, sms, a webhook receiver) at the
    same time, at most. The rows of one round are each the head of a different lane (one
    conversation's rows of one kind to one channel), so they never wait for each other."""
    round_per_remote = 32
    """Rows one round takes for one remote at most (see :meth:`_next_round`)."""

    def __init__(self, store: Store, *, senders: Mapping[str, Sender], clock: Clock,
                 metrics: Metrics, policy: RetryPolicy, poll: timedelta,
                 handlers: Mapping[str, OutboxHandler] | None = None,
                 hooks: Sequence[DeliveryHook] = (),
                 preloads: Sequence[RoundPreload] = (),
                 step_aside: StepAside | None = None,
                 lease: timedelta = DEFAULT_LEASE, instance: str | None = None) -> None:
        if lease <= timedelta(0):
            raise ValueError("the outbox lease must be longer than zero")
        self._step_aside = step_aside
        self._last_send = 0.0
        self._store = store
        self._senders = senders
        # By reference: the Slack desk and the scheduler register theirs after construction.
        self._handlers = handlers if handlers is not None else {}
        self._hooks = hooks
        self._preloads = preloads  # by reference, like the hooks
        self._clock = clock
        self._metrics = metrics
        self._policy = policy
        self._poll = poll.total_seconds()
        self._lease = lease
        self.instance = (instance or instance_id())[:64]
        """What ``outbox.claimed_by`` says for rows this worker claimed."""
        self._claims = store.dialect == "postgresql"  # several instances may share the store
        self._wakeup = asyncio.Event()
        self._stopping = False
        # Pulling rows forward when a remote answers again (see the module docstring): the
        # remotes known to answer since their last temporary failure, the rows this instance
        # pulled forward, and those of them that failed again (never pulled forward again).
        self._answering: set[str] = set()
        self._pulled: set[int] = set()
        self._spent: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()  # one delivery round at a time, or a row could go twice

    def kick(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def stop(self) -> None:
        """Finish the send in hand; everything else stays queued for the next start (rows this
        instance had claimed are handed back at once, for the other instances)."""
        self._stopping = True
        self._wakeup.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        # After a failure (the store away, or a bug) the next round comes after a growing pause,
        # or at once when something kicks (new work was committed: the store is back).
        backoff = Backoff("the outbox", log)
        abandoned = False  # a round cut short (the store went away mid-send) left rows claimed
        while not self._stopping:
            wait = self._poll
            try:
                if abandoned:
                    await self._reclaim_abandoned()
                    abandoned = False
                    backoff.succeeded()  # the store answers again (a round may take long)
                while True:
                    attempted = await self.deliver_due()
                    backoff.succeeded()  # a round worked: the store answers (again)
                    if not attempted or self._stopping:
                        break
                    await asyncio.sleep(0)  # the next in each lane is due now: go on at once
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                abandoned = self._claims
                wait = max(wait, backoff.failed(exc))
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def deliver_due(self) -> int:
        """Send a round of due rows (see :meth:`_next_round`; each conversation's order kept);
        return how many were attempted."""
        async with self._round:
            if not self._claims:
                return await self._send_rows(await self._due_rows(self.batch_size))
            attempted = 0
            while attempted < self.batch_size and not self._stopping:
                claimed = time.monotonic()  # the lease runs from before the claim, to be safe
                rows = await self._claim(min(self.claim_size, self.batch_size - attempted))
                if not rows:
                    break
                attempted += await self._send_claimed(rows, claimed)
            return attempted

    @staticmethod
    def _due(now: datetime) -> tuple[Any, ...]:
        return Outbox.state == "pending", Outbox.next_attempt_at <= now, head_of_lane()

    async def _next_round(self, s: AsyncSession, now: datetime, limit: int) -> list[int]:
        """The ids of the due rows a round takes, in the order they go: a person's words first
        (a staff reply, not an automatic message), then each remote's oldest in turn, at most
        :attr:`round_per_remote` for one remote: a backlog at one (a burst's thousands of Slack
        cards) never holds up another (the customers' acknowledgements and replies).

        Each remote's due rows are read in that order from ``ix_outbox_round``, only as many as
        the round can take, so a round costs the same with ten rows waiting or ten thousand
        (ranking every due row took 24 ms a round with 9,000 waiting)."""
        heads: list[tuple[int, int, int]] = []  # (urgency, place, id)
        for remote in (await s.execute(_REMOTES)).scalars().all():
            query = _REMOTE_HEAD if remote is not None else _LEGACY_HEAD
            found = (await s.execute(query, {"remote": remote, "now": now,
                                             "per_remote": self.round_per_remote})).all()
            heads += [(urgency, place, row_id)
                      for place, (row_id, urgency) in enumerate(found, start=1)]
        return [row_id for _urgency, _place, row_id in sorted(heads)[:limit]]

    async def _due_rows(self, limit: int) -> list[Outbox]:
        """SQLite: the due rows of a round, read (this process is the only sender)."""
        async with self._store.reader() as s:
            ids = await self._next_round(s, self._clock(), limit)
            rows = {r.id: r for r in (await s.execute(
                select(Outbox).where(Outbox.id.in_(ids)))).scalars()}
        return [rows[i] for i in ids if i in rows]

    async def _claim(self, limit: int) -> list[Outbox]:
        """PostgreSQL: claim up to ``limit`` due rows for this instance, for one lease. Rows
        another instance is claiming at this moment are skipped, not waited for; a claimed row
        is pending but not due, so it is neither claimed again nor passed in its lane."""
        now = self._clock()
        async with self._store.session() as s:
            # Planned for the table as it is now: asyncpg prepares the round's query once per
            # connection, and after five runs PostgreSQL keeps one generic plan for it; one
            # made while the outbox was nearly empty took 8 s a round once thousands of rows
            # waited (benchmarks/e2e_latency.py: 17 cards a second instead of 42).
            await s.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            ids = await self._next_round(s, now, limit)
            if not ids:
                return []
            # Locked first, then claimed: two plain statements. As one UPDATE ... WHERE id IN
            # (SELECT ... FOR UPDATE), PostgreSQL cannot turn the locking subquery into a join
            # and may run it again for every due row of the table.
            locked = list((await s.execute(
                select(Outbox.id).where(Outbox.id.in_(ids), *self._due(now))
                .with_for_update(skip_locked=True, of=Outbox))).scalars())
            if not locked:
                return []
            rows = {r.id: r for r in (await s.execute(
                update(Outbox).where(Outbox.id.in_(locked))
                .values(next_attempt_at=now + self._lease, claimed_by=self.instance)
                .returning(Outbox)
                .execution_options(synchronize_session=False)
            )).scalars()}
        return [rows[i] for i in ids if i in rows]

    async def _renew(self, rows: Sequence[Outbox]) -> set[int]:
        """Push the lease of rows this instance still holds; returns their ids (a row whose
        lease ran out and was taken by another instance is no longer ours)."""
        now = self._clock()
        async with self._store.session() as s:
            held = (await s.execute(
                update(Outbox)
                .where(Outbox.id.in_([r.id for r in rows]), Outbox.state == "pending",
                       Outbox.claimed_by == self.instance)
                .values(next_attempt_at=now + self._lease)
                .returning(Outbox.id)
                .execution_options(synchronize_session=False)
            )).scalars().all()
        return set(held)

    async def _release(self, rows: Sequence[Outbox]) -> None:
        """Hand back claimed rows this instance will not send now (it is stopping): due at once,
        and every instance is told so."""
        if not rows:
            return
        now = self._clock()
        try:
            async with self._store.session() as s:
                await s.execute(
                    update(Outbox)
                    .where(Outbox.id.in_([r.id for r in rows]), Outbox.state == "pending",
                           Outbox.claimed_by == self.instance)
                    .values(next_attempt_at=now, claimed_by=None)
                    .execution_options(synchronize_session=False))
                await s.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))
        except Exception as exc:  # noqa: BLE001 - the lease hands them back anyway
            log.warning("could not hand back %d claimed outbox row(s) (%s); they are due again "
                        "when their lease ends", len(rows), exc)

    async def _reclaim_abandoned(self) -> None:
        """After a round that failed part-way: the rows this instance claimed and never marked
        (none is in hand: one round at a time) are due again now, not when their lease ends."""
        async with self._round, self._store.session() as s:
            await s.execute(
                update(Outbox)
                .where(Outbox.state == "pending", Outbox.claimed_by == self.instance)
                .values(next_attempt_at=self._clock(), claimed_by=None)
                .execution_options(synchronize_session=False))

    async def _send_rows(self, rows: Sequence[Outbox]) -> int:
        """SQLite: send a round of due rows together and record the outcomes in one
        transaction."""
        if self._step_aside is not None:  # inbound messages first, then their answers
            await self._step_aside.wait(self._last_send, lambda: self._stopping)
        if self._stopping:
            return 0
        began = time.monotonic()
        attempts = await self._attempt_all(rows, deadline=None)
        await self._record(attempts)
        self._last_send = time.monotonic() - began
        return len(attempts)

    async def _send_claimed(self, rows: list[Outbox], claimed: float) -> int:
        """PostgreSQL: send claimed rows together, none past the claim's lease, and record the
        outcomes; hand back what is left when stopping. ``claimed``: when the claim was taken
        (``time.monotonic()``)."""
        if self._step_aside is not None:
            await self._step_aside.wait(self._last_send, lambda: self._stopping)
        lease = self._lease.total_seconds()
        if lease - (time.monotonic() - claimed) < lease / 2:  # renew while the claim surely holds
            claimed = time.monotonic()
            held = await self._renew(rows)
            lost = [r.id for r in rows if r.id not in held]
            if lost:
                log.warning("outbox row(s) %s: the claim ran out before they were sent; left to "
                            "the instance that holds them now", lost)
            rows = [r for r in rows if r.id in held]
        if self._stopping:
            await self._release(rows)
            return 0
        began = time.monotonic()
        attempts = await self._attempt_all(rows, deadline=claimed + lease - min(5.0, lease / 10))
        await self._record(attempts)
        await self._release([r for r in rows if r.id not in {a.row.id for a in attempts}])
        self._last_send = time.monotonic() - began
        return len(attempts)

    async def _attempt_all(self, rows: Sequence[Outbox],
                           deadline: float | None) -> list[_Attempt]:
        """Send ``rows`` at the same time, at most :attr:`sends_per_remote` to one remote; each
        row of a round is the head of its own lane, so none waits for another. A row still
        waiting for its turn when the worker stops is not sent (it stays queued). ``deadline``
        (``time.monotonic()``): a claim's lease; a send not done by then is cut short."""
        turns: dict[str, asyncio.Semaphore] = {}

        async def attempt(row: Outbox) -> _Attempt | None:
            target = _Target.of(row)
            turn = turns.setdefault(target.remote, asyncio.Semaphore(self.sends_per_remote))
            async with turn:
                if self._stopping:
                    return None
                timeout = None if deadline is None else deadline - time.monotonic()
                return await self._attempt(row, target, timeout)

        done = await asyncio.gather(*(attempt(r) for r in rows))
        return [a for a in done if a is not None]

    async def _attempt(self, row: Outbox, target: _Target, timeout: float | None) -> _Attempt:
        """One send; its outcome (a receipt or a delivery error) to be recorded. A store that
        went away (a handler reads it) is kept apart: the row is then left as it is."""
        try:
            return _Attempt(row, target, receipt=await self._send_within(row, timeout))
        except DeliveryError as exc:
            return _Attempt(row, target, error=exc)
        except Exception as exc:  # a sender bug is retried, not fatal
            if store_unavailable(exc) and not await self._store.ping():
                return _Attempt(row, target, store_away=exc)
            # One line with the reason per try; the traceback, for whoever fixes it, at debug.
            log.error("sending outbox #%d crashed: %s: %s", row.id, type(exc).__name__, exc)
            log.debug("sending outbox #%d crashed", row.id, exc_info=True)
            return _Attempt(row, target, error=TemporaryFailure(f"internal error: {exc}"))

    async def _record(self, attempts: Sequence[_Attempt]) -> None:
        """Mark the rows sent or failed, all in one transaction. If that transaction fails for
        a reason of one row's (a hook's bug), each is recorded in a transaction of its own, so
        one row's fault stays its own. A send that found the store away is raised afterwards:
        the round is retried when the store is back."""
        # In the order the rows were written: what an earlier row's mark records (a Slack
        # root's ts) is then known to the hooks of the later ones (a line for that thread).
        outcomes = sorted((a for a in attempts if a.store_away is None), key=lambda a: a.row.id)
        after: list[Callable[[], None]] = []
        try:
            async with self._store.session() as s:
                loaded = await self._load(s, outcomes)  # held: the session's map is weak
                # The marks (and what the hooks add) are written together at the commit, not
                # flushed piecemeal before each hook's query: no mark depends on another.
                with s.no_autoflush:
                    for a in outcomes:
                        await self._mark(s, a, after)
                del loaded
        except Exception as exc:
            if store_unavailable(exc) or len(outcomes) == 1:
                raise
            log.warning("recording %d sends together failed (%s: %s); recording them one by "
                        "one", len(outcomes), type(exc).__name__, exc)
            after = []
            for a in outcomes:
                async with self._store.session() as s:
                    loaded = await self._load(s, [a])
                    await self._mark(s, a, after)
                    del loaded
        for step in after:
            step()
        for remote in {a.target.remote for a in outcomes if a.receipt is not None}:
            if remote not in self._answering:
                await self._pull_forward(remote, self._clock())
        away = [a.store_away for a in attempts if a.store_away is not None]
        if away:
            raise away[0]

    async def _load(self, s: AsyncSession, attempts: Sequence[_Attempt]) -> list[Any]:
        """The rows as stored now (locked, in id order, on PostgreSQL), their messages and
        conversations, in three queries, and what the services' preloads read for them:
        :meth:`_current`, the marking and the delivery hooks then find them in the session, as
        long as the caller holds the returned objects (the session's identity map holds them
        weakly: dropped, each was read again, one query a row)."""
        query = (select(Outbox).where(Outbox.id.in_([a.row.id for a in attempts]))
                 .order_by(Outbox.id).execution_options(populate_existing=True))
        if self._claims:
            query = query.with_for_update()
        loaded: list[Any] = list((await s.execute(query)).scalars())
        messages = [a.row.message_id for a in attempts
                    if a.row.kind == "deliver" and a.row.message_id is not None]
        if messages:
            loaded += (await s.execute(select(Message).where(Message.id.in_(messages)))).scalars()
        conversations = {a.row.conversation_id for a in attempts
                         if a.row.kind == "deliver" and a.row.conversation_id is not None}
        if conversations:
            loaded += (await s.execute(select(Conversation).where(
                Conversation.id.in_(conversations)))).scalars()
        for preload in self._preloads:  # what the hooks and the receipts' steps look up
            loaded += await preload(s, [a.row for a in attempts])
        return loaded

    async def _mark(self, s: AsyncSession, a: _Attempt, after: list[Callable[[], None]]) -> None:
        if a.receipt is not None:
            await self._sent(s, a.row, a.target, a.receipt, after)
        elif a.error is not None:
            await self._failed(s, a.row, a.target, a.error, after)

    async def _send(self, row: Outbox) -> Receipt:
        if row.kind != "deliver":
            handler = self._handlers.get(row.kind)
            if handler is None:
                raise TemporaryFailure(f"nothing in this daemon handles {row.kind!r} work")
            return await handler(row)
        out = OutboundMessage(**row.payload)
        sender = self._senders.get(out.channel)
        if sender is None:
            raise PermanentFailure(not_configured(out.channel))
        return await sender(out)

    async def _send_within(self, row: Outbox, timeout: float | None) -> Receipt:
        """Send, but (when the row is claimed) not past the claim's lease: a send cut short is
        a temporary failure, retried like one."""
        if timeout is None:
            return await self._send(row)
        limit = asyncio.timeout(max(0.1, timeout))
        try:
            async with limit:
                return await self._send(row)
        except TimeoutError:
            if not limit.expired():
                raise  # the sender's own timeout, not the lease's
            raise TemporaryFailure(
                f"the send took longer than {timeout:.0f}s, the rest of the claim's lease "
                "(daemon.outbox_lease)") from None

    async def _current(self, s: AsyncSession, row: Outbox) -> Outbox | None:
        """The row as stored now, locked; None (and a log line) when this instance no longer
        holds it: another instance finished it, or holds it now, after this one's claim ran out
        (this one's send went ahead regardless: a repeat the far side's idempotency key is for)."""
        current = await s.get_one(Outbox, row.id)  # loaded (and locked) by _load
        if current.state != "pending":
            log.warning("outbox #%d was already %s by another instance (this one's claim had run "
                        "out)", row.id, "sent" if current.state == "done" else current.state)
            return None
        if self._claims and current.claimed_by not in (self.instance, None) \
                and current.next_attempt_at > self._clock():
            log.warning("outbox #%d is held by %s now (this one's claim had run out)",
                        row.id, current.claimed_by)
            return None
        return current

    async def _sent(self, s: AsyncSession, row: Outbox, target: _Target, receipt: Receipt,
                    after: list[Callable[[], None]]) -> None:
        now = self._clock()
        deliver = row.kind == "deliver"
        current = await self._current(s, row)
        if current is None:
            if self._claims:
                # Sent by this instance while another holds the row: say it is done, so the
                # other does not send it again, but run nothing twice.
                await s.execute(update(Outbox).where(Outbox.id == row.id,
                                                     Outbox.state == "pending")
                                .values(state="done", done_at=now, last_error=None))
            return
        current.state, current.done_at = "done", now
        current.attempts += 1
        current.last_error = None
        if deliver and row.message_id is not None:
            message = await s.get_one(Message, row.message_id)
            message.delivery_status, message.sent_at = "sent", now
            message.failure_reason = None
        if deliver:
            s.add(Event(kind="message_sent", conversation_id=row.conversation_id,
                        message_id=row.message_id, created_at=now,
                        data={"channel": target.channel, "to": target.to_address,
                              "remote_id": receipt.remote_id, "attempt": current.attempts}))
        if receipt.record is not None:
            await receipt.record(s)
        for hook in self._hooks:
            await hook(s, current, None)

        def done() -> None:
            if deliver:
                self._metrics.messages_out.labels(target.channel).inc()
            log.info("sent outbox #%d (%s %s to %s)", row.id, row.kind, target.channel,
                     target.to_address)
            self._pulled.discard(row.id)
            self._spent.discard(row.id)
        after.append(done)

    async def _pull_forward(self, remote: str, now: datetime) -> None:
        """``remote`` answered (the first success since it failed, or since this worker
        started): its rows waiting in backoff after a failed attempt are due now. Rows another
        instance holds are left alone; a row pulled forward once and failed again is not pulled
        forward again (its own backoff stands)."""
        waiting = select(Outbox.id).where(
            Outbox.state == "pending", Outbox.channel == remote, Outbox.attempts > 0,
            Outbox.claimed_by.is_(None), Outbox.next_attempt_at > now)
        if self._spent:
            waiting = waiting.where(Outbox.id.not_in(sorted(self._spent)))
        if self._claims:
            waiting = waiting.with_for_update(skip_locked=True)  # never wait on another's lock
        try:
            async with self._store.session() as s:
                pulled = list((await s.execute(
                    update(Outbox).where(Outbox.id.in_(waiting.scalar_subquery()))
                    .values(next_attempt_at=now).returning(Outbox.id)
                    .execution_options(synchronize_session=False))).scalars())
                if pulled and self._claims:
                    await s.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))
        except Exception as exc:  # noqa: BLE001 - the rows still go after their backoff
            log.warning("could not make the rows waiting for %s due now (%s); they go after "
                        "their backoff", remote, exc)
            return
        self._answering.add(remote)
        if pulled:
            self._pulled.update(pulled)
            log.info("%s answers again: %d outbox row(s) waiting in backoff are due now",
                     remote, len(pulled))
            self.kick()

    async def _failed(self, s: AsyncSession, row: Outbox, target: _Target, exc: DeliveryError,
                      after: list[Callable[[], None]]) -> None:
        now = self._clock()
        if isinstance(exc, Deferred):  # a rate limit: wait, without counting an attempt
            current = await self._current(s, row)
            if current is None:
                return
            current.next_attempt_at = now + timedelta(seconds=max(0.0, exc.retry_after or 0))
            first_hold = isinstance(exc, Held) and current.last_error != exc.reason
            current.last_error = exc.reason
            current.claimed_by = None
            if first_hold:
                s.add(Event(kind="reply_held", conversation_id=row.conversation_id,
                            message_id=row.message_id, created_at=now,
                            data={"channel": target.channel, "reason": exc.reason}))
                for hook in self._hooks:
                    await hook(s, current, exc)
            after.append(lambda: log.debug("outbox #%d (%s) deferred %.1fs: %s", row.id,
                                           row.kind, exc.retry_after or 0, exc.reason))
            return
        permanent = isinstance(exc, PermanentFailure)
        if not permanent:  # the remote did not answer as it should: not known to answer now
            self._answering.discard(target.remote)
            if row.id in self._pulled:
                self._spent.add(row.id)
                if len(self._spent) > _SPENT_LIMIT:  # rows finished elsewhere are never removed
                    self._spent.clear()
        current = await self._current(s, row)
        if current is None:
            return
        current.attempts += 1
        current.last_error = exc.reason
        current.claimed_by = None
        give_up = permanent or (current.attempts >= self._policy.max_attempts
                                and not isinstance(exc, Unanswered))
        if give_up:
            current.state, current.done_at = "failed", now
            if row.kind == "deliver" and row.message_id is not None:
                message = await s.get_one(Message, row.message_id)
                message.delivery_status = "failed"
                message.failure_reason = exc.reason
            s.add(Event(kind="delivery_failed", conversation_id=row.conversation_id,
                        message_id=row.message_id, created_at=now,
                        data={"kind": row.kind, "channel": target.channel,
                              "to": target.to_address, "reason": exc.reason,
                              "attempts": current.attempts}))
            for hook in self._hooks:
                await hook(s, current, exc)
        else:
            current.next_attempt_at = now + self._policy.delay(current.attempts,
                                                               exc.retry_after)
        attempts, next_at = current.attempts, current.next_attempt_at

        def done() -> None:
            self._metrics.delivery_failures.labels(
                target.channel, "permanent" if give_up else "temporary").inc()
            if give_up:
                self._pulled.discard(row.id)
                self._spent.discard(row.id)
                log.warning("gave up on outbox #%d (%s %s to %s) after %d attempt(s): %s",
                            row.id, row.kind, target.channel, target.to_address, attempts,
                            exc.reason)
            else:
                log.warning("outbox #%d (%s %s to %s) failed, retry at %s: %s", row.id,
                            row.kind, target.channel, target.to_address,
                            next_at.isoformat(timespec="seconds"), exc.reason)
        after.append(done)


@dataclass(frozen=True)
class _Attempt:
    """One send's outcome, to be recorded: a receipt, a delivery error, or the store away."""

    row: Outbox
    target: _Target
    receipt: Receipt | None = None
    error: DeliveryError | None = None
    store_away: Exception | None = None


@dataclass(frozen=True)
class _Target:
    """Where a row goes, for logs, events and metrics; ``remote`` is ``outbox.channel``."""

    channel: str
    to_address: str
    remote: str

    @classmethod
    def of(cls, row: Outbox) -> _Target:
        payload = row.payload or {}
        return cls(str(payload.get("channel", row.kind)),
                   str(payload.get("to_address", payload.get("target", ""))),
                   row.channel or outbox_remote(row.kind, payload))


# --- the command line's view and actions (``frontdesk outbox``) --------------------------------

class OutboxError(LookupError):
    """An outbox row that cannot be found or acted on; the text is one line for people."""


@dataclass(frozen=True)
class Retried:
    """What :func:`retry_rows` did: rows made due now, failed rows queued again, and rows left
    alone because an instance is sending them at this moment."""

    due: list[int]
    requeued: list[int]
    busy: list[int]


def _sending(row: Outbox, now: datetime) -> bool:
    """Claimed by an instance whose lease has not run out: it is being sent right now."""
    return row.state == "pending" and row.claimed_by is not None and row.next_attempt_at > now


def outbox_item(row: Outbox, now: datetime) -> dict[str, Any]:
    """One row as ``frontdesk outbox --json`` shows it."""
    target = _Target.of(row)
    pending = row.state == "pending"
    return {
        "id": row.id, "kind": row.kind, "channel": target.remote,
        "conversation": f"FD-{row.conversation_id}" if row.conversation_id else None,
        "message_id": row.message_id, "target": target.to_address or None,
        "state": row.state, "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if pending else None,
        "sending_by": row.claimed_by if _sending(row, now) else None,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "failed_at": iso(row.done_at) if row.state == "failed" else None,
    }


async def outbox_items(session: AsyncSession, *, failed_only: bool, limit: int,
                       now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` pending and failed rows (only failed ones with ``failed_only``),
    oldest first, and how many there are in all. Reads only."""
    states = ("failed",) if failed_only else ("pending", "failed")
    total = (await session.execute(select(func.count()).select_from(Outbox)
                                   .where(Outbox.state.in_(states)))).scalar_one()
    rows = (await session.execute(select(Outbox).where(Outbox.state.in_(states))
                                  .order_by(Outbox.id.desc()).limit(limit))).scalars().all()
    return [outbox_item(r, now) for r in reversed(rows)], total


async def _row(session: AsyncSession, row_id: int) -> Outbox:
    row = await session.get(Outbox, row_id, with_for_update=True)  # PostgreSQL: held till commit
    if row is None:
        raise OutboxError(f"no outbox row #{row_id} (`frontdesk outbox` lists them)")
    return row


async def _wake_instances(session: AsyncSession) -> None:
    """PostgreSQL: every instance's outbox worker looks for due work when this commits."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))


async def retry_rows(store: Store, row_id: int | None, *, actor: str, now: datetime) -> Retried:
    """Make pending rows due now (their backoff cleared) and queue failed ones again with their
    attempts reset (their messages show ``queued`` again): the one row ``row_id``, or with None
    every pending row and every failed one not cancelled by a person. A row an instance is
    sending at this moment is left to it. Written to the audit as ``outbox_retried``."""
    async with store.session() as s:
        row: Outbox | None = None
        if row_id is not None:
            row = await _row(s, row_id)
            if row.state == "done":
                raise OutboxError(f"outbox #{row_id} was sent at {iso(row.done_at)}; there is "
                                  "nothing to retry")
            if _sending(row, now):
                return Retried([], [], [row_id])
            scope: tuple[Any, ...] = (Outbox.id == row_id,)
            requeue: tuple[Any, ...] = scope
        else:
            scope = ()
            requeue = (or_(Outbox.last_error.is_(None),
                           Outbox.last_error.not_like(f"{CANCELLED}%")),)
        not_sending = or_(Outbox.claimed_by.is_(None), Outbox.next_attempt_at <= now)
        due = list((await s.execute(
            update(Outbox).where(*scope, Outbox.state == "pending", not_sending)
            .values(next_attempt_at=now).returning(Outbox.id)
            .execution_options(synchronize_session=False))).scalars())
        # Their messages show "queued" again (first, while the rows still say failed).
        await s.execute(
            update(Message).where(Message.id.in_(
                select(Outbox.message_id).where(*requeue, Outbox.state == "failed",
                                                Outbox.kind == "deliver",
                                                Outbox.message_id.is_not(None))))
            .values(delivery_status="queued", failure_reason=None)
            .execution_options(synchronize_session=False))
        requeued = list((await s.execute(
            update(Outbox).where(*requeue, Outbox.state == "failed")
            .values(state="pending", attempts=0, next_attempt_at=now, done_at=None,
                    claimed_by=None)
            .returning(Outbox.id)
            .execution_options(synchronize_session=False))).scalars())
        busy = [] if row_id is not None else list((await s.execute(
            select(Outbox.id).where(Outbox.state == "pending", Outbox.claimed_by.is_not(None),
                                    Outbox.next_attempt_at > now))).scalars())
        done = Retried(sorted(due), sorted(requeued), sorted(busy))
        if done.due or done.requeued:
            s.add(Event(kind="outbox_retried", actor=actor, created_at=now,
                        conversation_id=row.conversation_id if row else None,
                        message_id=row.message_id if row else None,
                        data={"due": done.due[:_AUDITED_IDS],
                              "requeued": done.requeued[:_AUDITED_IDS],
                              "due_count": len(done.due),
                              "requeued_count": len(done.requeued)}))
            await _wake_instances(s)
    return done


async def cancel_row(store: Store, row_id: int, *, actor: str, now: datetime) -> dict[str, Any]:
    """Give up on a pending row: it ends ``failed`` with the reason "cancelled by ACTOR", its
    message (a reply, an acknowledgement) shows that reason, the audit has ``outbox_cancelled``,
    and the next row of its lane may go. Returns the row as :func:`outbox_item` shows it."""
    async with store.session() as s:
        row = await _row(s, row_id)
        if row.state == "done":
            raise OutboxError(f"outbox #{row_id} was already sent at {iso(row.done_at)}; it "
                              "cannot be cancelled")
        if row.state == "failed":
            raise OutboxError(f"outbox #{row_id} has already failed: {row.last_error}")
        if _sending(row, now):
            raise OutboxError(f"outbox #{row_id} is being sent right now (by {row.claimed_by}); "
                              "see `frontdesk outbox` in a moment")
        reason = f"{CANCELLED}{actor}"
        target = _Target.of(row)
        row.state, row.done_at, row.last_error, row.claimed_by = "failed", now, reason, None
        if row.kind == "deliver" and row.message_id is not None:
            message = await s.get_one(Message, row.message_id)
            message.delivery_status, message.failure_reason = "failed", reason
        conversation = (await s.get(Conversation, row.conversation_id)
                        if row.conversation_id is not None else None)
        s.add(Event(kind="outbox_cancelled", actor=actor, conversation_id=row.conversation_id,
                    contact_id=conversation.contact_id if conversation else None,
                    message_id=row.message_id, created_at=now,
                    data={"outbox_id": row.id, "kind": row.kind, "channel": target.remote,
                          "to": target.to_address, "attempts": row.attempts,
                          "reason": reason}))
        await _wake_instances(s)  # the next row of its lane may go now
        return outbox_item(row, now)
