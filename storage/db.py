"""Engines, sessions and migrations: the store's unit of work.

SQLite is the embedded default: WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` so
read-then-write transactions never fail with "database is locked". Its connections are
:mod:`.sqlite_inline`'s: SQLAlchemy's aiosqlite dialect, but each statement runs at once on the
event loop's thread instead of through a thread per connection.
PostgreSQL (asyncpg) is the same schema through the same Alembic migrations, through a bounded
pool (``[database]`` pool_size, max_overflow, pool_timeout, pool_recycle), with a connect timeout
and a server-side ``statement_timeout``; connections are checked before use (pre-ping), so a
restarted server costs the next caller one failed try, not a broken pool.

SQLite's file is created 0640 by frontdesk before SQLite opens it (SQLite would make it 0644 less
the umask), and its ``-wal`` and ``-shm`` files take the database file's mode; a store left
looser by an older frontdesk is tightened at the first connection (:mod:`.modes`).

While the store is away, callers fail fast (a refused or timed-out connect, an exhausted pool) and
answer temporarily (SMTP 451, HTTP 503); background loops wait with :class:`Backoff` and log the
outage once, not a traceback per try.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from frontdesk.storage import sqlite_inline
from frontdesk.storage.modes import FILE_MODE, tighten

if TYPE_CHECKING:
    from frontdesk.config.schema import DatabaseConfig

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READ_ONLY = "frontdesk_read_only"
"""Execution option of :attr:`Store.read_engine`: its transactions only read."""
GATE_TIMEOUT = 30.0  # like SQLite's busy_timeout: a writer waits this long for its turn


def _sqlite_path(url: str) -> str | None:
    database = make_url(url).database
    return None if not database or database == ":memory:" else str(Path(database).expanduser())


def _private_sqlite_file(path: str) -> None:
    """Before SQLite first opens the store: create its file :data:`~.modes.FILE_MODE` (SQLite
    would create it 0644 less the umask; the ``-wal`` and ``-shm`` files SQLite makes later copy
    the database file's mode), or tighten an existing store's files that others could read."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten([Path(path + suffix) for suffix in ("", "-wal", "-shm", "-journal")],
                "the store's files")
    else:
        os.close(fd)


WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes SQLite's write-ahead log file is cut back to when the log starts again from its
beginning (a checkpoint copied all of it). A flood of commits can grow the log far beyond its
usual few megabytes; this bounds what stays on disk afterwards."""


def _sqlite_events(engine: AsyncEngine, synchronous: str, path: str | None) -> None:
    checked = path is None

    @event.listens_for(engine.sync_engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        # Connect through sqlite_inline (statements run on the loop's thread) in place of
        # aiosqlite's thread per connection: the dialect calls it with aiosqlite's arguments.
        params["async_creator_fn"] = sqlite_inline.connect
        nonlocal checked
        if not checked:  # once per engine: at the first connection
            checked = True
            with contextlib.suppress(OSError):  # SQLite says what is wrong when it opens it
                _private_sqlite_file(str(path))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # (the busy timeout is sqlite_inline's own: short tries, the loop free between them)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock at once (a deferred one that reads first
        # and writes later fails at once, past the busy timeout, when another writer committed
        # in between). A read transaction (Store.reader, Store.read_engine) is deferred: in WAL
        # mode it reads a snapshot and never holds up a writer, however long it takes.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, synchronous: str = "full", **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().parent
            if not folder.is_dir():  # a typo, not a place to create folders in
                raise StoreNotReady(f"the store's folder {folder} does not exist "
                                    "(database.url); create it, or fix the path")
        engine = create_async_engine(url, **kwargs)
        uri = bool(parsed.query.get("uri")) or (parsed.database or "").startswith("file:")
        _sqlite_events(engine, synchronous, None if uri else _sqlite_path(url))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


APPLICATION_NAME = "frontdesk"
"""What ``pg_stat_activity.application_name`` shows for frontdesk's connections."""


