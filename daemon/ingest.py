"""The ingest pipeline: the inbound journal (accept) and the processor (turn it into conversations).

Stage one, :class:`Journal`, is all that stands between a sender and its 250/200: the raw bytes
and their remote id are inserted with ``ON CONFLICT DO NOTHING`` and committed. Every message
waiting at that moment shares one commit (group commit); a duplicate is a no-op that gets the same
success answer.

Stage two, :class:`Processor`, runs at once in the same process: it parses journal rows outside
any transaction (parsing is pure), then applies them in one transaction with a savepoint each, so
a message that fails is rolled back alone, marked ``failed`` with its error, and blocks nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import Attachment as InboundAttachment
from frontdesk.channels.base import InboundMessage
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    InboundJournal,
    Message,
)

from .metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Parser = Callable[[bytes, Mapping[str, Any]], InboundMessage]


class DueTimes(Protocol):
    def first_response_due(self, start: datetime) -> datetime: ...


@dataclass
class _Pending:
    channel: str
    remote_id: str
    raw: bytes
    meta: Mapping[str, Any]
    received_at: datetime
    future: asyncio.Future[bool] = field(repr=False)


class Journal:
    """Group commit of raw inbound messages. ``accept`` returns once the message is durable."""

    def __init__(self, store: Store, *, clock: Clock, metrics: Metrics,
                 on_commit: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._on_commit = on_commit
        self._sqlite = SqliteJournalWriter(store) if store.sqlite_path else None
        self._last_commit = 0.0
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        table = InboundJournal.__table__
        dialect_insert = sqlite.insert if store.dialect == "sqlite" else postgresql.insert
        self._insert = (
            dialect_insert(table)
            .on_conflict_do_nothing(index_elements=["channel", "remote_id"])
            .returning(table.c.channel, table.c.remote_id)
        )

    quiet = 0.02
    """Seconds without a commit after which no message counts as arriving."""

    def idle(self) -> bool:
        """Nothing waiting to be journaled and no commit just now."""
        return not self._queue and time.monotonic() - self._last_commit >= self.quiet

    def start(self) -> None:
        self._task = asyncio.create_task(self._committer(), name="journal-committer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task:
            await self._task
        if self._sqlite is not None:
            self._sqlite.close()

    async def accept(self, channel: str, remote_id: str, raw: bytes,
                     meta: Mapping[str, Any]) -> bool:
        """Journal one message; True if new, False if it was already there. Raises on failure."""
        if self._closing:
            raise RuntimeError("frontdesk is shutting down")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(channel, remote_id, raw, dict(meta), self._clock(), future))
        self._wakeup.set()
        return await future

    async def _committer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        rows = [
            {"channel": p.channel, "remote_id": p.remote_id, "raw": p.raw, "meta": p.meta,
             "received_at": p.received_at, "state": "pending", "attempts": 0}
            for p in batch
        ]
        started = time.perf_counter()
        try:
            async with self._store.writing():
                if self._sqlite is not None:
                    new = await self._sqlite.insert(rows)
                else:
                    async with self._store.engine.begin() as conn:
                        result = await conn.execute(self._insert, rows)
                        new = {(r.channel, r.remote_id) for r in result}
        except Exception as exc:  # noqa: BLE001 - every waiting sender gets a temporary failure
            log.error("journal commit of %d message(s) failed: %s", len(batch), exc)
            self._metrics.journal_errors.inc()
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._last_commit = time.monotonic()
        self._metrics.journal_commit_seconds.observe(time.perf_counter() - started)
        self._metrics.journal_batch_size.observe(len(batch))
        for p in batch:
            is_new = (p.channel, p.remote_id) in new
            new.discard((p.channel, p.remote_id))  # a second copy in the same batch is a duplicate
            if is_new:
                self._metrics.messages_in.labels(p.channel).inc()
            else:
                self._metrics.duplicates.labels(p.channel).inc()
            if not p.future.done():
                p.future.set_result(is_new)
        self._on_commit()


class StepAside:
    """Accept fast, do the rest later: background work (processing, sending) steps aside while
    messages are arriving, so their commits and the senders' 250/200 go first.

    A step waits for a pause in arrivals, but no longer than ``factor`` times what the worker's
    last step took (and at most ``max_wait``): under steady traffic the worker still gets about
    1/(1+factor) of the loop, so its backlog cannot grow without bound.
    """

    def __init__(self, busy: Callable[[], bool], *, factor: float = 5.0,
                 max_wait: float = 1.0) -> None:
        self._busy = busy
        self._factor = factor
        self._max_wait = max_wait

    async def wait(self, last_step: float, stopping: Callable[[], bool] = lambda: False) -> None:
        if not self._busy():
            return
        deadline = time.monotonic() + min(self._max_wait, max(0.005, self._factor * last_step))
        while self._busy() and not stopping() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class SqliteJournalWriter:
    """The journal's insert on SQLite through the standard library, in a thread of its own.

    The commit is the whole of what a sender waits for. Through SQLAlchemy's asyncio layer and
    aiosqlite each statement costs several thread hand-offs (measured: about 290 µs of CPU per
    trivial statement against 19 µs synchronously); here the whole group commit is one call.
    Rows are written exactly as the SQLAlchemy models write them (see UTCDateTime, JSON).
    """

    _sql = ("INSERT INTO inbound_journal (channel, remote_id, raw, meta, received_at, state, "
            "attempts) VALUES (?, ?, ?, ?, ?, 'pending', 0) "
            "ON CONFLICT (channel, remote_id) DO NOTHING RETURNING channel, remote_id")

    def __init__(self, store: Store) -> None:
        assert store.sqlite_path is not None
        self._path = store.sqlite_path
        self._synchronous = store.synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        conn = self._connect()
        params = [(r["channel"], r["remote_id"], r["raw"], json.dumps(r["meta"]),
                   r["received_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))
                  for r in rows]
        new: set[tuple[str, str]] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for p in params:
                new.update((c, r) for c, r in conn.execute(self._sql, p).fetchall())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    async def insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._insert, rows)

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)


class AttachmentStore:
    """Files named by their SHA-256 under ``<data_dir>/attachments/ab/abcdef...``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "attachments"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return digest


