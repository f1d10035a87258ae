"""The SQLite journal's writer process: group commits of accepted messages, outside the daemon.

The daemon (:class:`~frontdesk.daemon.process.sqlite_writer.SqliteJournalWriter`) starts this
file as a script of its own (``python -I journal_child.py FD PATH SYNCHRONOUS CHECKPOINT
WAL_SIZE_LIMIT``) and talks to it over the socket ``FD``. Each request is one group commit: a
frame (4-byte big-endian length, then :mod:`marshal` data) holding a list of rows ``(channel,
remote id, raw, meta JSON, received at)``, written exactly as the SQLAlchemy models write them.
Each answer is a frame of ``None`` (every row was new), a list of the ``(channel, remote id)``
pairs that were new (some were there already: a retried delivery), or a string naming the error
(nothing was stored).

A process of its own, not a thread, because the commits then share nothing with the event loop:
not the GIL either, whose hand-overs between a writer thread and the loop cost the webhook
routes about a third of their rate (benchmarks/meta_ingest.py). It imports only the standard
library. It ignores SIGTERM and SIGINT (the service's stop reaches every process of its cgroup,
and the daemon still commits what its senders wait for while it stops) and exits when the socket
closes: when the daemon closes it, or dies, even by ``kill -9``.
"""

from __future__ import annotations

import marshal
import signal
import socket
import sqlite3
import sys
import threading
from typing import Any

Row = tuple[str, str, bytes, str, str]
"""(channel, remote id, raw bytes, meta as JSON text, received at as naive UTC text)."""


class JournalFile:
    """The journal's inserts on one ``sqlite3`` connection, with WAL checkpoints beside them."""

    _columns = ("INSERT INTO inbound_journal (channel, remote_id, raw, meta, received_at, state, "
                "attempts) VALUES ")
    _values = "(?, ?, ?, ?, ?, 'pending', 0)"
    _conflict = " ON CONFLICT (channel, remote_id) DO NOTHING"
    rows_per_statement = 100
    """At most this many rows in one statement (500 parameters: under SQLite's oldest limit of
    999; every size up to it stays in the connection's statement cache)."""

    def __init__(self, path: str, synchronous: str, checkpoint_interval: float,
                 wal_size_limit: int = -1) -> None:
        self._path = path
        self._synchronous = synchronous
        self._checkpoint_interval = checkpoint_interval
        self._wal_size_limit = wal_size_limit
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}
        self._checkpointer: threading.Thread | None = None
        self._closed = threading.Event()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute("PRAGMA busy_timeout=30000")
            # While commits follow each other without a pause (a flood), no checkpoint can
            # copy the whole log, so the log file grows (by about 17 MB a second of flood,
            # measured); once it has been copied after the flood, the first commit starts it
            # again from its beginning and cuts the file back to this size.
            conn.execute(f"PRAGMA journal_size_limit={int(self._wal_size_limit)}")
            if self._checkpoint_interval > 0:
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
            while not self._closed.wait(self._checkpoint_interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next one tries again
                    print(f"journal: WAL checkpoint failed: {exc}", file=sys.stderr, flush=True)
        finally:
            conn.close()

    def _statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._columns + ", ".join([self._values] * rows) + self._conflict
            self._statements[rows] = sql
        return sql

    def insert(self, rows: list[Row]) -> list[tuple[str, str]] | None:
        """The rows in one synced commit; None when every row was new, else the (channel,
        remote id) pairs that were.

        Up to ``rows_per_statement`` rows are one statement outside any explicit transaction,
        which SQLite runs as a transaction of its own: the write lock, the rows and the commit
        in a single call. More are several statements in one explicit transaction."""
        conn = self._connect()
        size = self.rows_per_statement
        if len(rows) <= size:
            return self._insert_rows(conn, rows)
        conn.execute("BEGIN IMMEDIATE")
        try:
            parts = [self._insert_rows(conn, rows[start:start + size])
                     for start in range(0, len(rows), size)]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if all(part is None for part in parts):
            return None
        new: list[tuple[str, str]] = []
        for start, part in zip(range(0, len(rows), size), parts, strict=True):
            if part is None:
                new.extend((r[0], r[1]) for r in rows[start:start + size])
            else:
                new.extend(part)
        return new

    def _insert_rows(self, conn: sqlite3.Connection,
                     rows: list[Row]) -> list[tuple[str, str]] | None:
        """One INSERT of ``rows``. When some were there already (a retried delivery), the new
        ones are the rows the statement inserted, whose ids are the block that ends at its last
        insert rowid."""
        cursor = conn.execute(self._statement(len(rows)), [x for row in rows for x in row])
        inserted = cursor.rowcount
        if inserted == len(rows):
            return None
        if inserted <= 0:
            return []
        last = cursor.lastrowid
        assert last is not None
        return [tuple(r) for r in conn.execute(
            "SELECT channel, remote_id FROM inbound_journal WHERE id BETWEEN ? AND ?",
            (last - inserted + 1, last))]

    def close(self) -> None:
        self._closed.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def frame(value: Any) -> bytes:
    data = marshal.dumps(value)
    return len(data).to_bytes(4, "big") + data


def serve(sock: socket.socket, journal: JournalFile) -> None:
    """Answer each request frame on ``sock`` with its commit's outcome, until it closes."""
    reader = sock.makefile("rb")
    try:
        while True:
            header = reader.read(4)
            if len(header) < 4:
                return
            size = int.from_bytes(header, "big")
            payload = reader.read(size)
            if len(payload) < size:
                return
            answer: Any
            try:
                answer = journal.insert(marshal.loads(payload))
            except Exception as exc:  # noqa: BLE001 - the daemon answers the senders with it
                answer = f"{type(exc).__name__}: {exc}"
            sock.sendall(frame(answer))
    finally:
        reader.close()


def main(argv: list[str]) -> int:
    fd, path, synchronous, checkpoint, wal_size_limit = argv
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    journal = JournalFile(path, synchronous, float(checkpoint), int(wal_size_limit))
    with socket.socket(fileno=int(fd)) as sock:
        try:
            serve(sock, journal)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon is gone: nothing is waiting for an answer
        finally:
            journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