def engine_options(database: DatabaseConfig) -> dict[str, Any]:
    """The engine's pool and connection settings from ``[database]``; none for SQLite (one file,
    one writer: the pool and timeouts there are SQLAlchemy's own and the busy timeout)."""
    if make_url(database.url).get_backend_name() != "postgresql":
        return {}
    server_settings = {"application_name": APPLICATION_NAME}
    statement_ms = int(database.statement_timeout.total_seconds() * 1000)
    if statement_ms:  # "0s": frontdesk sets none (the server's or role's own setting applies)
        server_settings["statement_timeout"] = str(statement_ms)
    return {
        "pool_size": database.pool_size,
        "max_overflow": database.max_overflow,
        "pool_timeout": database.pool_timeout.total_seconds(),
        "pool_recycle": int(database.pool_recycle.total_seconds()),
        "pool_pre_ping": True,
        # asyncpg.connect(): timeout bounds the TCP connect and the start-up exchange.
        "connect_args": {"timeout": database.connect_timeout.total_seconds(),
                         "server_settings": server_settings},
    }


def _unreachable_driver_errors() -> tuple[type[BaseException], ...]:
    try:
        from asyncpg import exceptions as pg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return ()
    return (pg.PostgresConnectionError, pg.CannotConnectNowError, pg.AdminShutdownError,
            pg.CrashShutdownError, pg.TooManyConnectionsError, pg.InterfaceError)


_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
})


def _network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, socket.gaierror, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store cannot be reached just now (the server down or restarting,
    the network, the pool exhausted, SQLite's writer busy) rather than a bug or bad data: a
    condition to wait out and retry, reported once, without a traceback."""
    driver = _unreachable_driver_errors()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (sa_exc.TimeoutError, sa_exc.DisconnectionError,
                                sa_exc.OperationalError, sa_exc.InterfaceError, *driver)):
            return True
        if _network_error(current):
            return True
        orig = getattr(current, "orig", None)  # a DBAPIError's driver exception
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def _summary(exc: BaseException) -> str:
    """The driver's own exception, in one line: "ConnectionRefusedError: [Errno 111] ..."."""
    root = exc
    for _ in range(5):  # SQLAlchemy's error → the adapted driver error → asyncpg's own
        inner = getattr(root, "orig", None) or root.__cause__
        if not isinstance(inner, Exception) or inner is root:
            break  # not into asyncio's CancelledError under a TimeoutError
        root = inner
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__


class Backoff:
    """How a background loop (processing, the outbox, the sweeps, the Slack desk) lives through
    failures: it waits before the next try, from ``initial`` seconds doubling to ``maximum``.

    The store being away (:func:`store_unavailable`) is logged once as a warning when the
    outage starts and once when the store answers again, never a traceback per try; any other
    error is logged as one error line with its reason at each try (at the growing interval, so
    never a flood), and its traceback once, at debug (again only when the error changes).
    """

    def __init__(self, what: str, logger: logging.Logger, *, initial: float = 0.5,
                 maximum: float = 30.0) -> None:
        self.what = what
        self.log = logger
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self.down_since: float | None = None
        self._last_error: str | None = None

    def failed(self, exc: BaseException) -> float:
        """Log ``exc`` as described; return the seconds to wait before the next try."""
        self.failures += 1
        delay = min(self.maximum, self.initial * 2 ** min(self.failures - 1, 30))
        if store_unavailable(exc):
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.log.warning("%s: the store is unavailable (%s); retrying with backoff "
                                 "(up to every %.0f s) until it answers", self.what,
                                 _summary(exc), self.maximum)
            else:
                self.log.debug("%s: the store is still unavailable (%s); next try in %.1f s",
                               self.what, _summary(exc), delay)
        else:
            lines = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            self.log.error("%s failed (%s); retrying in %.1f s", self.what, reason, delay)
            if reason != self._last_error:
                self.log.debug("%s failed", self.what, exc_info=exc)
            self._last_error = reason
        return delay

    def succeeded(self) -> None:
        """A try worked: log the end of an outage, and start the backoff from the beginning."""
        if self.down_since is not None:
            self.log.info("%s: the store answers again (unavailable for %.1f s)", self.what,
                          time.monotonic() - self.down_since)
        self.failures = 0
        self.down_since = None
        self._last_error = None


def _alembic_config(connection: Connection | None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


class StoreNotReady(RuntimeError):
    """The store cannot be used as it is (missing, its folder missing, an older schema); the text
    says what to do, in one line."""


class MigrationError(RuntimeError):
    """The store's recorded migration state cannot be upgraded safely; the store is left as it
    was. The message is one line (``frontdesk db upgrade`` prints it as the error)."""


VERSION_TABLE = "alembic_version"
"""Where Alembic records the store's revision (its default name and column)."""


def _script_directory() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None))


