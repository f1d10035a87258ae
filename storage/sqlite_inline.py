"""SQLite for SQLAlchemy's asyncio engine without a thread per connection.

SQLAlchemy's ``sqlite+aiosqlite`` dialect talks to the database through aiosqlite, which runs
every call in a thread of its own and hands each result back to the event loop: a cursor, its
execute, its fetch and its close are four round trips between two threads for one statement.
Processing a message costs a few dozen statements, so the round trips, not SQLite, were where
processing spent its time (issue 18): about 290 µs of CPU per trivial statement against 19 µs
when the same statement is run directly.

This module gives the dialect a connection with aiosqlite's surface whose calls run at once, on
the event loop's own thread. SQLite answers a point query or a small write in microseconds, and
in WAL mode readers never wait for the writer; frontdesk's own writers take turns on the store's
write gate (:meth:`~frontdesk.storage.db.Store.writing`) before they begin, so a write
transaction does not wait on SQLite's lock either. What remains is another process holding the
write lock (a ``frontdesk`` command, ``sqlite3`` in a shell): SQLite's busy handler would then
sleep on the loop's thread and stall everything, so the connection's busy timeout is kept short
(:data:`BUSY_SLICE_MS`) and a statement that finds the database busy is tried again after an
``asyncio.sleep``, giving the loop back in between, until :data:`BUSY_TIMEOUT` has passed, which
is then the same "database is locked" error SQLite's own busy timeout gives.

The price: one long statement (a dashboard chart over years of conversations, an export) holds
the loop for as long as SQLite takes to answer it, where aiosqlite's thread would have let the
loop run beside it. The hot path's statements (processing, sending, the scheduler) are point
reads and small writes; the dashboard's charts and the API's lists are the ones that read many
rows.

A statement that completes at once never gives the loop a turn by itself (SQLAlchemy's await of
it returns without suspending), so a long transaction of quick statements would keep the SMTP
server and the webhooks from even reading what arrives: a connection that has run statements
for :data:`YIELD_EVERY` without a pause lets the loop take a turn (``asyncio.sleep(0)``) after
its next one.

:func:`connect` is the dialect's ``async_creator_fn`` (see :func:`.db.make_engine`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

BUSY_SLICE_MS = 20
"""The connection's own busy timeout: the longest SQLite's busy handler holds up the loop."""

BUSY_TIMEOUT = 30.0
"""Seconds a statement keeps trying while the database is busy (as ``busy_timeout`` did)."""

YIELD_EVERY = 0.002
"""Seconds of statements after which a connection lets the loop take a turn."""

_BUSY = sqlite3.SQLITE_BUSY


def _retryable(exc: sqlite3.OperationalError) -> bool:
    """The database was locked by another connection and the statement did nothing: trying it
    again may succeed. Not ``SQLITE_BUSY_SNAPSHOT``: a read transaction that wants to write after
    another writer committed can never succeed, and SQLite says so at once."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "database is locked" in str(exc)
    return code == _BUSY or (code & 0xFF == _BUSY and code != sqlite3.SQLITE_BUSY_SNAPSHOT)


async def _patiently(call: Callable[[], Any]) -> Any:
    """``call()``, again after a pause each time the database is busy, until BUSY_TIMEOUT."""
    deadline = 0.0
    pause = 0.001
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _retryable(exc):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + BUSY_TIMEOUT
            elif now >= deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)


class Cursor:
    """aiosqlite's cursor surface over a :class:`sqlite3.Cursor`."""

    __slots__ = ("_cursor", "_owner")

    def __init__(self, cursor: sqlite3.Cursor, owner: Connection) -> None:
        self._cursor = cursor
        self._owner = owner

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        await _patiently(lambda: self._cursor.execute(sql, parameters))
        await self._owner.turn()
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Cursor:
        rows = parameters if isinstance(parameters, Sequence) else list(parameters)
        await _patiently(lambda: self._cursor.executemany(sql, rows))
        await self._owner.turn()
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _Now:
    """Stands in for aiosqlite's queue to its thread, which SQLAlchemy uses directly to set the
    isolation level: the call is made at once and its future answered."""

    __slots__ = ()

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # noqa: BLE001 - the awaiting caller gets it
            future.set_exception(exc)


class Connection:
    """aiosqlite's connection surface over a :class:`sqlite3.Connection`, as SQLAlchemy's
    aiosqlite dialect uses it (``_conn``, ``_connection`` and ``_tx`` included)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn
        self._tx = _Now()
        self._since = time.monotonic()  # the loop's last turn while this connection worked

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def turn(self) -> None:
        """Let the loop take a turn if this connection has kept it for YIELD_EVERY."""
        now = time.monotonic()
        if now - self._since >= YIELD_EVERY:
            await asyncio.sleep(0)
            self._since = time.monotonic()

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor(), self)

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        cursor = Cursor(self._conn.cursor(), self)
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await _patiently(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


async def _open(database: str, kwargs: dict[str, Any]) -> Connection:
    conn = sqlite3.connect(database, check_same_thread=False, **kwargs)
    conn.execute(f"PRAGMA busy_timeout={BUSY_SLICE_MS}")  # see the module's docstring
    return Connection(conn)


def connect(database: str, **kwargs: Any) -> Any:
    """An awaitable :class:`Connection`, as ``aiosqlite.connect`` returns one (its own
    ``iter_chunk_size`` and ``loop`` arguments are not needed here)."""
    for own in ("iter_chunk_size", "loop", "check_same_thread"):
        kwargs.pop(own, None)
    return _open(database, kwargs)
