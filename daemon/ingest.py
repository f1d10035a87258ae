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
import math
import os
import sqlite3
import threading
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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import Attachment as InboundAttachment
from frontdesk.channels.base import InboundMessage
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

from .metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Parser = Callable[[bytes, Mapping[str, Any]], InboundMessage]


class DueTimes(Protocol):
    def first_response_due(self, start: datetime) -> datetime: ...


@dataclass(slots=True)
class _Pending:
    channel: str
    remote_id: str
    raw: bytes
    meta: Mapping[str, Any]
    received_at: datetime
    future: asyncio.Future[bool] = field(repr=False)
    row: tuple[Any, ...] = ()  # SQLite: the INSERT's parameters, made on the loop


Outcomes = set[tuple[str, str]] | BaseException
"""What one group commit came to: the (channel, remote id) pairs it inserted, or its error."""


class Journal:
    """Group commit of raw inbound messages. ``accept`` returns once the message is durable.

    On SQLite the commits run in the :class:`SqliteJournalWriter`'s thread, which takes whatever
    arrived while it was committing as its next batch without a round trip through the event
    loop: the loop answers one batch's senders while the thread commits the next. The committer
    task holds the store's write gate while the thread drains and hands it on every
    ``drain_limit`` seconds, so the other writers (processing, the outbox) still get their turn.
    """

    def __init__(self, store: Store, *, clock: Clock, metrics: Metrics,
                 on_commit: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._on_commit = on_commit
        self._sqlite = (SqliteJournalWriter(store, self._settle) if store.sqlite_path
                        else None)
        self._waiting = 0  # senders whose accept has not been answered yet
        self._load = 0.0  # the share of recent time with senders waiting (see idle())
        self._load_at = time.monotonic()
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._counters: dict[str, tuple[Any, Any]] = {}  # channel -> (new, duplicate) children
        table = core_table(InboundJournal)
        dialect_insert = sqlite.insert if store.dialect == "sqlite" else postgresql.insert
        self._insert = (
            dialect_insert(table)
            .on_conflict_do_nothing(index_elements=["channel", "remote_id"])
            .returning(table.c.channel, table.c.remote_id)
        )

    load_window = 0.1
    """Seconds over which the share of time with senders waiting is averaged (exponentially)."""

    busy_load = 0.5
    """The share of recent time with senders waiting above which the journal is not idle."""

    drain_limit = 0.02
    """Seconds of back-to-back commits (SQLite) after which the write gate is handed on."""

    def idle(self) -> bool:
        """Senders have not been waiting for commits most of the time lately: background work
        (processing, sending) need not step aside. A steady 100 messages a second leaves the
        journal idle most of the time; a flood of them does not."""
        return self.load() < self.busy_load

    def load(self) -> float:
        """The share of the last ``load_window`` seconds or so in which a sender was waiting."""
        now = time.monotonic()
        decay = math.exp((self._load_at - now) / self.load_window)
        return self._load * decay + (1.0 - decay if self._waiting else 0.0)

    def _count(self, change: int) -> None:
        was = self._waiting > 0
        self._waiting += change
        if was != (self._waiting > 0):  # a new segment of the load starts: fold in the last one
            now = time.monotonic()
            decay = math.exp((self._load_at - now) / self.load_window)
            self._load = self._load * decay + (1.0 - decay if was else 0.0)
            self._load_at = now

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
        pending = _Pending(channel, remote_id, raw, dict(meta), self._clock(), future)
        if self._sqlite is None:
            self._count(1)
            self._queue.append(pending)
            self._wakeup.set()
        else:
            # the parameters are made here so that the writer's thread, whose commits are the
            # sender's wait, needs the GIL as little as possible
            pending.row = self._sqlite.row(pending)
            self._count(1)
            if not self._sqlite.offer(pending):  # no drain running that will take it
                self._wakeup.set()
        return await future

    async def _committer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._sqlite is not None:
                while self._sqlite.waiting():
                    await self._drain(self._sqlite)
            else:
                while self._queue:
                    batch, self._queue = self._queue, []
                    await self._commit(batch)
            if self._closing:
                return

    async def _drain(self, writer: SqliteJournalWriter) -> None:
        """Let the writer's thread commit batch after batch while this task holds the gate."""
        try:
            async with self._store.writing():
                await writer.drain(self.drain_limit)
        except Exception as exc:  # noqa: BLE001 - the gate timed out: the senders retry
            self._fail(writer.take_all(), exc)

    async def _commit(self, batch: list[_Pending]) -> None:
        rows = [
            {"channel": p.channel, "remote_id": p.remote_id, "raw": p.raw, "meta": p.meta,
             "received_at": p.received_at, "state": "pending", "attempts": 0}
            for p in batch
        ]
        started = time.perf_counter()
        outcome: Outcomes
        try:
            async with self._store.writing(), self._store.engine.begin() as conn:
                result = await conn.execute(self._insert, rows)
                outcome = {(r.channel, r.remote_id) for r in result}
        except Exception as exc:  # noqa: BLE001 - every waiting sender gets a temporary failure
            outcome = exc
        self._settle(batch, outcome, time.perf_counter() - started)

    def _settle(self, batch: list[_Pending], outcome: Outcomes, seconds: float) -> None:
        """Answer the senders of one group commit (on the loop)."""
        if isinstance(outcome, BaseException):
            self._fail(batch, outcome)
            return
        self._count(-len(batch))
        metrics = self._metrics
        metrics.journal_commit_seconds.observe(seconds)
        metrics.journal_batch_size.observe(len(batch))
        counters = self._counters
        for p in batch:
            key = (p.channel, p.remote_id)
            is_new = key in outcome
            outcome.discard(key)  # a second copy in the same batch is a duplicate
            pair = counters.get(p.channel)
            if pair is None:
                pair = counters[p.channel] = (metrics.messages_in.labels(p.channel),
                                              metrics.duplicates.labels(p.channel))
            pair[0 if is_new else 1].inc()
            if not p.future.done():
                p.future.set_result(is_new)
        self._on_commit()

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        if not batch:
            return
        self._count(-len(batch))
        log.error("journal commit of %d message(s) failed: %s", len(batch), exc)
        self._metrics.journal_errors.inc()
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)