def head_revisions() -> frozenset[str]:
    """The newest revision, as a set of one: the history is a single line (see
    :func:`migration_chain`), so a migrated store's version table holds exactly this."""
    return frozenset(_script_directory().get_heads())


def migration_chain() -> tuple[str, ...]:
    """Every revision id, oldest first: 0001 -> 0002_slack -> ... -> the head.

    Up to frontdesk 0.1.0 each feature's migration was its own branch off 0001, so a store's
    version table held every applied branch head (several rows); :func:`linear_revision` maps
    such a table onto this chain."""
    script = _script_directory()
    heads = script.get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the migration history has {len(heads)} heads "
                             f"({', '.join(sorted(heads))}); it must be one line")
    return tuple(reversed([rev.revision for rev in script.walk_revisions("base", heads[0])]))


def linear_revision(recorded: Collection[str], chain: Sequence[str]) -> str | None:
    """The one revision to record instead of ``recorded`` (the version table's rows), or None
    to leave them to Alembic as they are.

    Several rows, all revisions of ``chain``, are the applied heads of the old branched history,
    where every branch started from the first revision: the answer is the latest revision R
    such that every revision of the chain up to R is applied. One row, none, or a revision this
    code does not know (a store from a newer frontdesk) are Alembic's to judge. Rows that leave
    out a revision before a recorded one (a gap) raise :class:`MigrationError` naming it.
    """
    rows = set(recorded)
    if len(rows) <= 1 or not rows <= set(chain):
        return None
    applied = rows | {chain[0]}  # each old branch revised the first revision
    last = max(chain.index(revision) for revision in rows)
    missing = [revision for revision in chain[:last + 1] if revision not in applied]
    if missing:
        held = ", ".join(revision for revision in chain if revision in rows)
        raise MigrationError(
            f"cannot migrate the store: {VERSION_TABLE} records revisions {held} but not "
            f"{', '.join(missing)}, which the migration history applies before {chain[last]}; "
            f"the store is left unchanged")
    return chain[last]


def _linearise_version_table(connection: Connection) -> None:
    """Record a store migrated by the old branched history (several rows in the version table)
    as the one equivalent revision of the linear history, on ``connection`` in its transaction
    (the one Alembic then migrates in); see :func:`linear_revision`."""
    from sqlalchemy import inspect

    if not inspect(connection).has_table(VERSION_TABLE):
        return  # a new store
    recorded = [row[0] for row in connection.execute(
        text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    chain = migration_chain()
    revision = linear_revision(recorded, chain)
    if revision is None:
        return
    connection.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:revision)"),
                       {"revision": revision})
    log.info("the store's %s held the branch heads %s of the old migration history; recorded "
             "as revision %s of the linear one", VERSION_TABLE,
             ", ".join(r for r in chain if r in recorded), revision)


def _upgrade(connection: Connection, revision: str = "head") -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        # database.statement_timeout is for the daemon's short statements, not for a migration
        # (an index on a big table) nor for the wait below.
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        # Several instances may start at once: one migrates, the others wait and find it done.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
    _linearise_version_table(connection)
    command.upgrade(_alembic_config(connection), revision)