@dataclass(frozen=True)
class Outcome:
    journal_id: int
    message_id: int | None
    conversation_id: int | None
    error: str | None = None


@dataclass(frozen=True)
class ThreadingRules:
    reopen_window: timedelta


InboundHook = Callable[[AsyncSession, Conversation, Message, bool], Any]
"""Called inside the processing transaction for every new customer message (e.g. to write
outbox rows for the Slack desk or an acknowledgement); the bool says the conversation is new."""

InboundFilter = Callable[[AsyncSession, InboundMessage, int, datetime], Awaitable[bool]]
"""``filter(session, message, journal_id, now)`` runs inside the processing transaction before a
new message is stored; True means it took the message whole and nothing more is stored (an SMS
opt-out keyword, a bot's /start, a voicemail transcript that updates an earlier message)."""


class Processor:
    """Turns journal rows into contacts, conversations and messages."""

    batch_size = 50
    commit_every = 2

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
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

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
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=30)
            except TimeoutError:
                pass
            self._wakeup.clear()
            while not self._stopping:
                try:
                    done = await self.process_pending()
                except Exception:
                    log.exception("processing the journal failed; retrying in 5 s")
                    await asyncio.sleep(5)
                    break
                if not done:
                    break
                await asyncio.sleep(0)  # let the SMTP server answer in between batches

    async def process_pending(self, ids: Sequence[int] | None = None) -> list[Outcome]:
        """Process one batch of pending journal rows (or the given ids); return the outcomes."""
        table = InboundJournal.__table__
        query = select(table.c.id, table.c.channel, table.c.raw, table.c.meta,
                       table.c.received_at).where(table.c.state == "pending")
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        query = query.order_by(table.c.id).limit(self.batch_size)
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return []
        parsed: list[tuple[Any, InboundMessage | None, str | None]] = []
        for row in rows:
            meta = dict(row.meta or {})
            meta["journal_id"] = row.id
            try:
                parser = self._parsers.get(row.channel)
                if parser is None:
                    raise LookupError(f"no parser for channel {row.channel!r} is enabled")
                parsed.append((row, parser(row.raw, meta), None))
            except Exception as exc:  # noqa: BLE001 - a dead letter, kept with its error
                parsed.append((row, None, _describe(exc)))
        files = [a for _, m, _ in parsed if m for a in m.attachments]
        if files:
            await asyncio.to_thread(lambda: [self._attachments.put(a.data) for a in files])
        outcomes: list[Outcome] = []
        # Short transactions, each behind the journal's commits waiting at the write gate: the
        # store's single writer (SQLite) goes to the sender's 250/200 first.
        for start in range(0, len(parsed), self.commit_every):
            await self._yield_to_ingest()
            began = time.monotonic()
            now = self._clock()
            async with self._store.session() as session:
                for row, message, error in parsed[start:start + self.commit_every]:
                    outcomes.append(await self._apply_one(session, row, message, error, now))
            self._last_chunk = time.monotonic() - began
            await asyncio.sleep(0)
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome.error is None and outcome.message_id is not None:
                self._metrics.ingest_latency.labels(row.channel).observe(
                    max(0.0, (self._clock() - row.received_at).total_seconds()))
            elif outcome.error is not None:
                self._metrics.journal_failed.labels(row.channel).inc()
                log.warning("journal #%d (%s) failed to process: %s",
                            row.id, row.channel, outcome.error.splitlines()[0])
        return outcomes

    async def _apply_one(self, session: AsyncSession, row: Any, message: InboundMessage | None,
                         error: str | None, now: datetime) -> Outcome:
        table = InboundJournal.__table__
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
            except Exception as exc:  # noqa: BLE001 - rolled back alone, kept as a dead letter
                error = _describe(exc)
        await session.execute(
            update(table).where(table.c.id == row.id, table.c.state == "pending")
            .values(state="failed", error=error, processed_at=now, attempts=table.c.attempts + 1)
        )
        return Outcome(row.id, None, None, error)

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
        found: Contact | None = (await session.execute(
            select(Contact).join(Identity, Identity.contact_id == Contact.id)
            .where(Identity.channel == m.channel, Identity.address == m.sender_address)
        )).scalars().first()
        if found is not None:
            known: Contact = found
            while known.merged_into_id is not None:
                known = await session.get_one(Contact, known.merged_into_id)
            if not known.name and m.sender_name:
                known.name = m.sender_name
                known.updated_at = now
            return known
        contact = Contact(name=m.sender_name, created_at=now, updated_at=now, tags={})
        session.add(contact)
        await session.flush()
        session.add(Identity(contact_id=contact.id, channel=m.channel, address=m.sender_address,
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
        if m.channel == "email":
            return None
        # Chat-like channels: the contact's open conversation there, or a recently resolved one.
        since = now - self._rules.reopen_window
        return (await session.execute(
            select(Conversation)
            .where(Conversation.contact_id == contact.id, Conversation.channel == m.channel,
                   or_(Conversation.status != "resolved", Conversation.resolved_at >= since))
            .order_by(Conversation.id.desc()).limit(1)
        )).scalars().first()


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
    summary = f"{type(exc).__name__}: {exc}"
    return summary + "\n" + "".join(traceback.format_exception(exc)[-6:])


async def retry_failed(store: Store, journal_id: int | None = None) -> list[int]:
    """Put failed journal rows back to pending; returns their ids."""
    table = InboundJournal.__table__
    stmt = update(table).where(table.c.state == "failed")
    if journal_id is not None:
        stmt = stmt.where(table.c.id == journal_id)
    async with store.session() as session:
        result = await session.execute(stmt.values(state="pending").returning(table.c.id))
        return sorted(r.id for r in result)


__all__ = [
    "AttachmentStore",
    "Journal",
    "Outcome",
    "Processor",
    "ThreadingRules",
    "retry_failed",
]
