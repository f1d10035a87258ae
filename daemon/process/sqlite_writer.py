"""The SQLite journal writer: group commits of accepted messages in a process of its own.

SQLite has one writer at a time; the journal's inserts go to a child process
(:mod:`frontdesk.daemon.process.journal_child`, the standard library's ``sqlite3``) over a
socket, so the event loop never waits on ``fsync`` and shares nothing with the commits, not even
the GIL. WAL checkpoints run beside the commits in that process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import marshal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from frontdesk.daemon.process import journal_child
from frontdesk.storage.db import WAL_SIZE_LIMIT, Store

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
    """SQLite: the rows as the writer process inserts them, made when offered."""


Outcomes = set[tuple[str, str]] | None | BaseException
"""What one group commit came to: the (channel, remote id) pairs it inserted, None when it
inserted every row it was given (each one new, none twice), or its error."""


class WriterGone(RuntimeError):
    """The journal's writer process stopped answering (it exited or was killed): the commit in
    hand may or may not have happened, so its senders get a temporary failure and retry (a
    duplicate is answered as the first copy was)."""


class SqliteJournalWriter:
    """The journal's insert on SQLite, in a process of its own (see the module docstring).

    The loop offers messages into a list. While :meth:`drain` runs (the journal's committer,
    holding the store's write gate), what is offered in one turn of the loop is sent to the
    process as one batch, with up to ``pipeline`` batches in its socket at once: the next
    commit starts the moment one ends, and each holds what arrived meanwhile. Each answer is
    handled in the turn of the loop that reads it: the batch's senders are answered
    (``settle``), in order, and what was offered meanwhile is sent at once. With the answers
    read by a task woken through a stream instead (one turn later), ten-message webhooks ran
    about 6 % slower (benchmarks/meta_ingest.py, alternating runs). When nothing
    is waiting it lingers a moment for the next message before it gives the gate back, so under
    steady traffic a batch starts without taking the gate again. A process that died is started
    again for the next batch.
    """

    rows_per_commit = 1000
    """At most this many rows in one commit (in several statements), unless a single sender's
    messages are more: they go in one commit whatever their number."""
    pipeline = 2
    """Batches sent to the process and not yet answered, at most. With one, the loop waited for
    each answer before it sent the next batch, and the process for the loop: ten-message
    webhooks ran 11-14 % faster with twice the senders (benchmarks/meta_ingest.py)."""
    linger = 0.002
    """Seconds a drain waits for another message before it ends."""
    checkpoint_interval = 0.2
    """Seconds between the writer process's WAL checkpoints (0: SQLite's own)."""
    stop_timeout = 30.0
    """Seconds :meth:`close` waits for the process to finish its last commit and exit."""

    def __init__(self, store: Store,
                 settle: Callable[[list[Pending], Outcomes, float], None]) -> None:
        assert store.sqlite_path is not None
        self._path = str(store.sqlite_path)
        self._synchronous = store.synchronous
        self._settle = settle
        self._pending: list[Pending] = []
        self._draining = False
        self._deadline = 0.0  # the running drain sends no batch after this (time.monotonic())
        self._inflight: deque[tuple[list[Pending], float]] = deque()  # sent, not answered
        self._send_due = False  # a _send is scheduled for this turn of the loop
        self._event: asyncio.Event | None = None  # wakes the waiting drain (see _wait)
        self._lingering = False  # the drain waits for a batch to be sent, not for answers
        self._process: subprocess.Popen[bytes] | None = None
        self._answers: _Answers | None = None

    async def start(self) -> None:
        """Start the process ahead of the first commit (a failure here is logged; the first
        commit tries again and answers its senders with the error)."""
        try:
            await self._connected()
        except Exception as exc:  # noqa: BLE001 - see above
            log.error("journal: could not start the writer process: %s", exc)

    @property
    def pid(self) -> int | None:
        """The writer process's id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def offer(self, pending: Pending) -> bool:
        """Queue one sender's messages; True when a running drain will take them (no need to
        start one)."""
        self._pending.append(pending)
        if self._draining and not self._send_due and len(self._inflight) < self.pipeline:
            self._send_due = True
            asyncio.get_running_loop().call_soon(self._send)
        return self._draining

    def waiting(self) -> bool:
        """Messages offered and not yet taken into a commit."""
        return bool(self._pending)

    def take_all(self) -> list[Pending]:
        batch, self._pending = self._pending, []
        return batch

    def _take(self) -> list[Pending]:
        """The next batch: whole senders, up to ``rows_per_commit`` rows (at least one)."""
        pending = self._pending
        rows, taken = 0, 0
        for p in pending:
            rows += len(p.rows)
            if taken and rows > self.rows_per_commit:
                break
            taken += 1
        batch, self._pending = pending[:taken], pending[taken:]
        return batch

    def _send(self) -> None:
        """Send what is offered to the process, a batch per free place in the pipeline, while
        the drain runs and before its deadline."""
        self._send_due = False
        answers = self._answers
        if not self._draining or answers is None or time.monotonic() >= self._deadline:
            return
        sent = False
        while self._pending and len(self._inflight) < self.pipeline:
            batch = self._take()
            rows = [row for p in batch for row in p.rows]
            answers.write(journal_child.frame(rows))
            self._inflight.append((batch, time.perf_counter()))
            sent = True
        if sent and self._lingering:
            self._wake()

    def _answered(self, outcome: Outcomes) -> None:
        """The process answered the oldest batch in flight (called by :class:`_Answers` as the
        answer arrives, in the same turn of the loop): its senders are answered, and what was
        offered meanwhile goes to the process at once."""
        batch, started = self._inflight.popleft()
        self._settle(batch, outcome, time.perf_counter() - started)
        self._send()
        if not self._inflight and not self._lingering:
            self._wake()

    def _lost(self, answers: _Answers, exc: Exception | None) -> None:
        """The socket closed: the process exited or was killed. Every batch in flight is lost
        with it (it may or may not have been committed: its senders retry)."""
        if answers is not self._answers:
            return
        self._forget()
        gone = WriterGone(f"the journal's writer process stopped ({exc!r}); it is started "
                          "again for the next commit")
        while self._inflight:
            self._settle(self._inflight.popleft()[0], gone, 0.0)
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def _wait(self, timeout: float | None) -> None:
        """Until :meth:`_wake`, or ``timeout`` seconds: with a timeout (lingering), until a batch
        is sent; without, until the last answer in flight is in or the process is lost."""
        event = self._event = asyncio.Event()
        self._lingering = timeout is not None
        try:
            if timeout is None:
                await event.wait()
            elif timeout > 0:
                async with asyncio.timeout(timeout):
                    await event.wait()
        except TimeoutError:
            pass
        finally:
            self._event = None
            self._lingering = False

    async def drain(self, limit: float) -> None:
        """Commit what is offered until nothing comes for ``linger`` seconds or ``limit``
        seconds have passed (the caller holds the store's write gate). Each answer is handled
        as it arrives (:meth:`_answered`); this task waits for the pipeline to empty."""
        self._deadline = time.monotonic() + limit
        self._draining = True
        try:
            try:
                answers = await self._connected()
            except Exception as exc:  # noqa: BLE001 - the senders get a temporary failure
                self._settle(self.take_all(), exc, 0.0)
                return
            while answers is self._answers:  # else the process was lost: the next drain
                self._send()
                if self._inflight:
                    await self._wait(None)
                    continue
                # What was sent while it waited counts, even if the wait timed out in the
                # same turn of the loop: the batch is at the process and must be answered.
                await self._wait(min(self.linger, self._deadline - time.monotonic()))
                if not self._inflight:
                    return
        finally:
            self._draining = False
            if self._inflight:  # cancelled mid-commit: start afresh, the senders retry
                self._forget()
                gone = WriterGone("the journal's writer stopped mid-commit")
                while self._inflight:
                    self._settle(self._inflight.popleft()[0], gone, 0.0)

    @staticmethod
    def rows(p: Pending) -> list[tuple[Any, ...]]:
        """The rows of the sender's messages, as the models write them (UTCDateTime: naive UTC
        text with microseconds; JSON: json.dumps)."""
        received = p.received_at.astimezone(UTC).replace(tzinfo=None).isoformat(
            " ", "microseconds")
        meta = json.dumps(p.meta) if p.meta else "{}"
        channel = p.channel
        return [(channel, remote_id, raw, meta, received) for remote_id, raw in p.items]

    async def _connected(self) -> _Answers:
        # A process that died while idle is replaced before a batch is lost to it.
        if self._answers is None or self._process is None or self._process.poll() is not None:
            self._forget()
            ours, theirs = socket.socketpair()
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-I", str(Path(journal_child.__file__)),
                     str(theirs.fileno()), self._path, self._synchronous,
                     str(self.checkpoint_interval), str(WAL_SIZE_LIMIT)],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            answers = _Answers(self)
            await asyncio.get_running_loop().create_unix_connection(lambda: answers, sock=ours)
            self._answers = answers
        return self._answers

    def _close_socket(self) -> _Answers | None:
        """Close our end of the socket (the process exits when it reads its end)."""
        answers, self._answers = self._answers, None
        if answers is not None:
            answers.close()
        return answers

    def _forget(self) -> None:
        """Drop the process: close the socket, and kill it if it still runs."""
        self._close_socket()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    async def close(self) -> None:
        """Close the socket and wait for the process to end (after its commit in hand)."""
        answers = self._close_socket()
        if answers is not None:
            await answers.closed()
        process, self._process = self._process, None
        if process is None:
            return
        deadline = time.monotonic() + self.stop_timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if process.poll() is None:
            log.error("journal: the writer process did not exit within %gs; killed",
                      self.stop_timeout)
            process.kill()
            process.wait()


class _Answers(asyncio.Protocol):
    """Our end of the writer process's socket: writes the batches, and hands each answer to
    the writer (:meth:`SqliteJournalWriter._answered`) as soon as it is read, so its senders
    are answered in the same turn of the loop (not one later, through a task woken by a
    stream)."""

    def __init__(self, writer: SqliteJournalWriter) -> None:
        self._writer = writer
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def closed(self) -> None:
        await asyncio.shield(self._closed)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < 4 + size:
                return
            answer = marshal.loads(buffer[4:4 + size])
            del buffer[:4 + size]
            self._writer._answered(_outcome(answer))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._writer._lost(self, exc)


def _outcome(answer: Any) -> Outcomes:
    """A decoded answer: None when every row was new, the error, or the new pairs."""
    if answer is None:
        return None
    if isinstance(answer, str):
        return JournalWriteError(answer)
    return {(channel, remote_id) for channel, remote_id in answer}


class JournalWriteError(RuntimeError):
    """The writer process could not commit a batch (its words: the ``sqlite3`` error)."""
