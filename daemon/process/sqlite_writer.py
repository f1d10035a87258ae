"""The SQLite journal writer: group commits of accepted messages in a thread of their own.

SQLite has one writer at a time; the journal's inserts go through a plain ``sqlite3`` connection
drained by a dedicated thread so the event loop never waits on ``fsync``, with WAL checkpoints
beside the commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from frontdesk.storage.db import Store

log = logging.getLogger(__name__)



@dataclass(slots=True)
class Pending:
    """One sender's wait: the message it offered, or the messages of one webhook offered
    together (``many``), which go into the same commit and are answered at once."""

    channel: str
    items: Sequence[tuple[str, bytes]]
    """(remote id, raw bytes) of each message."""
    meta: Mapping[str, Any]
    received_at: datetime
    future: asyncio.Future[Any] = field(repr=False)
    many: bool = False
    """The answer is a list of booleans, one per item (else the one item's boolean)."""
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    """SQLite: the INSERT's parameters, made on the loop."""


Outcomes = set[tuple[str, str]] | BaseException
"""What one group commit came to: the (channel, remote id) pairs it inserted, or its error."""


class SqliteJournalWriter:
    """The journal's insert on SQLite through the standard library, in a thread of its own.

    The commit is the whole of what a sender waits for, and its fsync must not hold up the
    event loop (the rest of the store's statements run on the loop's thread, see
    :mod:`frontdesk.storage.sqlite_inline`); here the whole group commit is one call, outside
    the ORM, in this thread.
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
    rows_per_statement = 100
    """At most this many rows in one statement (500 parameters: under SQLite's oldest limit of
    999; every size up to it stays in the connection's statement cache)."""
    rows_per_commit = 1000
    """At most this many rows in one commit (in several statements), unless a single sender's
    messages are more: they go in one commit whatever their number."""
    linger = 0.002
    """Seconds the thread waits for another message before a drain ends."""
    checkpoint_interval = 0.2
    """Seconds between WAL checkpoints by the writer's checkpoint thread (0: SQLite's own)."""

    def __init__(self, store: Store,
                 settle: Callable[[list[Pending], Outcomes, float], None]) -> None:
        assert store.sqlite_path is not None
        self._path = store.sqlite_path
        self._synchronous = store.synchronous
        self._settle = settle
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}
        # Guards _pending, _draining and _lingering between the loop and the thread.
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Pending] = []
        self._draining = False
        self._lingering = False
        self._kick_due = False
        self._checkpointer: threading.Thread | None = None
        self._closed = threading.Event()

    def offer(self, pending: Pending) -> bool:
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

    def take_all(self) -> list[Pending]:
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

    def _take(self, deadline: float) -> list[Pending]:
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
            pending = self._pending
            if not pending or time.monotonic() >= deadline:
                self._draining = False
                return []
            rows, taken = 0, 0
            for p in pending:  # whole senders, up to rows_per_commit rows (at least one sender)
                rows += len(p.rows)
                if taken and rows > self.rows_per_commit:
                    break
                taken += 1
            if taken == len(pending):
                self._pending = []
                return pending
            batch, self._pending = pending[:taken], pending[taken:]
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
    def rows(p: Pending) -> list[tuple[Any, ...]]:
        """The INSERT's parameters for each of the sender's messages, as the models write them
        (UTCDateTime: naive UTC text with microseconds; JSON: json.dumps)."""
        received = p.received_at.astimezone(UTC).replace(tzinfo=None).isoformat(
            " ", "microseconds")
        meta = json.dumps(p.meta) if p.meta else "{}"
        channel = p.channel
        return [(channel, remote_id, raw, meta, received) for remote_id, raw in p.items]

    def _statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._columns + ", ".join([self._values] * rows) + self._conflict
            self._statements[rows] = sql
        return sql

    def _insert(self, batch: list[Pending]) -> set[tuple[str, str]]:
        """The batch's rows in one statement outside any explicit transaction, which SQLite
        runs as a transaction of its own: the write lock, the rows and the synced commit in a
        single call, one release of the GIL; more rows than ``rows_per_statement``: several
        statements in one explicit transaction, still one synced commit. Returns the
        (channel, remote id) pairs that were new."""
        conn = self._connect()
        params = [row for p in batch for row in (p.rows or self.rows(p))]
        size = self.rows_per_statement
        if len(params) <= size:
            return self._insert_rows(conn, params)
        conn.execute("BEGIN IMMEDIATE")
        try:
            new: set[tuple[str, str]] = set()
            for start in range(0, len(params), size):
                new |= self._insert_rows(conn, params[start:start + size])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return new

    def _insert_rows(self, conn: sqlite3.Connection,
                     params: list[tuple[Any, ...]]) -> set[tuple[str, str]]:
        """One INSERT of ``params``; the pairs it inserted. When some were there already (a
        retried delivery), those are the rows the statement inserted, whose ids are the block
        that ends at its last insert rowid."""
        cursor = conn.execute(self._statement(len(params)), [x for row in params for x in row])
        inserted = cursor.rowcount
        if inserted == len(params):
            return {(row[0], row[1]) for row in params}
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
