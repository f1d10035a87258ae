"""The outbox worker: delivers what the store says must be sent, with retry and backoff.

Rows are written in the same transaction as whatever caused them (a staff reply, later an
acknowledgement or a Slack post). The worker sends each due row with the channel's sender, then
marks it done; a crash between the two can only repeat a send, and every send carries a stable
id (an email's Message-ID) so the far side can tell. Order within a conversation is kept: a row
waits while an earlier row of its conversation is still pending.

Several instances on one PostgreSQL share the outbox. An instance sends a row only after claiming
it: a short transaction picks a few due head-of-lane rows with ``FOR UPDATE SKIP LOCKED`` (rows
another instance is claiming at that moment are passed over, never waited for) and pushes their
``next_attempt_at`` ahead by the lease (``daemon.outbox_lease``) with ``claimed_by`` set to this
instance, so they are not due for anyone else while it sends. Marking a row sent or failed ends
the claim. A claim whose instance died simply falls due again when the lease runs out, and another
instance sends the row. A claim never outlives its lease while its instance works: the rows still
waiting in a claimed batch have their lease renewed once half of it is gone, a send is cut short
(and retried) before the lease ends, and a stopping instance hands back what it did not send.
Lane order holds across instances because a claimed row stays ``pending``: the next row of its
lane is not at the head of the lane until the claimed one is done. SQLite has one instance, whose
rounds already run one at a time, so there the due rows are simply read, as before.
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

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from frontdesk.channels.base import (
    Deferred,
    DeliveryError,
    DeliveryHook,
    OutboxHandler,
    PermanentFailure,
    TemporaryFailure,
)
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.notify import OUTBOX_CHANNEL, instance_id
from frontdesk.domain.messages import OutboundMessage, Receipt
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Backoff, Store, store_unavailable
from frontdesk.storage.models import Event, Message, Outbox

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


class OutboxWorker:
    batch_size = 100
    """Rows attempted in one round at most (``deliver_due``)."""
    claim_size = 10
    """PostgreSQL: rows claimed at a time; a small batch, so the rows of one instance's claim are
    not held back from the others while it works through them one by one."""

    def __init__(self, store: Store, *, senders: Mapping[str, Sender], clock: Clock,
                 metrics: Metrics, policy: RetryPolicy, poll: timedelta,
                 handlers: Mapping[str, OutboxHandler] | None = None,
                 hooks: Sequence[DeliveryHook] = (),
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
        """Send every due row (in id order, keeping each conversation's order); return how many
        were attempted."""
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
        # Order is kept per lane, a lane being a kind of work for one conversation: a row is
        # taken only when it is due and no earlier row of its lane is still pending. So a Slack
        # post that waits does not hold back the customer's reply, a second reply waits for the
        # first, and a long backlog in one lane never hides due work in another.
        earlier = aliased(Outbox)
        head_of_lane = ~exists().where(
            earlier.state == "pending", earlier.kind == Outbox.kind,
            earlier.conversation_id == Outbox.conversation_id, earlier.id < Outbox.id)
        return Outbox.state == "pending", Outbox.next_attempt_at <= now, head_of_lane

    async def _due_rows(self, limit: int) -> list[Outbox]:
        """SQLite: the due rows, read (this process is the only sender)."""
        async with self._store.reader() as s:
            return list((await s.execute(
                select(Outbox).where(*self._due(self._clock()))
                .order_by(Outbox.id).limit(limit)
            )).scalars().all())

    async def _claim(self, limit: int) -> list[Outbox]:
        """PostgreSQL: claim up to ``limit`` due rows for this instance, for one lease. Rows
        another instance is claiming at this moment are skipped, not waited for; a claimed row
        is pending but not due, so it is neither claimed again nor passed in its lane."""
        now = self._clock()
        due = (select(Outbox.id).where(*self._due(now)).order_by(Outbox.id).limit(limit)
               .with_for_update(skip_locked=True, of=Outbox))
        async with self._store.session() as s:
            rows = (await s.execute(
                update(Outbox)
                .where(Outbox.id.in_(due.scalar_subquery()), Outbox.state == "pending",
                       Outbox.next_attempt_at <= now)
                .values(next_attempt_at=now + self._lease, claimed_by=self.instance)
                .returning(Outbox)
                .execution_options(synchronize_session=False)
            )).scalars().all()
        return sorted(rows, key=lambda r: r.id)

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
        attempted = 0
        for row in rows:
            if self._step_aside is not None:  # inbound messages first, then their answers
                await self._step_aside.wait(self._last_send, lambda: self._stopping)
            if self._stopping:
                break
            attempted += 1
            began = time.monotonic()
            await self._deliver(row)
            self._last_send = time.monotonic() - began
        return attempted

    async def _send_claimed(self, rows: list[Outbox], claimed: float) -> int:
        """Send claimed rows in order, keeping the claim alive; hand back what is left when
        stopping. ``claimed``: when the claim was taken (``time.monotonic()``)."""
        lease = self._lease.total_seconds()
        margin = min(5.0, lease / 10)
        attempted = 0
        pending = list(rows)
        while pending:
            if self._step_aside is not None:
                await self._step_aside.wait(self._last_send, lambda: self._stopping)
            if self._stopping:
                await self._release(pending)
                break
            left = lease - (time.monotonic() - claimed)
            if left < lease / 2:  # renew the rest of the batch while the claim surely holds
                renewed_at = time.monotonic()
                held = await self._renew(pending)
                lost = [r.id for r in pending if r.id not in held]
                if lost:
                    log.warning("outbox row(s) %s: the claim ran out before they were sent; "
                                "left to the instance that holds them now", lost)
                pending = [r for r in pending if r.id in held]
                claimed, left = renewed_at, lease
                continue
            row = pending.pop(0)
            attempted += 1
            began = time.monotonic()
            await self._deliver(row, timeout=left - margin)
            self._last_send = time.monotonic() - began
        return attempted

    async def _send(self, row: Outbox) -> Receipt:
        if row.kind != "deliver":
            handler = self._handlers.get(row.kind)
            if handler is None:
                raise TemporaryFailure(f"nothing in this daemon handles {row.kind!r} work")
            return await handler(row)
        out = OutboundMessage(**row.payload)
        sender = self._senders.get(out.channel)
        if sender is None:
            raise TemporaryFailure(f"the {out.channel} channel is not enabled")
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

    async def _deliver(self, row: Outbox, timeout: float | None = None) -> bool:
        target = _Target.of(row)
        try:
            receipt = await self._send_within(row, timeout)
        except DeliveryError as exc:
            await self._failed(row, target, exc)
            return False
        except Exception as exc:  # a sender bug is retried, not fatal
            if store_unavailable(exc) and not await self._store.ping():
                raise  # a handler found the store away: so would marking the row; retry later
            log.exception("sending outbox #%d crashed", row.id)
            await self._failed(row, target, TemporaryFailure(f"internal error: {exc}"))
            return False
        await self._sent(row, target, receipt)
        return True

    async def _current(self, s: AsyncSession, row: Outbox) -> Outbox | None:
        """The row as stored now, locked; None (and a log line) when this instance no longer
        holds it: another instance finished it, or holds it now, after this one's claim ran out
        (this one's send went ahead regardless: a repeat the far side's idempotency key is for)."""
        current = await s.get_one(Outbox, row.id, with_for_update=True if self._claims else None,
                                  populate_existing=True)
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

    async def _sent(self, row: Outbox, target: _Target, receipt: Receipt) -> None:
        now = self._clock()
        deliver = row.kind == "deliver"
        async with self._store.session() as s:
            current = await self._current(s, row)
            if current is None:
                if self._claims:
                    # Sent by this instance while another holds the row: say it is done, so
                    # the other does not send it again, but run nothing twice.
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
            for hook in self._hooks:
                await hook(s, current, None)
        if deliver:
            self._metrics.messages_out.labels(target.channel).inc()
        log.info("sent outbox #%d (%s %s to %s)", row.id, row.kind, target.channel,
                 target.to_address)

    async def _failed(self, row: Outbox, target: _Target, exc: DeliveryError) -> None:
        now = self._clock()
        if isinstance(exc, Deferred):  # a rate limit: wait, without counting an attempt
            async with self._store.session() as s:
                current = await self._current(s, row)
                if current is None:
                    return
                current.next_attempt_at = now + timedelta(seconds=max(0.0, exc.retry_after or 0))
                current.last_error = exc.reason
                current.claimed_by = None
            log.debug("outbox #%d (%s) deferred %.1fs: %s", row.id, row.kind,
                      exc.retry_after or 0, exc.reason)
            return
        permanent = isinstance(exc, PermanentFailure)
        async with self._store.session() as s:
            current = await self._current(s, row)
            if current is None:
                return
            current.attempts += 1
            current.last_error = exc.reason
            current.claimed_by = None
            give_up = permanent or current.attempts >= self._policy.max_attempts
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
        self._metrics.delivery_failures.labels(
            target.channel, "permanent" if give_up else "temporary").inc()
        if give_up:
            log.warning("gave up on outbox #%d (%s %s to %s) after %d attempt(s): %s",
                        row.id, row.kind, target.channel, target.to_address, current.attempts,
                        exc.reason)
        else:
            log.info("outbox #%d (%s %s to %s) failed, retry at %s: %s", row.id, row.kind,
                     target.channel, target.to_address,
                     current.next_attempt_at.isoformat(timespec="seconds"), exc.reason)


@dataclass(frozen=True)
class _Target:
    """Where a row goes, for logs, events and metrics."""

    channel: str
    to_address: str

    @classmethod
    def of(cls, row: Outbox) -> _Target:
        payload = row.payload or {}
        return cls(str(payload.get("channel", row.kind)),
                   str(payload.get("to_address", payload.get("target", ""))))
