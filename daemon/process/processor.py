"""The processor: journal rows become contacts, conversations and messages.

It runs at once in the same process as the journal: it parses a batch of journal rows in a
worker thread (parsing is pure), then stores the batch in one transaction (:class:`_Batch`);
when that raises, each row is stored again in a savepoint of its own, so a message that fails
is rolled back alone and blocks nothing. A message whose processing raises
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
from typing import Any, Protocol

from sqlalchemy import func, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import InboundFilter, InboundHook
from frontdesk.daemon.process.journal import StepAside
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.domain import cc as cc_list
from frontdesk.domain.messages import Attachment as InboundAttachment
from frontdesk.domain.messages import InboundMessage
from frontdesk.domain.rules import Subject, TagRule, rule_tags
from frontdesk.domain.sla import contact_tags
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

    Several instances on one PostgreSQL process one journal: each batch is read with
    ``FOR UPDATE SKIP LOCKED`` (rows another instance holds are skipped, neither waited for nor
    processed twice; it takes the next ones). The batch's known contacts are locked, in id order,
    before their conversations are chosen or opened, so two messages of one customer at once end
    in one conversation. When
    two instances meet on the same new sender (a unique key), or deadlock, the loser's row is
    rolled back alone, left pending and tried again in a moment (``race_attempts`` at most).

    A row whose processing raises (a parse error, an attachment file that cannot be written, an
    error while storing it) is rolled back alone and tried again ``error_attempts`` times in
    all, after ``error_pause`` seconds, then twice that; the rows behind it go on meanwhile. The
    last attempt marks it ``failed`` with its error. The pauses and the count of attempts are
    this process's (a restart or another instance may try a row a few more times, never
    without end).
    """

    batch_size = 100
    """Journal rows read, parsed and stored together, in one transaction."""
    flood_hold = 0.01
    """Seconds a batch may hold the store's single writer (SQLite) while senders wait on the
    journal: the batch is cut to the rows that fit, by the time a row took lately, so the
    senders' commits (and their 250/200) never wait long behind processing."""
    step_hold = 0.25
    """The same bound on SQLite when no sender waits: a flood that begins during a step waits at
    most about this long for it."""
    first_batch = 10
    """Rows of the first batch, before the time a row takes is known."""
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
                 step_aside: StepAside | None = None,
                 tag_rules: Sequence[TagRule] = ()) -> None:
        self._store = store
        self._tag_rules = tag_rules
        self._step_aside = step_aside
        self._parsers = parsers
        self._attachments = attachments
        self._due = due
        self._rules = rules
        self._clock = clock
        self._metrics = metrics
        self._last_chunk = 0.0
        self._row_time = 0.0  # seconds a row took to store, lately (a moving average)
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
        query = query.order_by(table.c.id).limit(self._batch_limit())
        if self._store.dialect == "postgresql":
            done = await self._process_locked(query, last_try)
        else:
            async with self._store.read_engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            if not rows:
                return []
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
        """SQLite (one instance): parse the batch outside any transaction, then store it in one
        transaction, behind the journal's commits waiting at the write gate (the store's single
        writer goes to the senders' 250/200 first)."""
        parsed = await self._parse(rows)
        await self._yield_to_ingest()
        async with self._store.session() as session:
            began = time.monotonic()  # holding the writer: from here to the commit
            done = await self._apply(session, parsed, self._clock(), last_try)
        self._took(time.monotonic() - began, len(rows))
        return done

    def _batch_limit(self) -> int:
        """As many rows as store in about ``step_hold`` seconds, by the time a row took lately
        (``first_batch`` until that is known), or ``flood_hold`` while senders wait on the
        journal (a flood, or its first moments); at least one, at most ``batch_size``. So
        processing holds the single writer briefly: measured (benchmarks/meta_ingest.py), a step
        of 100 rows taken as a flood of webhooks began held it for a second, and the rounds
        where that happened ran at 0.6 of the webhook rate of the others."""
        if self._step_aside is None:
            return self.batch_size
        if self._step_aside.contended():
            hold = self.flood_hold
        elif self._store.dialect == "sqlite":
            hold = self.step_hold
        else:  # PostgreSQL has no single writer: a batch never holds up the senders
            return self.batch_size
        if self._row_time <= 0:
            return min(self.batch_size, self.first_batch)
        return max(1, min(self.batch_size, int(hold / self._row_time)))

    def _took(self, seconds: float, rows: int) -> None:
        self._last_chunk = seconds
        if rows:
            per_row = seconds / rows
            self._row_time = per_row if self._row_time <= 0 else (
                0.7 * self._row_time + 0.3 * per_row)

    async def _process_locked(self, query: Any, last_try: bool) -> list[tuple[Any, Outcome]]:
        """PostgreSQL (maybe several instances): lock a batch of pending rows, skipping the rows
        other instances hold (they take the next ones, never the same), then parse and store
        them in the same transaction."""
        await self._yield_to_ingest()
        began = time.monotonic()
        done: list[tuple[Any, Outcome]] = []
        async with self._store.session() as session:
            mine = (await session.execute(query.with_for_update(skip_locked=True))).all()
            if mine:
                done = await self._apply(session, await self._parse(mine), self._clock(),
                                         last_try)
        self._took(time.monotonic() - began, len(done))
        return done

    async def _apply(self, session: AsyncSession,
                     parsed: Sequence[tuple[Any, InboundMessage | None, str | None]],
                     now: datetime, last_try: bool) -> list[tuple[Any, Outcome]]:
        """Store the parsed rows: all together (one savepoint), or, when that raises, each
        alone in a savepoint of its own, so a message that fails is rolled back alone."""
        good = [(row, m) for row, m, error in parsed if m is not None and error is None]
        outcomes: dict[int, Outcome] = {}
        if len(good) > 1:
            try:
                async with session.begin_nested():
                    outcomes = await _Batch(self, session, now).store(good)
            except Exception as exc:  # noqa: BLE001 - the rows are tried one by one below
                log.info("a batch of %d journal rows could not be stored together (%s); "
                         "storing them one by one", len(good), _summary(_describe(exc)))
                outcomes = {}
        for row, m in good:
            if row.id in outcomes:
                continue
            try:
                async with session.begin_nested():
                    outcomes.update(await _Batch(self, session, now).store([(row, m)]))
            except Exception as exc:  # noqa: BLE001 - rolled back alone; tried again or failed
                if self._race(exc):
                    outcomes[row.id] = await self._again(session, row, exc, now)
                else:
                    outcomes[row.id] = await self._failed_attempt(session, row, _describe(exc),
                                                                  now, last_try)
        for row, _m, error in parsed:
            if row.id not in outcomes:
                outcomes[row.id] = await self._failed_attempt(
                    session, row, error or "no message", now, last_try)
        return [(row, outcomes[row.id]) for row, _m, _e in parsed]

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

