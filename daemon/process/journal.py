"""The inbound journal: the one step between a sender and its 250/200.

:class:`Journal` inserts the raw bytes and their remote id with ``ON CONFLICT DO NOTHING`` and
commits; every message waiting at that moment shares one commit (group commit); a duplicate is a
no-op that gets the same success answer. On SQLite the commits are made by
:class:`~frontdesk.daemon.process.sqlite_writer.SqliteJournalWriter` in a process of its own.
:class:`StepAside` lets background work (processing, the outbox) give way while the journal is busy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite

from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.sqlite_writer import Outcomes, Pending, SqliteJournalWriter
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    InboundJournal,
    core_table,
)

log = logging.getLogger(__name__)

_PG_INSERT = (
    "INSERT INTO inbound_journal (channel, remote_id, raw, meta, received_at, state, attempts) "
    "SELECT c, r, w, m, t, 'pending', 0 FROM unnest($1::varchar[], $2::varchar[], $3::bytea[], "
    "$4::json[], $5::timestamptz[]) AS u(c, r, w, m, t) "
    "ON CONFLICT (channel, remote_id) DO NOTHING RETURNING channel, remote_id")
"""A PostgreSQL group commit in one statement, each column an array: asyncpg sends it straight
(no BEGIN and COMMIT of their own: a single statement is its own transaction)."""


class Journal:
    """Group commit of raw inbound messages. ``accept`` returns once the message is durable.

    On SQLite the commits run in the :class:`SqliteJournalWriter`'s process; each batch holds
    whatever arrived while the one before it was committed, and the loop reads requests and
    answers senders meanwhile. The committer task holds the store's write gate while the writer
    drains and hands it on every ``drain_limit`` seconds, so the other writers (processing, the
    outbox) still get their turn.
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
        self._queue: list[Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._counters: dict[str, tuple[Any, Any]] = {}  # channel -> (new, duplicate) children
        table = core_table(InboundJournal)
        # SQLite without a file (an in-memory store): its commits run here, on the loop.
        self._insert = (
            sqlite.insert(table)
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

    def waited_on(self) -> bool:
        """A sender is waiting for a commit at this moment."""
        return self._waiting > 0

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
            await self._sqlite.close()

    def accept(self, channel: str, remote_id: str, raw: bytes,
               meta: Mapping[str, Any]) -> asyncio.Future[bool]:
        """Journal one message; the answer is True if new, False if it was already there, and
        an exception on failure (a future, so a caller gathering many makes no task each)."""
        return self._offer(channel, ((remote_id, raw),), meta, many=False)

    __call__ = accept

    def many(self, channel: str,
             items: Sequence[tuple[str, bytes]]) -> asyncio.Future[list[bool]]:
        """Journal several messages of one channel together, in the same commit: one webhook
        delivery's events. The answer is one boolean per (remote id, raw) item, as ``accept``
        answers; a second copy of an id in ``items`` is a duplicate."""
        if not items:
            done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        return self._offer(channel, items, {}, many=True)

    def _offer(self, channel: str, items: Sequence[tuple[str, bytes]],
               meta: Mapping[str, Any], *, many: bool) -> asyncio.Future[Any]:
        if self._closing:
            raise RuntimeError("frontdesk is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = Pending(channel, items, dict(meta) if meta else {}, self._clock(), future,
                          many)
        if self._sqlite is None:
            self._count(1)
            self._queue.append(pending)
            self._wakeup.set()
        else:
            pending.rows = self._sqlite.rows(pending)
            self._count(1)
            if not self._sqlite.offer(pending):  # no drain running that will take it
                self._wakeup.set()
        return future

    async def _committer(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.start()
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
        """Let the writer's process commit batch after batch while this task holds the gate."""
        try:
            async with self._store.writing():
                await writer.drain(self.drain_limit)
        except Exception as exc:  # noqa: BLE001 - the gate timed out: the senders retry
            self._fail(writer.take_all(), exc)

    async def _commit(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        outcome: Outcomes
        try:
            if self._store.dialect == "postgresql":
                outcome = await self._commit_postgresql(batch)
            else:
                rows = [
                    {"channel": p.channel, "remote_id": remote_id, "raw": raw, "meta": p.meta,
                     "received_at": p.received_at, "state": "pending", "attempts": 0}
                    for p in batch for remote_id, raw in p.items
                ]
                async with self._store.writing(), self._store.engine.begin() as conn:
                    result = await conn.execute(self._insert, rows)
                    outcome = {(r.channel, r.remote_id) for r in result}
        except Exception as exc:  # noqa: BLE001 - every waiting sender gets a temporary failure
            outcome = exc
        self._settle(batch, outcome, time.perf_counter() - started)

    async def _commit_postgresql(self, batch: list[Pending]) -> Outcomes:
        """One statement on a pooled connection's asyncpg handle: one round trip, where
        SQLAlchemy's transaction took three (BEGIN, the INSERT, COMMIT). SMTP ingest on
        PostgreSQL accepted about a sixth more mail a second this way
        (benchmarks/smtp_ingest.py, alternating runs)."""
        channels, remote_ids, raws, metas, times = [], [], [], [], []
        for p in batch:
            meta = json.dumps(p.meta) if p.meta else "{}"
            for remote_id, raw in p.items:
                channels.append(p.channel)
                remote_ids.append(remote_id)
                raws.append(raw)
                metas.append(meta)
                times.append(p.received_at)
        from asyncpg import PostgresError  # the driver of PostgreSQL stores

        async with self._store.engine.connect() as conn:
            handle = await conn.get_raw_connection()
            try:
                found = await handle.driver_connection.fetch(  # type: ignore[union-attr]
                    _PG_INSERT, channels, remote_ids, raws, metas, times)
            except PostgresError:
                raise  # the server refused the statement: the connection is as it was
            except BaseException:
                await conn.invalidate()  # its state is not known: the pool makes a new one
                raise
        return {(r["channel"], r["remote_id"]) for r in found}

    def _settle(self, batch: list[Pending], outcome: Outcomes, seconds: float) -> None:
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
            channel = p.channel
            if outcome is None:  # every row of the commit was new
                answers = [True] * len(p.items)
            else:
                answers = []
                for remote_id, _ in p.items:
                    key = (channel, remote_id)
                    answers.append(key in outcome)
                    outcome.discard(key)  # a second copy in the same batch is a duplicate
            pair = counters.get(channel)
            if pair is None:
                pair = counters[channel] = (metrics.messages_in.labels(channel),
                                            metrics.duplicates.labels(channel))
            new = sum(answers)
            if new:
                pair[0].inc(new)
            if new < len(answers):
                pair[1].inc(len(answers) - new)
            if not p.future.done():
                p.future.set_result(answers if p.many else answers[0])
        self._on_commit()

    def _fail(self, batch: list[Pending], exc: BaseException) -> None:
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
    for its whole transaction, so all of that share is time in which no sender gets an answer.
    With 20 webhook clients (benchmarks/webhook_ingest.py) ingest ran about a fifth faster with
    a factor of 10 than with 5. Once the journal's commits left the loop's process, a factor of
    30 took Meta webhooks from 6,060-6,440 to 7,160-7,840 POSTs/s and halved their p99
    (benchmarks/meta_ingest.py, alternating runs), while processing during that flood made 24-28
    messages in 8 s instead of 70-74: a flood's backlog waits for its end either way. The
    backlog is in the journal, durable, and is worked off as soon as the flood ends.
    """

    def __init__(self, busy: Callable[[], bool], *, factor: float = 30.0,
                 max_wait: float = 1.0,
                 waited_on: Callable[[], bool] = lambda: False) -> None:
        self._busy = busy
        self._waited_on = waited_on
        self._factor = factor
        self._max_wait = max_wait

    def busy(self) -> bool:
        """Senders are waiting on the journal most of the time lately: a flood."""
        return self._busy()

    def contended(self) -> bool:
        """A flood, or a sender waiting on the journal right now (a flood's first moments,
        before ``busy`` says so): a step should hold the single writer only briefly."""
        return self._waited_on() or self._busy()

    async def wait(self, last_step: float, stopping: Callable[[], bool] = lambda: False) -> None:
        if not self._busy():
            return
        deadline = time.monotonic() + min(self._max_wait, max(0.005, self._factor * last_step))
        while self._busy() and not stopping() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