class Store:
    """The engine and its sessions. ``async with store.session() as s:`` is one transaction."""

    def __init__(self, url: str, *, synchronous: str = "full", ping_timeout: float = 10.0,
                 **engine_kwargs: Any) -> None:
        self.url = url
        self.ping_timeout = ping_timeout  # /readyz answers within this even with the store away
        self.engine = make_engine(url, synchronous=synchronous, **engine_kwargs)
        self.dialect = self.engine.dialect.name

        class StoreSession(Session):
            """This store's sessions, a class of their own: see :meth:`add_session_listener`."""

        self._session_class = StoreSession
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False,
                                            sync_session_class=StoreSession)
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        """The engine for transactions that only read (SQLite: never holding the write lock)."""
        self._readers = async_sessionmaker(self.read_engine, expire_on_commit=False,
                                           sync_session_class=StoreSession)
        # SQLite has one writer. In-process writers (journal, processor, outbox, desk,
        # scheduler) queue on this lock, first come first served; left to SQLite's busy handler
        # (sleeps of up to 100 ms between tries) a busy writer would starve the journal.
        self.write_gate: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        self.sqlite_path = _sqlite_path(url) if self.dialect == "sqlite" else None
        self.synchronous = synchronous

    @classmethod
    def from_settings(cls, database: DatabaseConfig) -> Store:
        """The store as ``[database]`` configures it (pool, timeouts: PostgreSQL only)."""
        bound = database.pool_timeout + database.connect_timeout
        return cls(database.url, synchronous=database.sqlite_synchronous,
                   ping_timeout=bound.total_seconds(), **engine_options(database))

    def add_session_listener(self, event_name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` at ``event_name``, a SQLAlchemy session event (``after_flush``,
        ``after_commit``...), in every session of this store and of no other store: what must
        happen in the same transaction as a change, wherever in frontdesk the change is made
        (the outgoing webhooks' outbox rows). ``fn`` runs in the synchronous session."""
        event.listen(self._session_class, event_name, fn)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold the write gate (SQLite) for one write transaction."""
        if self.write_gate is None:
            yield
            return
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the acquire in a task
            # (two turns of a busy loop, ~1 ms under webhook load) even when the gate is free.
            async with asyncio.timeout(GATE_TIMEOUT):
                await self.write_gate.acquire()
        except TimeoutError:
            raise OperationalError("waiting for the store's writer", None,
                                   RuntimeError("the store is busy")) from None
        try:
            yield
        finally:
            self.write_gate.release()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: commits on success, rolls back on error."""
        async with self.writing(), self._sessions() as session, session.begin():
            yield session

    def reader(self) -> AsyncSession:
        """A session for reads only (``async with store.reader() as s``); on SQLite its
        transaction is deferred, so a long read never holds up the writers."""
        return self._readers()

    async def current_revisions(self) -> frozenset[str]:
        try:
            async with self.read_engine.connect() as conn:
                rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
                return frozenset(r[0] for r in rows)
        except (OperationalError, ProgrammingError):
            return frozenset()

    async def upgrade(self, revision: str = "head") -> None:
        """Migrate to ``revision`` (the newest by default) in one transaction: a store of the
        old branched history is first recorded as its revision of the linear one, and a
        :class:`MigrationError` (or a failing migration) leaves the store as it was."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)

    async def ensure_schema(self) -> None:
        """Migrate to the newest schema unless the store is there already (a cheap check)."""
        heads = head_revisions()
        if await self.current_revisions() != heads:
            log.info("migrating the store to revision %s", ", ".join(sorted(heads)))
            await self.upgrade()

    async def require_current(self) -> None:
        """For commands that only read: the store must exist, at the newest schema. Never
        creates, connects to create, or migrates anything."""
        where = self.sqlite_path or make_url(self.url).render_as_string(hide_password=True)
        if self.sqlite_path is not None and not Path(self.sqlite_path).is_file():
            raise StoreNotReady(f"no store at {self.sqlite_path} (database.url); "
                                "`frontdesk init` or `frontdesk db upgrade` creates it")
        revisions = await self.current_revisions()
        if revisions != head_revisions():
            found = ", ".join(sorted(revisions)) or "no frontdesk schema"
            raise StoreNotReady(f"the store at {where} has {found}, not the newest schema; "
                                "run `frontdesk db upgrade` (or start the daemon) first")

    async def ping(self) -> bool:
        async def select_one() -> None:
            async with self.read_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(select_one(), timeout=self.ping_timeout)
            return True
        except Exception:  # noqa: BLE001 - readiness reports any store failure
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