@dataclass
class _Item:
    """One message of a batch on its way into the store."""

    row: Any
    m: InboundMessage
    contact: Contact | None = None
    conversation: Conversation | None = None
    is_new: bool = False
    reopened: bool = False
    stored: Message | None = None
    same_as: _Item | tuple[int, int] | None = None
    """A message stored before (its ids) or earlier in this batch: this one is a repeat."""
    consumed: bool = False
    cc_added: list[str] | None = None
    """Addresses this message added to its conversation's CC list."""


class _Batch:
    """Stores a batch of parsed journal rows in the caller's transaction, in three steps: find or
    make each message's contact and conversation (lookups for the whole batch at once), write the
    messages, then the events and the hooks (the Slack card, the SLA clocks, the channels' own
    records). A batch remembers what it made, so two messages of one batch meet as they would one
    after the other (a sender's second message, a reply to the first, a repeat)."""

    def __init__(self, processor: Processor, session: AsyncSession, now: datetime) -> None:
        self.p = processor
        self.session = session
        self.now = now
        self.contacts: dict[tuple[str, str], Contact] = {}
        self.made_contacts: set[int] = set()  # id() of the contacts this batch made
        self.messages: dict[tuple[str, str], _Item | tuple[int, int]] = {}
        self.refs: dict[tuple[str, str], tuple[int, Conversation | int]] = {}
        """(channel, external id) -> (order, conversation): stored messages by their message id,
        then this batch's own after them."""
        self.chats: dict[tuple[int, str], Conversation] = {}
        self.open_chats: dict[tuple[int, str], Conversation | None] = {}
        """(contact id, channel) -> the contact's latest open or recently resolved conversation
        there (None: none), read for the whole batch in one query."""

    async def store(self, items: Sequence[tuple[Any, InboundMessage]]) -> dict[int, Outcome]:
        table = core_table(InboundJournal)
        claimed = set((await self.session.execute(
            update(table).where(table.c.id.in_([row.id for row, _m in items]),
                                table.c.state == "pending")
            .values(state="done", processed_at=self.now, error=None,
                    attempts=table.c.attempts + 1)
            .returning(table.c.id))).scalars())
        outcomes = {row.id: Outcome(row.id, None, None) for row, _m in items
                    if row.id not in claimed}  # another instance took it
        batch = [_Item(row, m) for row, m in items if row.id in claimed]
        for item in batch:
            for consume in self.p._filters:
                if await consume(self.session, item.m, item.row.id, self.now):
                    item.consumed = True
                    outcomes[item.row.id] = Outcome(item.row.id, None, None)
                    break
        batch = [item for item in batch if not item.consumed]
        if not batch:
            return outcomes
        await self._look_up(batch)
        for item in batch:
            await self._place(item)
        await self.session.flush()  # contacts, identities, conversations: their ids
        for item in batch:
            self._write(item)
        await self.session.flush()  # the messages and attachments: their ids
        # The batch's events in one flush before any hook runs: a hook's query would flush each
        # item's events on its own (two single-row INSERTs a message, where the batch's events
        # together are one or two statements).
        for item in batch:
            self.session.add_all(self._events(item))
        await self.session.flush()
        journal: list[dict[str, Any]] = []
        for item in batch:
            msg_id, conv_id = await self._tell(item)
            outcomes[item.row.id] = Outcome(item.row.id, msg_id, conv_id)
            journal.append({"id": item.row.id, "message_id": msg_id})
        await self.session.execute(update(InboundJournal), journal)
        await self.session.flush()
        return outcomes

    async def _look_up(self, batch: Sequence[_Item]) -> None:
        """What the store knows of the batch's messages, senders and threads, in three
        queries."""
        # (channel, key) pairs, each found through its unique index.
        ids = {(item.m.channel, item.m.external_id) for item in batch}
        for found in (await self.session.execute(
                select(Message.id, Message.conversation_id, Message.channel, Message.external_id)
                .where(tuple_(Message.channel, Message.external_id).in_(ids)))).all():
            self.messages[(found.channel, found.external_id)] = (found.id, found.conversation_id)
        senders = {(item.m.identity_channel or item.m.channel, item.m.sender_address)
                   for item in batch}
        query = (select(Identity.channel, Identity.address, Contact)
                 .join(Contact, Identity.contact_id == Contact.id)
                 .where(tuple_(Identity.channel, Identity.address).in_(senders))
                 .order_by(Contact.id))
        if self.p._lock_contacts:  # held until commit: another instance's batch waits for this
            # NO KEY UPDATE: it serialises the processors, yet rows that merely point at the
            # contact (events, identities) are not held up, which made deadlocks with sweeps.
            # In the contacts' id order, so two instances never wait on each other in a ring.
            query = (query.with_for_update(of=Contact, key_share=True)
                     .execution_options(populate_existing=True))
        for kind, address, contact in (await self.session.execute(query)).all():
            self.contacts[(kind, address)] = contact
        await self._look_up_chats(batch)
        refs = {(item.m.channel, ref) for item in batch for ref in item.m.thread_refs}
        if refs:
            for found in (await self.session.execute(
                    select(Message.id, Message.conversation_id, Message.channel,
                           Message.external_id)
                    .where(tuple_(Message.channel, Message.external_id).in_(refs)))).all():
                key = (found.channel, found.external_id)
                if key not in self.refs or self.refs[key][0] < found.id:
                    self.refs[key] = (found.id, found.conversation_id)

    async def _look_up_chats(self, batch: Sequence[_Item]) -> None:
        """For chat-like messages from known senders: each sender's latest open (or recently
        resolved) conversation on that channel, in one query instead of one per message."""
        wanted: set[tuple[int, str]] = set()
        for item in batch:
            m = item.m
            contact = self.contacts.get((m.identity_channel or m.channel, m.sender_address))
            if contact is not None and contact.id is not None and m.channel != "email" \
                    and not m.standalone:
                wanted.add((contact.id, m.channel))
        if not wanted:
            return
        since = self.now - self.p._rules.reopen_window
        found = (await self.session.execute(
            select(Conversation)
            .where(Conversation.contact_id.in_({c for c, _ in wanted}),
                   Conversation.channel.in_({ch for _, ch in wanted}),
                   or_(Conversation.status != "resolved", Conversation.resolved_at >= since))
            .order_by(Conversation.id.desc()))).scalars().all()
        self.open_chats = dict.fromkeys(wanted)
        for conversation in found:  # the newest first: it is the one kept
            key = (conversation.contact_id, conversation.channel)
            if key in wanted and self.open_chats[key] is None:
                self.open_chats[key] = conversation

    async def _place(self, item: _Item) -> None:
        """The item's contact and conversation, found or made (in the session, not yet
        written)."""
        m = item.m
        key = (m.channel, m.external_id)
        if key in self.messages:  # the same message by another road (SMTP and IMAP, a resend)
            item.same_as = self.messages[key]
            return
        self.messages[key] = item
        item.contact = contact = await self._contact(m)
        conversation = await self._find_thread(m, contact)
        if conversation is None:
            conversation = Conversation(
                status="open", priority="normal", subject=m.subject[:998], channel=m.channel,
                inbox_address=m.inbox_address, contact=contact, created_at=self.now,
                updated_at=self.now,
                first_response_due_at=None if m.automated
                else self.p._due.first_response_due(self.now),
                # as _write sets it: written with the row, not by an UPDATE after it
                last_customer_message_at=None if m.automated else self.now,
                escalation_level=0, tags=self._rule_tags(m, contact),
            )
            self.session.add(conversation)
            item.is_new = True
        elif not m.automated and conversation.status != "open":
            item.reopened = conversation.status == "resolved"
            conversation.status = "open"
            conversation.resolved_at = None
            conversation.snoozed_until = None
        item.conversation = conversation
        if m.cc and not m.automated:  # reply-all: the people the customer copied
            own = [i.address for i in conversation.contact.identities if i.channel == "email"]
            after, item.cc_added = cc_list.merged(conversation.cc, m.cc,
                                                  exclude=[*own, m.sender_address])
            if item.cc_added:
                conversation.cc = after
        self.refs[key] = (_IN_BATCH + len(self.messages), conversation)
        self.chats[(id(contact), m.channel)] = conversation

    def _rule_tags(self, m: InboundMessage, contact: Contact) -> list[str]:
        """The tags ``[[tag_rules]]`` give a new conversation."""
        if not self.p._tag_rules:
            return []
        return rule_tags(self.p._tag_rules, Subject(
            m.channel, m.inbox_address, f"{m.subject}\n{m.text}", contact_tags(contact)))

    async def _contact(self, m: InboundMessage) -> Contact:
        key = (m.identity_channel or m.channel, m.sender_address)
        found = self.contacts.get(key)
        if found is None:
            contact = Contact(name=m.sender_name, created_at=self.now, updated_at=self.now,
                              tags={})
            contact.identities.append(Identity(channel=key[0], address=key[1],
                                               created_at=self.now))
            self.session.add(contact)
            self.contacts[key] = contact
            self.made_contacts.add(id(contact))
            return contact
        known = found
        while known.merged_into_id is not None:  # a merge: the contact it went into
            known = await self.session.get_one(
                Contact, known.merged_into_id,
                with_for_update={"key_share": True} if self.p._lock_contacts else None)
        if not known.name and m.sender_name:
            known.name = m.sender_name
            known.updated_at = self.now
        return known

    async def _conversation(self, ref: Conversation | int) -> Conversation | None:
        if isinstance(ref, Conversation):
            return ref
        return await self.session.get(Conversation, ref)

    async def _find_thread(self, m: InboundMessage, contact: Contact) -> Conversation | None:
        known = [self.refs[(m.channel, ref)] for ref in m.thread_refs
                 if (m.channel, ref) in self.refs]
        if known:  # the latest message it answers: this batch's own, else the newest stored
            return await self._conversation(max(known, key=lambda k: k[0])[1])
        if m.conversation_hint is not None:
            conversation = await self.session.get(Conversation, m.conversation_hint)
            if conversation is not None:
                return conversation
        if m.subject_token is not None:
            conversation = await self.session.get(Conversation, m.subject_token)
            if conversation is not None and await _belongs(self.session, conversation,
                                                           contact, m):
                return conversation
        if m.channel == "email" or m.standalone:
            return None
        # Chat-like channels: the contact's open conversation there, or a recently resolved one.
        if (id(contact), m.channel) in self.chats:
            return self.chats[(id(contact), m.channel)]
        if id(contact) in self.made_contacts:
            return None  # a contact this batch made has no conversation in the store
        if (contact.id, m.channel) in self.open_chats:  # read with the batch (_look_up_chats)
            return self.open_chats[(contact.id, m.channel)]
        since = self.now - self.p._rules.reopen_window
        return (await self.session.execute(
            select(Conversation)
            .where(Conversation.contact_id == contact.id, Conversation.channel == m.channel,
                   or_(Conversation.status != "resolved", Conversation.resolved_at >= since))
            .order_by(Conversation.id.desc()).limit(1)
        )).scalars().first()

    def _write(self, item: _Item) -> None:
        """The item's message (and its attachments), in the session."""
        if item.same_as is not None:
            return
        m, contact, conversation = item.m, item.contact, item.conversation
        assert contact is not None and conversation is not None
        item.stored = Message(
            conversation_id=conversation.id, direction="in", author="customer",
            author_name=m.sender_name or contact.name, channel=m.channel,
            external_id=m.external_id, address=m.sender_address, subject=m.subject,
            text=m.text, text_new=m.text_new, html=m.html, headers=dict(m.headers),
            automated=m.automated, created_at=self.now, journal_id=item.row.id,
            attachments=[_attachment_row(a) for a in m.attachments],
        )
        self.session.add(item.stored)
        conversation.updated_at = self.now
        if not m.automated:
            conversation.last_customer_message_at = self.now

    def _events(self, item: _Item) -> list[Event]:
        """The item's audit events (none for a message stored already)."""
        if item.same_as is not None:
            return []
        m, contact, conversation, message = item.m, item.contact, item.conversation, item.stored
        assert contact is not None and conversation is not None and message is not None
        events = []
        if item.is_new:
            # Every column given, as for the others: rows with the same columns are one INSERT
            # (the ORM starts a new statement wherever the set of columns changes).
            events.append(Event(kind="conversation_created", conversation_id=conversation.id,
                                contact_id=contact.id, message_id=message.id,
                                created_at=self.now, actor="system",
                                data={"channel": m.channel, "automated": m.automated}))
        if item.reopened:
            events.append(Event(kind="conversation_reopened", conversation_id=conversation.id,
                                contact_id=contact.id, message_id=message.id,
                                created_at=self.now, actor="customer", data={}))
        events.append(Event(kind="message_received", conversation_id=conversation.id,
                            contact_id=contact.id, message_id=message.id, created_at=self.now,
                            actor="customer",
                            data={"channel": m.channel, "journal_id": item.row.id,
                                  **({"automated": m.automated_reason} if m.automated else {})}))
        if item.cc_added:
            events.append(Event(kind="cc_changed", conversation_id=conversation.id,
                                contact_id=contact.id, message_id=message.id,
                                created_at=self.now, actor="customer",
                                data={"added": item.cc_added, "removed": [],
                                      "via": m.channel}))
        return events

    async def _tell(self, item: _Item) -> tuple[int, int]:
        """The item's hooks (its events are written); its (message id, conversation id)."""
        if item.same_as is not None:
            same = item.same_as
            if isinstance(same, _Item):
                assert same.stored is not None
                return same.stored.id, same.stored.conversation_id
            return same
        conversation, message = item.conversation, item.stored
        assert conversation is not None and message is not None
        for hook in self.p._hooks:
            result = hook(self.session, conversation, message, item.is_new)
            if asyncio.iscoroutine(result):
                await result
        return message.id, conversation.id


_IN_BATCH = 1 << 62
"""The order of a message of this batch among the messages a reply may answer: after every
stored one."""


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
    if conversation.contact_id == contact.id or m.sender_address in cc_list.active(
            conversation.cc):  # the customer, or someone they copied
        return True
    count = (await session.execute(
        select(func.count()).select_from(Message)
        .where(Message.conversation_id == conversation.id, Message.address == m.sender_address)
    )).scalar_one()
    return count > 0


def _attachment_row(a: InboundAttachment) -> Attachment:
    return Attachment(filename=a.filename[:512],
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
