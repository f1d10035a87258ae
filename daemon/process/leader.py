"""Leader election for single consumers: IMAP polling and Telegram getUpdates run in one instance.

Several frontdesk instances may share one PostgreSQL store. Webhooks and the SMTP server may run
in all of them, but a poller must not: two IMAP readers would race over the same UIDs, and two
getUpdates loops make Telegram answer 409 Conflict. :class:`Leadership` runs a consumer in the
one instance that holds the consumer's PostgreSQL advisory lock.

* **One lock per consumer**, keyed by :func:`lock_key` (a stable 64-bit hash of a name such as
  ``imap:support@imap.example.com/INBOX`` or ``telegram:123456789``), so the IMAP reader and the
  Telegram poller may lead in different instances.
* **A dedicated connection**, opened with asyncpg itself (the store's URL, the same connect
  arguments SQLAlchemy would use) and never pooled: a session lock stays with a pooled
  connection after it is "closed" into the pool. Closing or losing this connection is what
  gives the lock back.
* **Followers** try ``pg_try_advisory_lock(key)`` every ``retry`` seconds on their own
  connection. When the leader's process dies (``kill -9`` closes its socket) PostgreSQL frees the
  lock and a follower takes over at its next try, resuming from the checkpoint in the store.
* **The leader heartbeats**: ``SELECT 1`` every ``heartbeat`` seconds under a timeout of the same
  length (also as the session's ``statement_timeout``). A failed or late heartbeat, or the
  connection closing, cancels the consumer at once and gives up leadership; the elector then
  competes again. The session also gets ``idle_session_timeout`` (PostgreSQL 14+) of several
  heartbeats, so when a leader vanishes without closing its socket (a network partition, a
  frozen host) PostgreSQL ends its session and frees the lock - later than the vanished leader's
  own heartbeat gives up, so the old consumer has stopped before a new one can start.
* **PostgreSQL away**: connecting and trying keep going with an exponential backoff (``retry`` up
  to ``retry_max``, with jitter); nothing is raised to the daemon, and one instance leads again
  once the server is back.
* **SQLite** is one instance: leadership is granted at once, without any lock.

A consumer is a coroutine function that runs until it is cancelled (leadership lost, daemon
stopping) or returns (its owner asked it to stop). The gauge ``frontdesk_leader{consumer=...}``
is 1 while this instance runs it, and a log line says when an instance becomes leader and when
it loses leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from typing import Any, Literal, Protocol

from sqlalchemy.engine import make_url

from frontdesk.channels.base import Consumer

log = logging.getLogger(__name__)

State = Literal["electing", "leader", "follower", "unreachable", "stopped"]


class LeaderMetrics(Protocol):
    leader: Any
    """A gauge labelled ``consumer``."""


class LeadershipLost(Exception):
    """The lock connection failed while leading; the text says how (for the log)."""


def lock_key(name: str) -> int:
    """The advisory lock key of a consumer: a signed 64-bit hash of its name, the same in every
    instance and every version (not Python's per-process ``hash``)."""
    digest = hashlib.blake2b(f"frontdesk:leader:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _connect_args(url: str) -> dict[str, Any]:
    """asyncpg.connect() keywords for a ``postgresql+asyncpg://`` URL, as the store's engine
    would pass them (host, port, user, password, database and the URL's query options)."""
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    args, opts = dialect().create_connect_args(make_url(url))
    if args:
        raise ValueError("unexpected positional connect arguments for asyncpg")
    for sqlalchemy_only in ("prepared_statement_cache_size", "prepared_statement_name_func",
                            "async_creator_fn"):
        opts.pop(sqlalchemy_only, None)
    return dict(opts)


class Leadership:
    """Runs one named single consumer while this instance holds its leader lock.

    ``await leadership.run(consumer, stop=event)`` returns when ``stop`` is set (a follower stops
    waiting at once; a leader waits for its consumer, which watches the same event, to return) or
    when the consumer returns; cancelling it cancels the consumer and releases the lock.
    """

    def __init__(self, url: str, name: str, *, heartbeat: float = 2.0, retry: float = 2.0,
                 retry_max: float = 30.0, metrics: LeaderMetrics | None = None) -> None:
        if heartbeat <= 0 or retry <= 0:
            raise ValueError("heartbeat and retry must be positive")
        self.url = url
        self.name = name
        self.key = lock_key(name)
        self.heartbeat = heartbeat
        self.retry = retry
        self.retry_max = max(retry, retry_max)
        backend = make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"leader election needs SQLite or PostgreSQL, not {backend!r}")
        self.elected = backend == "postgresql"
        """False on SQLite: one instance, leadership granted without a lock."""
        self._connect_args = _connect_args(url) if self.elected else {}
        self.idle_session_timeout = max(5.0, 5 * max(heartbeat, retry))
        """Seconds after which PostgreSQL ends a lock session that has gone silent."""
        self.connect_timeout = max(5.0, 3 * heartbeat)
        self.state: State = "electing"
        self.backend_pid: int | None = None
        """The PostgreSQL backend holding the lock while this instance leads (for operators)."""
        self.terms = 0
        """How many times this instance became leader."""
        self._metrics = metrics
        self._gauge(0)

    @property
    def is_leader(self) -> bool:
        return self.state == "leader"

    @property
    def following(self) -> bool:
        """True while another instance holds the lock and this one can reach PostgreSQL: a
        healthy standby (``/readyz`` counts it ready)."""
        return self.state == "follower"

    def _gauge(self, value: int) -> None:
        if self._metrics is not None:
            self._metrics.leader.labels(consumer=self.name).set(value)

    def _set_state(self, state: State) -> None:
        self.state = state
        self._gauge(1 if state == "leader" else 0)

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, consumer: Consumer, *, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        try:
            if self.elected:
                await self._elect_and_run(consumer, stop)
            else:
                await self._run_alone(consumer, stop)
        finally:
            self.backend_pid = None
            self._set_state("stopped")

    async def _run_alone(self, consumer: Consumer, stop: asyncio.Event) -> None:
        """SQLite: the one instance leads; a consumer that fails is started again after a pause."""
        failures = 0
        while not stop.is_set():
            self.terms += 1
            self._set_state("leader")
            try:
                await consumer()
                return
            except Exception:  # the daemon goes on; the consumer starts again
                failures += 1
                self._set_state("electing")
                delay = self._backoff(failures)
                log.exception("%s stopped with an error; starting it again in %.1f s",
                              self.name, delay)
                if await self._sleep(stop, delay):
                    return

    async def _elect_and_run(self, consumer: Consumer, stop: asyncio.Event) -> None:
        failures = crashes = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            conn: Any = None
            try:
                conn = await self._connect()
                if not await self._follow(conn, stop):
                    return  # stopping
                failures = 0
                began = loop.time()
                if await self._lead(conn, consumer, stop):
                    await self._close(conn)  # gives the lock back at once
                    return  # the consumer returned: its owner is stopping it
                # The consumer failed: compete again after a pause that grows while it keeps
                # failing soon after it starts.
                crashes = 1 if loop.time() - began > self.retry_max else crashes + 1
                delay = self._backoff(crashes)
            except LeadershipLost:
                delay = self.retry  # logged by _lead the moment it happened
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: retry, never crash
                failures += 1
                delay = self._backoff(failures)
                self._set_state("unreachable")
                log.warning("%s: cannot reach PostgreSQL for leader election (%s); retrying "
                            "in %.1f s", self.name, _describe(exc), delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # the lock, if still held, goes with the socket
            if self.state != "unreachable":
                self._set_state("electing")
            if await self._sleep(stop, delay):
                return

    async def _follow(self, conn: Any, stop: asyncio.Event) -> bool:
        """Try the lock every ``retry`` seconds; True once held, False when stopping."""
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key,
                                   timeout=self.heartbeat):
                return True
            if self.state != "follower":
                self._set_state("follower")
                log.info("%s runs in another instance (it holds the leader lock); this one "
                         "stands by and takes over if that one stops", self.name)
            if await self._sleep(stop, self.retry):
                return False
        return False

    async def _lead(self, conn: Any, consumer: Consumer, stop: asyncio.Event) -> bool:
        """Run the consumer while the heartbeat holds. True when the consumer returned, False
        when it failed; LeadershipLost (the consumer cancelled) when the lock connection failed."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        self.backend_pid = conn.get_server_pid()
        self.terms += 1
        self._set_state("leader")
        log.info("%s: this instance is now the leader and runs it (PostgreSQL backend pid %s)",
                 self.name, self.backend_pid)
        task = asyncio.create_task(consumer(), name=f"leader {self.name}")
        try:
            while True:
                closed = asyncio.create_task(lost.wait())
                try:
                    done, _ = await asyncio.wait({task, closed}, timeout=self.heartbeat,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                if task in done:
                    return self._finished(task, stop)
                if lost.is_set() or conn.is_closed():
                    raise LeadershipLost("the connection to PostgreSQL was closed")
                await self._beat(conn)
        except LeadershipLost as exc:
            task.cancel()  # at once: another instance may lead from now on
            self.backend_pid = None
            self._set_state("electing")
            log.warning("%s: lost leadership (%s); stopped it in this instance, another "
                        "instance may take over", self.name, exc)
            raise
        finally:
            self.backend_pid = None
            if not task.done():  # lost leadership, or run() itself cancelled (stopping)
                task.cancel()
                await _reap(task)

    def _finished(self, task: asyncio.Task[None], stop: asyncio.Event) -> bool:
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            log.info("%s: released leadership (%s)", self.name,
                     "stopping" if stop.is_set() or task.cancelled() else "it finished")
            return True
        self._set_state("electing")
        log.error("%s failed in the leader instance (%s); released leadership, competing "
                  "again", self.name, _describe(exc), exc_info=exc)
        return False

    async def _beat(self, conn: Any) -> None:
        try:
            await conn.fetchval("SELECT 1", timeout=self.heartbeat)
        except TimeoutError:
            raise LeadershipLost(f"PostgreSQL did not answer the heartbeat within "
                                 f"{self.heartbeat:g} s") from None
        except Exception as exc:  # noqa: BLE001 - any failure of the lock connection
            raise LeadershipLost(f"the heartbeat failed: {_describe(exc)}") from None

    # -- the connection ---------------------------------------------------------------------------

    async def _connect(self) -> Any:
        import asyncpg

        conn = await asyncpg.connect(
            **self._connect_args, timeout=self.connect_timeout,
            server_settings={"application_name": f"frontdesk leader {self.name}"[:63]})
        try:
            await conn.execute(f"SET statement_timeout = {int(self.heartbeat * 1000)}",
                               timeout=self.heartbeat)
            if conn.get_server_version().major >= 14:
                await conn.execute(
                    f"SET idle_session_timeout = {int(self.idle_session_timeout * 1000)}",
                    timeout=self.heartbeat)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _close(self, conn: Any) -> None:
        """Close the lock connection gracefully (which releases the lock); drop the socket
        when it does not answer."""
        try:
            await conn.close(timeout=self.heartbeat)
        except Exception:  # noqa: BLE001 - closed either way (asyncpg aborts on failure)
            conn.terminate()

    # -- waiting ----------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        if failures <= 0:
            return self.retry
        base = min(self.retry_max, self.retry * 2 ** min(failures - 1, 16))
        return base * random.uniform(0.75, 1.0) if failures > 1 else base

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds``; True when ``stop`` was set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()


async def _reap(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled consumer to finish; its own errors are over, ours (a cancel of the
    caller) go on."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # a consumer failing while it is cancelled
        log.debug("the cancelled consumer ended with an error", exc_info=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
