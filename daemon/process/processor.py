"""The processor: journal rows become contacts, conversations and messages.

It runs at once in the same process as the journal: it parses journal rows outside any
transaction (parsing is pure), then applies them in one transaction with a savepoint each, so a
message that fails is rolled back alone and blocks nothing. A message whose processing raises
(its parse, writing its attachments' files, storing it) stays pending and is tried again after a
short pause, ``Processor.error_attempts`` times in all; then it is marked ``failed`` with its
error (a dead letter: ``frontdesk journal --failed``, ``journal retry``, ``journal discard``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import InboundFilter, InboundHook
from frontdesk.daemon.process.journal import StepAside
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.domain.messages import Attachment as InboundAttachment
from frontdesk.domain.messages import InboundMessage
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Backoff, Store
from frontdesk.storage.models import (
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    InboundJournal,
    Message,
    core_table,
)

log = logging.getLogger(__name__)

Parser = Callable[[bytes, Mapping[str, Any]], InboundMessage]


class DueTimes(Protocol):
    def first_response_due(self, start: datetime) -> datetime: ...


@dataclass(frozen=True)
class Outcome:
    journal_id: int
    message_id: int | None
    conversation_id: int | None
    error: str | None = None
    retry: bool = False
    """Several instances: a race with another one (the same new sender at the same moment, a
    deadlock) rolled this row back; it stays pending and is processed again shortly."""
    again_in: float | None = None
    """Processing raised (``error``) but attempts are left: the row stays pending and is tried
    again in this many seconds. None with an ``error``: the row is now a dead letter."""


@dataclass(frozen=True)
class ThreadingRules:
    reopen_window: timedelta




class Processor:
    """Turns journal rows into contacts, conversations and messages.

    Several instances on one PostgreSQL process one journal: each commit chunk first locks its
    rows with ``FOR UPDATE SKIP LOCKED`` (rows another instance holds are skipped, neither waited
    for nor processed twice) and parses only those. A contact is locked before its conversation
    is chosen or opened, so two messages of one customer at once end in one conversation. When
    two instances meet on the same new sender (a unique key), or deadlock, the loser's row is
    rolled back alone, left pending and tried again in a moment (``race_attempts`` at most).

    A row whose processing raises (a parse error, an attachment file that cannot be written, an
    error while storing it) is rolled back alone and tried again ``error_attempts`` times in
    all, after ``error_pause`` seconds, then twice that; the rows behind it go on meanwhile. The
    last attempt marks it ``failed`` with its error. The pauses and the count of attempts are
    this process's (a restart or another instance may try a row a few more times, never
    without end).
    """

    batch_size = 50
    commit_every = 2  # SQLite; on PostgreSQL one message per transaction (_process_locked)
    race_attempts = 40
    """A row rolled back by races this many times is a dead letter after all (a unique key that
    never stops clashing is a bug, not a race)."""
    race_pause = 0.05
    """Seconds before a batch with a row rolled back by a race is tried again."""
    error_attempts = 3
    """A row whose processing raises is tried this many times in all, then marked failed."""
    error_pause = 1.0
    """Seconds before the second attempt at such a row; each later pause is twice the last."""
    forget_after = 600.0
    """Seconds after which a row's failed attempts are forgotten if it was not seen again (it
    was processed by another instance, or put back by ``journal retry``)."""

    def __init__(self, store: Store, *, parsers: Mapping[str, Parser], attachments: AttachmentStore,
                 due: DueTimes, rules: ThreadingRules, clock: Clock, metrics: Metrics,
                 hooks: Sequence[InboundHook] = (),
                 filters: Sequence[InboundFilter] = (),
                 step_aside: StepAside | None = None) -> None:
        self._store = store
        self._step_aside = step_aside
        self._parsers = parsers
        self._attachments = attachments
        self._due = due
        self._rules = rules
        self._clock = clock
        self._metrics = metrics
        self._last_chunk = 0.0
        self._hooks = hooks  # by reference: services register theirs after construction
        self._filters = filters  # by reference, like hooks
        self._wakeup = asyncio.Event()
        self._tries: dict[int, tuple[int, float]] = {}
        """Rows whose processing raised: journal id -> (attempts so far, ``time.monotonic()``
        when the next one is due)."""
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # PostgreSQL (maybe several instances): a known contact's row is locked FOR UPDATE
        # before its conversation is chosen or opened. SQLite has one writer already.
        self._lock_contacts = store.dialect == "postgresql"

    def kick(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._wakeup.set()  # pick up whatever a previous run left pending
        self._task = asyncio.create_task(self._run(), name="ingest-processor")

    async def stop(self) -> None:
        """Finish the batch in hand; what is still pending stays in the journal for next start."""
        self._stopping = True
        self._wakeup.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        # After a failure (the store away, or a bug) the next try comes after a growing pause,
        # or at once when a journal commit kicks (a commit means the store is back).
        # A row whose processing raised is tried again when its pause is over.
        backoff = Backoff("processing the journal", log)
        wait = 30.0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass
            self._wakeup.clear()
            wait = 30.0
            while not self._stopping:
                try:
                    done = await self.process_pending()
                except Exception as exc:  # noqa: BLE001 - logged by the backoff, retried
                    wait = backoff.failed(exc)
                    break
                backoff.succeeded()
                if not done:
                    wait = self._next_try(wait)
                    break
                if any(o.retry for o in done):  # the other instance's commit, then again
                    await asyncio.sleep(self.race_pause)
                await asyncio.sleep(0)  # let the SMTP server answer in between batches

    def _next_try(self, wait: float) -> float:
        """Seconds until the first row held back after an error is due (at most ``wait``)."""
        if not self._tries:
            return wait
        soonest = min(due for _tries, due in self._tries.values())
        return max(0.01, min(wait, soonest - time.monotonic()))

    def _held_back(self) -> list[int]:
        """Rows whose processing raised and whose next attempt is not due yet."""
        now = time.monotonic()
        for journal_id in [i for i, (_n, due) in self._tries.items()
                           if due < now - self.forget_after]:
            del self._tries[journal_id]
        return sorted(i for i, (_n, due) in self._tries.items() if due > now)

    async def process_pending(self, ids: Sequence[int] | None = None) -> list[Outcome]:
        """Process one batch of pending journal rows; return the outcomes.

        Without ``ids`` (the daemon's loop) rows held back after an error wait for their pause,
        and a row that raises is tried again later until its attempts are used up. With ``ids``
        (``frontdesk journal retry``: a person asked for these rows now) each is tried once, and
        one that raises is marked failed at once, with its error."""
        table = core_table(InboundJournal)
        query = select(table.c.id, table.c.channel, table.c.raw, table.c.meta,
                       table.c.received_at).where(table.c.state == "pending")
        last_try = ids is not None
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        elif held := self._held_back():
            query = query.where(table.c.id.not_in(held))
        query = query.order_by(table.c.id).limit(self.batch_size)
        async with self._store.read_engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return []
        if self._store.dialect == "postgresql":
            done = await self._process_locked(rows, last_try)
        else:
            done = await self._process_read(rows, last_try)
        for row, outcome in done:
            if outcome.again_in is None and not outcome.retry:
                self._tries.pop(row.id, None)
            if outcome.error is None and outcome.message_id is not None:
                self._metrics.ingest_latency.labels(row.channel).observe(
                    max(0.0, (self._clock() - row.received_at).total_seconds()))
            elif outcome.again_in is not None:
                log.warning("journal #%d (%s) could not be processed (attempt %d of %d), trying "
                            "again in %gs: %s", row.id, row.channel,
                            self._tries.get(row.id, (0, 0.0))[0], self.error_attempts,
                            outcome.again_in, _summary(outcome.error))
            elif outcome.error is not None:
                self._metrics.journal_failed.labels(row.channel).inc()
                log.warning("journal #%d (%s) failed to process: %s",
                            row.id, row.channel, _summary(outcome.error))
                log.debug("journal #%d: %s", row.id, outcome.error)  # with its traceback
        return [outcome for _row, outcome in done]

    async def _parse(self, rows: Sequence[Any]) -> list[tuple[Any, InboundMessage | None,
                                                              str | None]]:
        """Parse journal rows and store their attachments' files, in a worker thread: a large or
        hostile message (a mail of 100,000 MIME parts) must not hold the event loop, where the
        senders' 250/200, the health checks and the outbox run. A row whose parse or files fail
        gets its error instead of a message; the other rows go on."""
        return await asyncio.to_thread(self._parse_rows, rows)

    def _parse_rows(self, rows: Sequence[Any]) -> list[tuple[Any, InboundMessage | None,
                                                            str | None]]:
        parsed: list[tuple[Any, InboundMessage | None, str | None]] = []
        for row in rows:
            meta = dict(row.meta or {})
            meta["journal_id"] = row.id
            try:
                parser = self._parsers.get(row.channel)
                if parser is None:
                    raise LookupError(f"no parser for channel {row.channel!r} is enabled")
                message = parser(row.raw, meta)
                for attachment in message.attachments:
                    self._attachments.put(attachment.data)
            except Exception as exc:  # noqa: BLE001 - tried again, then a dead letter
                parsed.append((row, None, _describe(exc)))
            else:
                parsed.append((row, message, None))
        return parsed

    async def _process_read(self, rows: Sequence[Any],
                            last_try: bool) -> list[tuple[Any, Outcome]]:
        """SQLite (one instance): parse the batch outside any transaction, then apply it."""
        parsed = await self._parse(rows)
        done: list[tuple[Any, Outcome]] = []
        # Short transactions, each behind the journal's commits waiting at the write gate: the
        # store's single writer (SQLite) goes to the sender's 250/200 first.
        for start in range(0, len(parsed), self.commit_every):
            await self._yield_to_ingest()
            began = time.monotonic()
            now = self._clock()
            async with self._store.session() as session:
                for row, message, error in parsed[start:start + self.commit_every]:
                    done.append((row, await self._apply_one(session, row, message, error, now,
                                                            last_try)))
            self._last_chunk = time.monotonic() - began
            await asyncio.sleep(0)
        return done

    async def _process_locked(self, rows: Sequence[Any],
                              last_try: bool) -> list[tuple[Any, Outcome]]:
        """PostgreSQL (maybe several instances): each chunk locks its rows first, skipping rows
        another instance holds, and parses only the rows it got."""
        table = core_table(InboundJournal)
        done: list[tuple[Any, Outcome]] = []
        # One message per transaction: a transaction then locks one customer's contact at most,
        # so two instances can never hold two customers each in opposite orders (a deadlock).
        for start in range(len(rows)):
            chunk = rows[start:start + 1]
            await self._yield_to_ingest()
            began = time.monotonic()
            async with self._store.session() as session:
                held = set((await session.execute(
                    select(table.c.id)
                    .where(table.c.id.in_([r.id for r in chunk]), table.c.state == "pending")
                    .with_for_update(skip_locked=True)
                )).scalars())
                mine = [r for r in chunk if r.id in held]
                if mine:
                    now = self._clock()
                    for row, message, error in await self._parse(mine):
                        done.append((row, await self._apply_one(session, row, message, error,
                                                                now, last_try)))
            self._last_chunk = time.monotonic() - began
            await asyncio.sleep(0)
        return done

    async def _apply_one(self, session: AsyncSession, row: Any, message: InboundMessage | None,
                         error: str | None, now: datetime, last_try: bool) -> Outcome:
        table = core_table(InboundJournal)
        if error is None:
            assert message is not None
            try:
                async with session.begin_nested():
                    claimed = await session.execute(
                        update(table).where(table.c.id == row.id, table.c.state == "pending")
                        .values(state="done", processed_at=now, error=None,
                                attempts=table.c.attempts + 1)
                    )
                    if cast(CursorResult[Any], claimed).rowcount == 0:  # another one took it
                        return Outcome(row.id, None, None)
                    if await self._consumed(session, message, row.id, now):
                        return Outcome(row.id, None, None)
                    msg_id, conv_id = await self._store_message(session, message, row, now)
                    await session.execute(
                        update(table).where(table.c.id == row.id).values(message_id=msg_id))
                return Outcome(row.id, msg_id, conv_id)
            except Exception as exc:  # noqa: BLE001 - rolled back alone; tried again or failed
                if self._race(exc):
                    return await self._again(session, row, exc, now)
                error = _describe(exc)
        return await self._failed_attempt(session, row, error, now, last_try)

    async def _failed_attempt(self, session: AsyncSession, row: Any, error: str, now: datetime,
                              last_try: bool) -> Outcome:
        """Processing a row raised: hold it back for a pause if attempts are left, else mark it
        failed (a dead letter) with its error."""
        table = core_table(InboundJournal)
        tries = self._tries.get(row.id, (0, 0.0))[0] + 1
        if last_try or tries >= self.error_attempts:
            await session.execute(
                update(table).where(table.c.id == row.id, table.c.state == "pending")
                .values(state="failed", error=error, processed_at=now,
                        attempts=table.c.attempts + 1))
            return Outcome(row.id, None, None, error)
        pause = self.error_pause * 2 ** (tries - 1)
        await session.execute(
            update(table).where(table.c.id == row.id, table.c.state == "pending")
            .values(error=error, attempts=table.c.attempts + 1))
        self._tries[row.id] = (tries, time.monotonic() + pause)
        return Outcome(row.id, None, None, error, again_in=pause)

    def _race(self, exc: BaseException) -> bool:
        """A clash with another instance's transaction (PostgreSQL), not a fault of the row."""
        if self._store.dialect != "postgresql" or not isinstance(exc, DBAPIError):
            return False
        return getattr(exc.orig, "sqlstate", None) in _RACE_STATES

    async def _again(self, session: AsyncSession, row: Any, exc: BaseException,
                     now: datetime) -> Outcome:
        """Leave a row rolled back by a race pending, to be processed again in a moment."""
        table = core_table(InboundJournal)
        error = _describe(exc)
        attempts = (await session.execute(
            update(table).where(table.c.id == row.id, table.c.state == "pending")
            .values(attempts=table.c.attempts + 1, error=error)
            .returning(table.c.attempts)
        )).scalar()
        if attempts is not None and attempts >= self.race_attempts:
            await session.execute(
                update(table).where(table.c.id == row.id, table.c.state == "pending")
                .values(state="failed", processed_at=now,
                        error=f"still clashing after {attempts} attempts: {error}"))
            return Outcome(row.id, None, None, f"still clashing after {attempts} attempts: "
                                               f"{error}")
        log.info("journal #%d clashed with another instance (%s); trying it again", row.id,
                 error.splitlines()[0])
        return Outcome(row.id, None, None, retry=True)

    async def _yield_to_ingest(self) -> None:
        if self._step_aside is not None:
            await self._step_aside.wait(self._last_chunk, lambda: self._stopping)

    async def _consumed(self, session: AsyncSession, m: InboundMessage, journal_id: int,
                        now: datetime) -> bool:
        for consume in self._filters:
            if await consume(session, m, journal_id, now):
                return True
        return False

    async def _store_message(self, session: AsyncSession, m: InboundMessage, row: Any,
                             now: datetime) -> tuple[int, int]:
        existing = (await session.execute(
            select(Message.id, Message.conversation_id)
            .where(Message.channel == m.channel, Message.external_id == m.external_id)
        )).first()
        if existing:  # the same message by another road (SMTP and IMAP, a resend)
            return existing.id, existing.conversation_id
        contact = await self._contact_for(session, m, now)
        conversation, is_new, reopened = await self._thread(session, m, contact, now)
        message = Message(
            conversation_id=conversation.id, direction="in", author="customer",
            author_name=m.sender_name or contact.name, channel=m.channel,
            external_id=m.external_id, address=m.sender_address, subject=m.subject,
            text=m.text, text_new=m.text_new, html=m.html, headers=dict(m.headers),
            automated=m.automated,
            created_at=now, journal_id=row.id,
        )
        session.add(message)
        await session.flush()
        for a in m.attachments:
            session.add(_attachment_row(message.id, a))
        conversation.updated_at = now
        if not m.automated:
            conversation.last_customer_message_at = now
        events = []
        if is_new:
            events.append(Event(kind="conversation_created", conversation_id=conversation.id,
                                contact_id=contact.id, message_id=message.id, created_at=now,
                                data={"channel": m.channel, "automated": m.automated}))
        if reopened:
            events.append(Event(kind="conversation_reopened", conversation_id=conversation.id,
                                contact_id=contact.id, message_id=message.id, created_at=now,
                                actor="customer"))
        events.append(Event(kind="message_received", conversation_id=conversation.id,
                            contact_id=contact.id, message_id=message.id, created_at=now,
                            actor="customer",
                            data={"channel": m.channel, "journal_id": row.id,
                                  **({"automated": m.automated_reason} if m.automated else {})}))
        session.add_all(events)
        for hook in self._hooks:
            result = hook(session, conversation, message, is_new)
            if asyncio.iscoroutine(result):
                await result
        await session.flush()
        return message.id, conversation.id

    async def _contact_for(self, session: AsyncSession, m: InboundMessage,
                           now: datetime) -> Contact:
        kind = m.identity_channel or m.channel
        query = (select(Contact).join(Identity, Identity.contact_id == Contact.id)
                 .where(Identity.channel == kind, Identity.address == m.sender_address))
        lock = self._lock_contacts
        if lock:  # held until commit: the same customer's next message waits for this one's
            # NO KEY UPDATE: it serialises the processors, yet rows that merely point at the
            # contact (events, identities) are not held up, which made deadlocks with sweeps.
            query = (query.with_for_update(of=Contact, key_share=True)  # conversation, then
                     .execution_options(populate_existing=True))        # joins it
        found: Contact | None = (await session.execute(query)).scalars().first()
        if found is not None:
            known: Contact = found
            while known.merged_into_id is not None:  # a merge: the contact it went into
                known = await session.get_one(Contact, known.merged_into_id,
                                              with_for_update={"key_share": True} if lock
                                              else None)
            if not known.name and m.sender_name:
                known.name = m.sender_name
                known.updated_at = now
            return known
        contact = Contact(name=m.sender_name, created_at=now, updated_at=now, tags={})
        session.add(contact)
        await session.flush()
        session.add(Identity(contact_id=contact.id, channel=kind, address=m.sender_address,
                             created_at=now))
        await session.flush()
        return contact

    async def _thread(self, session: AsyncSession, m: InboundMessage, contact: Contact,
                      now: datetime) -> tuple[Conversation, bool, bool]:
        """Find the conversation this message belongs to: (conversation, is_new, reopened)."""
        conversation = await self._find_thread(session, m, contact, now)
        if conversation is None:
            conversation = Conversation(
                status="open", priority="normal", subject=m.subject[:998], channel=m.channel,
                inbox_address=m.inbox_address, contact_id=contact.id, created_at=now,
                updated_at=now,
                first_response_due_at=None if m.automated else self._due.first_response_due(now),
                escalation_level=0,
            )
            session.add(conversation)
            await session.flush()
            return conversation, True, False
        reopened = False
        if not m.automated and conversation.status != "open":
            reopened = conversation.status == "resolved"
            conversation.status = "open"
            conversation.resolved_at = None
            conversation.snoozed_until = None
        return conversation, False, reopened

    async def _find_thread(self, session: AsyncSession, m: InboundMessage, contact: Contact,
                           now: datetime) -> Conversation | None:
        if m.thread_refs:
            conv_id = (await session.execute(
                select(Message.conversation_id)
                .where(Message.channel == m.channel, Message.external_id.in_(m.thread_refs))
                .order_by(Message.id.desc()).limit(1)
            )).scalar()
            if conv_id is not None:
                return await session.get(Conversation, conv_id)
        if m.conversation_hint is not None:
            conversation = await session.get(Conversation, m.conversation_hint)
            if conversation is not None:
                return conversation
        if m.subject_token is not None:
            conversation = await session.get(Conversation, m.subject_token)
            if conversation is not None and await _belongs(session, conversation, contact, m):
                return conversation
        if m.channel == "email" or m.standalone:
            return None
        # Chat-like channels: the contact's open conversation there, or a recently resolved one.
        since = now - self._rules.reopen_window
        return (await session.execute(
            select(Conversation)
            .where(Conversation.contact_id == contact.id, Conversation.channel == m.channel,
                   or_(Conversation.status != "resolved", Conversation.resolved_at >= since))
            .order_by(Conversation.id.desc()).limit(1)
        )).scalars().first()


_RACE_STATES = frozenset({
    "23505",  # unique_violation: the same new sender (identity) or message, at the same moment
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled: statement_timeout, e.g. waiting for another instance's lock
})


async def _belongs(session: AsyncSession, conversation: Conversation, contact: Contact,
                   m: InboundMessage) -> bool:
    """A subject token is trusted only from someone already in that conversation."""
    if conversation.contact_id == contact.id:
        return True
    count = (await session.execute(
        select(func.count()).select_from(Message)
        .where(Message.conversation_id == conversation.id, Message.address == m.sender_address)
    )).scalar_one()
    return count > 0


def _attachment_row(message_id: int, a: InboundAttachment) -> Attachment:
    return Attachment(message_id=message_id, filename=a.filename[:512],
                      content_type=a.content_type[:256], size=len(a.data),
                      sha256=hashlib.sha256(a.data).hexdigest())


def _describe(exc: BaseException) -> str:
    """One line a person can read, then the traceback for whoever fixes it."""
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    return summary + "\n" + "".join(traceback.format_exception(exc)[-6:])


def _summary(error: str | None) -> str:
    """The first line of a stored error: what a person reads."""
    lines = (error or "").splitlines()
    return lines[0] if lines else ""


async def retry_failed(store: Store, journal_id: int | None = None) -> list[int]:
    """Put failed journal rows back to pending (never discarded ones); returns their ids."""
    table = core_table(InboundJournal)
    stmt = update(table).where(table.c.state == "failed")
    if journal_id is not None:
        stmt = stmt.where(table.c.id == journal_id)
    async with store.session() as session:
        result = await session.execute(stmt.values(state="pending").returning(table.c.id))
        return sorted(r.id for r in result)


class NotDiscardable(Exception):
    """``journal discard`` named a row that does not exist or is not failed (one line)."""


async def discard_failed(store: Store, journal_id: int, *, actor: str,
                         now: datetime) -> str:
    """Mark one failed journal row ``discarded``: kept with its raw message and error, but no
    longer counted as failed nor put back by ``journal retry``. Audited as a
    ``journal_discarded`` event naming ``actor``. Returns the row's one-line error."""
    table = core_table(InboundJournal)
    async with store.session() as session:
        row = (await session.execute(
            select(table.c.id, table.c.channel, table.c.remote_id, table.c.state, table.c.error)
            .where(table.c.id == journal_id).with_for_update()
        )).first()
        if row is None:
            raise NotDiscardable(f"journal #{journal_id} does not exist")
        if row.state != "failed":
            raise NotDiscardable(f"journal #{journal_id} is {row.state}, not failed; only a "
                                 "failed message can be discarded")
        summary = _summary(row.error)
        await session.execute(update(table).where(table.c.id == journal_id,
                                                  table.c.state == "failed")
                              .values(state="discarded"))
        session.add(Event(kind="journal_discarded", actor=actor, created_at=now,
                          data={"journal_id": journal_id, "channel": row.channel,
                                "remote_id": row.remote_id, "error": summary}))
    return summary
