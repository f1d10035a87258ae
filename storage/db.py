"""Engines, sessions and migrations: the store's unit of work.

SQLite (aiosqlite) is the embedded default: WAL, a busy timeout, foreign keys, and
``BEGIN IMMEDIATE`` so read-then-write transactions never fail with "database is locked".
PostgreSQL (asyncpg) is the same schema through the same Alembic migrations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
GATE_TIMEOUT = 30.0  # like SQLite's busy_timeout: a writer waits this long for its turn


def _sqlite_path(url: str) -> str | None:
    database = make_url(url).database
    return None if not database or database == ":memory:" else str(Path(database).expanduser())


def _sqlite_events(engine: AsyncEngine, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, synchronous: str = "full", **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        _sqlite_events(engine, synchronous)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> frozenset[str]:
    """The newest revision of every migration branch (features may add branches off 0001)."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # type: ignore[arg-type]
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        # Several instances may start at once: one migrates, the others wait and find it done.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
    command.upgrade(_alembic_config(connection), "heads")


class Store:
    """The engine and its sessions. ``async with store.session() as s:`` is one transaction."""

    def __init__(self, url: str, *, synchronous: str = "full", **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, synchronous=synchronous, **engine_kwargs)
        self.dialect = self.engine.dialect.name
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer. In-process writers (journal, processor, outbox, desk,
        # scheduler) queue on this lock, first come first served; left to SQLite's busy handler
        # (sleeps of up to 100 ms between tries) a busy writer would starve the journal.
        self.write_gate: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        self.sqlite_path = _sqlite_path(url) if self.dialect == "sqlite" else None
        self.synchronous = synchronous

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold the write gate (SQLite) for one write transaction."""
        if self.write_gate is None:
            yield
            return
        try:
            await asyncio.wait_for(self.write_gate.acquire(), timeout=GATE_TIMEOUT)
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
        """A session for reads (``async with store.reader() as s``)."""
        return self._sessions()

    async def current_revisions(self) -> frozenset[str]:
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
                return frozenset(r[0] for r in rows)
        except (OperationalError, ProgrammingError):
            return frozenset()

    async def upgrade(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def ensure_schema(self) -> None:
        """Migrate to the newest schema unless the store is there already (a cheap check)."""
        heads = head_revisions()
        if await self.current_revisions() != heads:
            log.info("migrating the store to revision %s", ", ".join(sorted(heads)))
            await self.upgrade()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any store failure
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
