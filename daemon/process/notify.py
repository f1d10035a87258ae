"""Several instances on one PostgreSQL: who this instance is, and waking the others.

Migration 0006 puts statement triggers on ``outbox`` and ``inbound_journal`` that call
``pg_notify('frontdesk_outbox', '')`` and ``pg_notify('frontdesk_journal', '')``. PostgreSQL
delivers a notification when the inserting transaction commits (never before, never for one that
rolls back), once per transaction and channel, to every session that LISTENs — whichever code path
wrote the row: the processor, the scheduler, the Slack desk, the command line.

:class:`Listener` holds one connection of its own (straight from asyncpg, outside SQLAlchemy's
pool: a LISTENing session must live as long as the daemon, and a pooled one would be handed to
other work) that LISTENs on both channels and kicks this instance's outbox worker or processor,
so a row written by any instance is picked up at once by whichever instance is idle. Polling
(``daemon.outbox_poll``, the processor's 30 s) stays as the safety net. When the connection goes
(PostgreSQL restarts, a network cut, a half-open socket found by the periodic ping) the listener
reconnects with a growing pause, logs the outage once, and kicks everything when it is back (a
notification sent while nobody listened is lost); it never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "frontdesk_outbox"
"""Notified after every statement that inserts outbox rows (migration 0006), and when an instance
hands back rows it had claimed but will not send (it is stopping)."""
JOURNAL_CHANNEL = "frontdesk_journal"
"""Notified after every statement that inserts inbound journal rows (migration 0006)."""
APPLICATION_NAME = "frontdesk-listen"
"""``pg_stat_activity.application_name`` of the listening connection."""


def instance_id() -> str:
    """A name for this process among the instances sharing a store: host, pid and a random part
    (a restarted process on the same host and pid is another instance). At most 64 characters."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


def asyncpg_connect_args(url: str) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for a ``postgresql+asyncpg://`` URL, read the way
    SQLAlchemy's own dialect reads it (host, port, user, password, database, query options)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string()}")
    _args, kwargs = PGDialect_asyncpg().create_connect_args(parsed)
    # Options of SQLAlchemy's adapter, not of asyncpg.connect.
    for name in ("prepared_statement_cache_size", "prepared_statement_name_func",
                 "async_creator_fn"):
        kwargs.pop(name, None)
    return dict(kwargs)


class Listener:
    """LISTEN on the given channels; call ``wakers[channel]()`` for each notification."""

    initial_delay = 0.5
    max_delay = 30.0
    ping_interval = 30.0
    ping_timeout = 10.0
    connect_timeout = 10.0

    def __init__(self, url: str, wakers: Mapping[str, Callable[[], None]]) -> None:
        if not wakers:
            raise ValueError("a listener needs at least one channel to listen on")
        self._connect_args = asyncpg_connect_args(url)
        settings = dict(self._connect_args.pop("server_settings", None) or {})
        settings.setdefault("application_name", APPLICATION_NAME)
        self._connect_args["server_settings"] = settings
        self._wakers = dict(wakers)
        self._conn: Any = None
        self._changed = asyncio.Event()  # the connection was lost, or stop() was called
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0
        """How many times the connection was made again after losing it."""

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def server_pid(self) -> int | None:
        """The PostgreSQL backend pid of the listening session (None while not connected)."""
        conn = self._conn
        return int(conn.get_server_pid()) if conn is not None and not conn.is_closed() else None

    async def wait_connected(self, timeout: float) -> None:
        """Wait until the listener LISTENs (tests, and start-up logs); TimeoutError otherwise."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening within about ``timeout`` seconds, whatever the server does: a loop
        waiting on a live connection ends at once; one stuck in a connect attempt (a silent
        server) is cut."""
        self._stopping = True
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout / 2)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=timeout / 4)
        await self._close(timeout / 4)

    def _wake_all(self) -> None:
        for wake in self._wakers.values():
            wake()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        wake = self._wakers.get(channel)
        if wake is not None:
            wake()

    def _on_lost(self, _conn: Any) -> None:
        self._connected.clear()
        self._changed.set()

    async def _close(self, timeout: float = 2.0) -> None:
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=timeout)
        except Exception:  # noqa: BLE001 - a dead connection: drop it without the goodbye
            conn.terminate()

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(**self._connect_args, timeout=self.connect_timeout)
        self._conn = conn
        conn.add_termination_listener(self._on_lost)
        for channel in self._wakers:
            await conn.add_listener(channel, self._on_notify)

    async def _run(self) -> None:
        delay = self.initial_delay
        outage = False
        ever = False
        while not self._stopping:
            self._changed.clear()
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure: wait and try again
                await self._close()
                if not outage:
                    log.warning("cannot LISTEN for other instances' work (%s: %s); polling "
                                "meanwhile, retrying", type(exc).__name__, exc)
                else:
                    log.debug("LISTEN connection failed again: %s", exc)
                outage = True
                await self._pause(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            if ever:
                self.reconnects += 1
            if outage or ever:
                log.info("listening for other instances' work again")
            else:
                log.info("listening for other instances' work (%s)", ", ".join(self._wakers))
            ever, outage, delay = True, False, self.initial_delay
            self._connected.set()
            self._wake_all()  # whatever was committed while nobody listened
            try:
                await self._watch()
            except Exception as exc:  # noqa: BLE001 - the connection is gone or broken
                log.debug("LISTEN connection check failed: %s", exc)
            await self._close()
            if not self._stopping:
                log.warning("lost the LISTEN connection; polling meanwhile, reconnecting")
                outage = True
                await self._pause(delay)
                delay = min(delay * 2, self.max_delay)

    async def _watch(self) -> None:
        """Return when the connection is lost or the listener stops; ping now and then, so a
        half-open connection (a silent network cut) is noticed too."""
        while not self._stopping:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.ping_interval)
            except TimeoutError:
                await self._conn.execute("SELECT 1", timeout=self.ping_timeout)
                continue
            return

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=seconds)
        self._changed.clear()