class StepAside:
    """Accept fast, do the rest later: background work (processing, sending) steps aside while
    messages flood in, so their commits and the senders' 250/200 go first.

    ``busy`` says whether senders have been waiting on the journal most of the time lately
    (:meth:`Journal.idle`); at an ordinary rate they have not, and a step goes at once. Under a
    flood a step waits for the flood to ebb, but no longer than ``factor`` times what the
    worker's last step took (and at most ``max_wait``): the worker still gets about
    1/(1+factor) of the time and never stops. A step holds the store's single writer (SQLite)
    for its whole transaction, so all of that share is time in which no sender gets an answer:
    with 20 webhook clients (benchmarks/webhook_ingest.py) ingest ran about a fifth faster with
    a factor of 10 than with 5, and no faster with 20 or with no processing at all. The backlog
    is in the journal, durable, and is worked off as soon as the flood ends.
    """

    def __init__(self, busy: Callable[[], bool], *, factor: float = 10.0,
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

    The loop offers messages into a list that the thread takes from: one drain commits batch
    after batch, each holding everything that arrived during the commit before it, and hands
    each batch's outcome back to the loop (``settle``) as soon as it is durable. When nothing is
    waiting the thread lingers a moment for the next message before it gives the gate back, so
    under steady traffic a batch starts without a round trip through the loop.
    """

    _columns = ("INSERT INTO inbound_journal (channel, remote_id, raw, meta, received_at, state, "
                "attempts) VALUES ")
    _values = "(?, ?, ?, ?, ?, 'pending', 0)"
    _conflict = " ON CONFLICT (channel, remote_id) DO NOTHING"
    rows_per_commit = 100
    """At most this many rows in one commit's statement (500 parameters: under SQLite's oldest
    limit of 999; every size up to it stays in the connection's statement cache)."""
    linger = 0.002
    """Seconds the thread waits for another message before a drain ends."""
    checkpoint_interval = 0.2
    """Seconds between WAL checkpoints by the writer's checkpoint thread (0: SQLite's own)."""

    def __init__(self, store: Store,
                 settle: Callable[[list[_Pending], Outcomes, float], None]) -> None:
        assert store.sqlite_path is not None
        self._path = store.sqlite_path
        self._synchronous = store.synchronous
        self._settle = settle
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}
        # Guards _pending, _draining and _lingering between the loop and the thread.
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Pending] = []
        self._draining = False
        self._lingering = False
        self._kick_due = False
        self._checkpointer: threading.Thread | None = None
        self._closed = threading.Event()

    def offer(self, pending: _Pending) -> bool:
        """Queue one message; True when a running drain will take it (no need to start one).

        A lingering thread is woken once per turn of the loop, not per message: everything the
        loop read in one turn goes into one commit."""
        with self._cond:
            self._pending.append(pending)
            kick = self._lingering and not self._kick_due
            if kick:
                self._kick_due = True
            draining = self._draining
        if kick:
            asyncio.get_running_loop().call_soon(self._kick)
        return draining

    def _kick(self) -> None:
        with self._cond:
            self._kick_due = False
            self._cond.notify()

    def waiting(self) -> bool:
        """Messages offered and not yet taken into a commit."""
        return bool(self._pending)

    def take_all(self) -> list[_Pending]:
        with self._cond:
            batch, self._pending = self._pending, []
        return batch

    async def drain(self, limit: float) -> None:
        """Commit what is offered until nothing comes for a moment or ``limit`` seconds have
        passed (the caller holds the store's write gate)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            self._draining = True
        try:
            await loop.run_in_executor(self._executor, self._drain, loop, limit)
        finally:
            with self._cond:
                self._draining = False

    def _take(self, deadline: float) -> list[_Pending]:
        """The next batch, or [] when the drain should end (and it is marked ended)."""
        with self._cond:
            if not self._pending and self.linger > 0:
                wait = min(self.linger, deadline - time.monotonic())
                if wait > 0:
                    self._lingering = True
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._lingering = False
            batch = self._pending
            if not batch or time.monotonic() >= deadline:
                self._draining = False
                return []
            if len(batch) > self.rows_per_commit:
                batch, self._pending = batch[:self.rows_per_commit], batch[self.rows_per_commit:]
            else:
                self._pending = []
            return batch

    def _drain(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        deadline = time.monotonic() + limit
        while batch := self._take(deadline):
            started = time.perf_counter()
            outcome: Outcomes
            try:
                outcome = self._insert(batch)
            except Exception as exc:  # noqa: BLE001 - the loop answers the senders with it
                outcome = exc
            loop.call_soon_threadsafe(self._settle, batch, outcome,
                                      time.perf_counter() - started)
            if isinstance(outcome, BaseException):
                with self._cond:
                    self._draining = False
                return

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute("PRAGMA busy_timeout=30000")
            if self.checkpoint_interval > 0:
                # SQLite checkpoints in the commit that grows the WAL past 1,000 pages: tens of
                # milliseconds in which every sender waits. A thread of its own does it instead,
                # beside the commits (a passive checkpoint never blocks the writer).
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = threading.Thread(
                    target=self._checkpoints, name="journal-checkpoint", daemon=True)
                self._checkpointer.start()
            self._conn = conn
        return self._conn

    def _checkpoints(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._closed.wait(self.checkpoint_interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next one tries again
                    log.warning("journal: WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    @staticmethod
    def row(p: _Pending) -> tuple[Any, ...]:
        """The INSERT's parameters for one message, as the models write them (UTCDateTime: naive
        UTC text with microseconds; JSON: json.dumps)."""
        received = p.received_at.astimezone(UTC).replace(tzinfo=None)
        return (p.channel, p.remote_id, p.raw, json.dumps(p.meta),
                received.isoformat(" ", "microseconds"))

    def _statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._columns + ", ".join([self._values] * rows) + self._conflict
            self._statements[rows] = sql
        return sql

    def _insert(self, batch: list[_Pending]) -> set[tuple[str, str]]:
        """The batch's rows in one statement outside any explicit transaction, which SQLite
        runs as a transaction of its own: the write lock, the rows and the synced commit in a
        single call, one release of the GIL. Returns the (channel, remote id) pairs that were
        new; when some were there already (a retried delivery), those are the rows the
        statement inserted, whose ids are the block that ends at its last insert rowid."""
        conn = self._connect()
        params = [p.row or self.row(p) for p in batch]
        cursor = conn.execute(self._statement(len(params)), [x for row in params for x in row])
        inserted = cursor.rowcount
        if inserted == len(params):
            return {(p.channel, p.remote_id) for p in batch}
        if inserted <= 0:
            return set()
        last = cursor.lastrowid
        assert last is not None
        return set(conn.execute("SELECT channel, remote_id FROM inbound_journal "
                                "WHERE id BETWEEN ? AND ?", (last - inserted + 1, last)))

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
        self._closed.set()
        if self._checkpointer is not None:
            self._checkpointer.join()


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
    retry: bool = False
    """Several instances: a race with another one (the same new sender at the same moment, a
    deadlock) rolled this row back; it stays pending and is processed again shortly."""


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
    """Turns journal rows into contacts, conversations and messages.

    Several instances on one PostgreSQL process one journal: each commit chunk first locks its
    rows with ``FOR UPDATE SKIP LOCKED`` (rows another instance holds are skipped, neither waited
    for nor processed twice) and parses only those. A contact is locked before its conversation
    is chosen or opened, so two messages of one customer at once end in one conversation. When
    two instances meet on the same new sender (a unique key), or deadlock, the loser's row is
    rolled back alone, left pending and tried again in a moment (``race_attempts`` at most); a
    real parse or apply error is a dead letter as before.
    """

    batch_size = 50
    commit_every = 2  # SQLite; on PostgreSQL one message per transaction (_process_locked)
    race_attempts = 40
    """A row rolled back by races this many times is a dead letter after all (a unique key that
    never stops clashing is a bug, not a race)."""
    race_pause = 0.05
    """Seconds before a batch with a row rolled back by a race is tried again."""

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
                    break
                if any(o.retry for o in done):  # the other instance's commit, then again
                    await asyncio.sleep(self.race_pause)
                await asyncio.sleep(0)  # let the SMTP server answer in between batches

    async def process_pending(self, ids: Sequence[int] | None = None) -> list[Outcome]:
        """Process one batch of pending journal rows (or the given ids); return the outcomes."""
        table = core_table(InboundJournal)
        query = select(table.c.id, table.c.channel, table.c.raw, table.c.meta,
                       table.c.received_at).where(table.c.state == "pending")
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        query = query.order_by(table.c.id).limit(self.batch_size)
        async with self._store.read_engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return []
        if self._store.dialect == "postgresql":
            done = await self._process_locked(rows)
        else:
            done = await self._process_read(rows)
        for row, outcome in done:
            if outcome.error is None and outcome.message_id is not None:
                self._metrics.ingest_latency.labels(row.channel).observe(
                    max(0.0, (self._clock() - row.received_at).total_seconds()))
            elif outcome.error is not None:
                self._metrics.journal_failed.labels(row.channel).inc()
                log.warning("journal #%d (%s) failed to process: %s",
                            row.id, row.channel, outcome.error.splitlines()[0])
        return [outcome for _row, outcome in done]

    async def _parse(self, rows: Sequence[Any]) -> list[tuple[Any, InboundMessage | None,
                                                              str | None]]:
        """Parse journal rows (pure) and store their attachments' files."""
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
        return parsed

    async def _process_read(self, rows: Sequence[Any]) -> list[tuple[Any, Outcome]]:
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
                    done.append((row, await self._apply_one(session, row, message, error, now)))
            self._last_chunk = time.monotonic() - began
            await asyncio.sleep(0)
        return done

    async def _process_locked(self, rows: Sequence[Any]) -> list[tuple[Any, Outcome]]:
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
                                                                now)))
            self._last_chunk = time.monotonic() - began
            await asyncio.sleep(0)
        return done

    async def _apply_one(self, session: AsyncSession, row: Any, message: InboundMessage | None,
                         error: str | None, now: datetime) -> Outcome:
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
            except Exception as exc:  # noqa: BLE001 - rolled back alone, kept as a dead letter
                if self._race(exc):
                    return await self._again(session, row, exc, now)
                error = _describe(exc)
        await session.execute(
            update(table).where(table.c.id == row.id, table.c.state == "pending")
            .values(state="failed", error=error, processed_at=now, attempts=table.c.attempts + 1)
        )
        return Outcome(row.id, None, None, error)

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
        query = (select(Contact).join(Identity, Identity.contact_id == Contact.id)
                 .where(Identity.channel == m.channel, Identity.address == m.sender_address))
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
    summary = f"{type(exc).__name__}: {exc}"
    return summary + "\n" + "".join(traceback.format_exception(exc)[-6:])


async def retry_failed(store: Store, journal_id: int | None = None) -> list[int]:
    """Put failed journal rows back to pending; returns their ids."""
    table = core_table(InboundJournal)
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
