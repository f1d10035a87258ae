"""The outbox worker: delivers what the store says must be sent, with retry and backoff.

Rows are written in the same transaction as whatever caused them (a staff reply, later an
acknowledgement or a Slack post). The worker sends each due row with the channel's sender, then
marks it done; a crash between the two can only repeat a send, and every send carries a stable
id (an email's Message-ID) so the far side can tell. Order within a conversation is kept: a row
waits while an earlier row of its conversation is still pending.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from frontdesk.channels.base import (
    Deferred,
    DeliveryError,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    TemporaryFailure,
)
from frontdesk.storage.db import Store
from frontdesk.storage.models import Event, Message, Outbox

from .metrics import Metrics

if TYPE_CHECKING:
    from .ingest import StepAside

log = logging.getLogger(__name__)

Sender = Callable[[OutboundMessage], Awaitable[Receipt]]
"""A customer channel's send: rows of kind ``deliver`` go to ``senders[payload.channel]``."""
Handler = Callable[[Outbox], Awaitable[Receipt]]
"""Any other kind of row (a Slack post, a reaction): ``handlers[row.kind](row)``."""
DeliveryHook = Callable[[AsyncSession, Outbox, "DeliveryError | None"], Awaitable[None]]
"""Runs in the transaction that marks a row sent (error None) or failed for good, e.g. so the
Slack desk can queue a reaction or a thread message about it."""
Clock = Callable[[], datetime]


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


class OutboxWorker:
    batch_size = 100

    def __init__(self, store: Store, *, senders: Mapping[str, Sender], clock: Clock,
                 metrics: Metrics, policy: RetryPolicy, poll: timedelta,
                 handlers: Mapping[str, Handler] | None = None,
                 hooks: Sequence[DeliveryHook] = (),
                 step_aside: StepAside | None = None) -> None:
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
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()  # one delivery round at a time, or a row could go twice

    def kick(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def stop(self) -> None:
        """Finish the send in hand; everything else stays queued for the next start."""
        self._stopping = True
        self._wakeup.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                while await self.deliver_due() and not self._stopping:
                    await asyncio.sleep(0)  # the next in each lane is due now: go on at once
            except Exception:
                log.exception("outbox round failed")
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def deliver_due(self) -> int:
        """Send every due row (in id order, keeping each conversation's order); return how many
        were attempted."""
        async with self._round:
            return await self._deliver_round()

    async def _deliver_round(self) -> int:
        # Order is kept per lane, a lane being a kind of work for one conversation: a row is
        # taken only when it is due and no earlier row of its lane is still pending. So a Slack
        # post that waits does not hold back the customer's reply, a second reply waits for the
        # first, and a long backlog in one lane never hides due work in another.
        now = self._clock()
        earlier = aliased(Outbox)
        head_of_lane = ~exists().where(
            earlier.state == "pending", earlier.kind == Outbox.kind,
            earlier.conversation_id == Outbox.conversation_id, earlier.id < Outbox.id)
        async with self._store.reader() as s:
            rows = (await s.execute(
                select(Outbox)
                .where(Outbox.state == "pending", Outbox.next_attempt_at <= now, head_of_lane)
                .order_by(Outbox.id).limit(self.batch_size)
            )).scalars().all()
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

    async def _deliver(self, row: Outbox) -> bool:
        target = _Target.of(row)
        try:
            receipt = await self._send(row)
        except DeliveryError as exc:
            await self._failed(row, target, exc)
            return False
        except Exception as exc:  # a sender bug is retried, not fatal
            log.exception("sending outbox #%d crashed", row.id)
            await self._failed(row, target, TemporaryFailure(f"internal error: {exc}"))
            return False
        await self._sent(row, target, receipt)
        return True

    async def _sent(self, row: Outbox, target: _Target, receipt: Receipt) -> None:
        now = self._clock()
        deliver = row.kind == "deliver"
        async with self._store.session() as s:
            current = await s.get_one(Outbox, row.id)
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
                current = await s.get_one(Outbox, row.id)
                current.next_attempt_at = now + timedelta(seconds=max(0.0, exc.retry_after or 0))
                current.last_error = exc.reason
            log.debug("outbox #%d (%s) deferred %.1fs: %s", row.id, row.kind,
                      exc.retry_after or 0, exc.reason)
            return
        permanent = isinstance(exc, PermanentFailure)
        async with self._store.session() as s:
            current = await s.get_one(Outbox, row.id)
            current.attempts += 1
            current.last_error = exc.reason
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
