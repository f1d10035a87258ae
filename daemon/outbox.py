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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from frontdesk.channels.base import (
    DeliveryError,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    TemporaryFailure,
)
from frontdesk.storage.db import Store
from frontdesk.storage.models import Event, Message, Outbox

from .metrics import Metrics

log = logging.getLogger(__name__)

Sender = Callable[[OutboundMessage], Awaitable[Receipt]]
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
                 metrics: Metrics, policy: RetryPolicy, poll: timedelta) -> None:
        self._store = store
        self._senders = senders
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
                await self.deliver_due()
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
        now = self._clock()
        async with self._store.reader() as s:
            rows = (await s.execute(
                select(Outbox).where(Outbox.state == "pending")
                .order_by(Outbox.id).limit(self.batch_size)
            )).scalars().all()
        blocked: set[int] = set()
        attempted = 0
        for row in rows:
            if self._stopping:
                break
            key = row.conversation_id or -row.id
            if key in blocked:
                continue
            if row.next_attempt_at > now:
                blocked.add(key)
                continue
            attempted += 1
            if not await self._deliver(row):
                blocked.add(key)
        return attempted

    async def _deliver(self, row: Outbox) -> bool:
        out = OutboundMessage(**row.payload)
        sender = self._senders.get(out.channel)
        try:
            if sender is None:
                raise TemporaryFailure(f"the {out.channel} channel is not enabled")
            receipt = await sender(out)
        except DeliveryError as exc:
            await self._failed(row, out, exc)
            return False
        except Exception as exc:
            log.exception("sending outbox #%d crashed", row.id)
            await self._failed(row, out, TemporaryFailure(f"internal error: {exc}"))
            return False
        await self._sent(row, out, receipt)
        return True

    async def _sent(self, row: Outbox, out: OutboundMessage, receipt: Receipt) -> None:
        now = self._clock()
        async with self._store.session() as s:
            current = await s.get_one(Outbox, row.id)
            current.state, current.done_at = "done", now
            current.attempts += 1
            current.last_error = None
            if row.message_id is not None:
                message = await s.get_one(Message, row.message_id)
                message.delivery_status, message.sent_at = "sent", now
                message.failure_reason = None
            s.add(Event(kind="message_sent", conversation_id=row.conversation_id,
                        message_id=row.message_id, created_at=now,
                        data={"channel": out.channel, "to": out.to_address,
                              "remote_id": receipt.remote_id, "attempt": current.attempts}))
        self._metrics.messages_out.labels(out.channel).inc()
        log.info("sent outbox #%d (%s to %s)", row.id, out.channel, out.to_address)

    async def _failed(self, row: Outbox, out: OutboundMessage, exc: DeliveryError) -> None:
        now = self._clock()
        permanent = isinstance(exc, PermanentFailure)
        async with self._store.session() as s:
            current = await s.get_one(Outbox, row.id)
            current.attempts += 1
            current.last_error = exc.reason
            give_up = permanent or current.attempts >= self._policy.max_attempts
            if give_up:
                current.state, current.done_at = "failed", now
                if row.message_id is not None:
                    message = await s.get_one(Message, row.message_id)
                    message.delivery_status = "failed"
                    message.failure_reason = exc.reason
                s.add(Event(kind="delivery_failed", conversation_id=row.conversation_id,
                            message_id=row.message_id, created_at=now,
                            data={"channel": out.channel, "to": out.to_address,
                                  "reason": exc.reason, "attempts": current.attempts}))
            else:
                current.next_attempt_at = now + self._policy.delay(current.attempts,
                                                                   exc.retry_after)
        self._metrics.delivery_failures.labels(
            out.channel, "permanent" if give_up else "temporary").inc()
        if give_up:
            log.warning("gave up on outbox #%d (%s to %s) after %d attempt(s): %s",
                        row.id, out.channel, out.to_address, current.attempts, exc.reason)
        else:
            log.info("outbox #%d (%s to %s) failed, retry at %s: %s", row.id, out.channel,
                     out.to_address, current.next_attempt_at.isoformat(timespec="seconds"),
                     exc.reason)
