"""The inbound journal's group commit (daemon/process/journal.py): what each accept answers, what
the rows hold, and how failures reach the senders. SQLite goes through SqliteJournalWriter's
process; PostgreSQL through SQLAlchemy."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.daemon.process.journal import Journal, StepAside
from frontdesk.daemon.process.journal_child import JournalFile
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.sqlite_writer import (
    JournalWriteError,
    SqliteJournalWriter,
    WriterGone,
)
from frontdesk.storage import db as db_module
from frontdesk.storage.db import Store
from frontdesk.storage.models import InboundJournal


@pytest.fixture
async def journal(database_url: str, clock: Any) -> Any:
    store = Store(database_url)
    await store.ensure_schema()
    metrics = Metrics()
    commits: list[int] = []
    j = Journal(store, clock=clock, metrics=metrics, on_commit=lambda: commits.append(1))
    j.start()
    j.commits = commits  # type: ignore[attr-defined]
    j.metrics = metrics  # type: ignore[attr-defined]
    yield j
    if j._task is not None and not j._task.done():
        await j.stop()
    await store.dispose()


async def rows(journal: Any) -> list[InboundJournal]:
    async with journal._store.reader() as s:
        return list((await s.execute(select(InboundJournal).order_by(InboundJournal.id)))
                    .scalars())


async def test_new_and_duplicate_answers(journal: Any, clock: Any) -> None:
    # many at once share commits; a copy in the same batch and a later retry are duplicates
    keys = [f"SM{i}" for i in range(60)] + ["SM3", "SM7"]
    answers = await asyncio.gather(*(journal.accept("sms", k, f"Body={k}".encode(),
                                                    {"kind": "message"}) for k in keys))
    assert answers == [True] * 60 + [False, False]
    assert await journal.accept("sms", "SM3", b"again", {"kind": "message"}) is False
    assert await journal.accept("whatsapp", "SM3", b"other channel", {}) is True
    stored = await rows(journal)
    assert len(stored) == 61
    first = stored[0]
    assert (first.channel, first.remote_id, first.raw) == ("sms", "SM0", b"Body=SM0")
    assert first.meta == {"kind": "message"} and first.state == "pending"
    assert first.attempts == 0 and first.received_at == clock()
    text = journal.metrics.render().decode()
    assert 'frontdesk_messages_in_total{channel="sms"} 60.0' in text
    assert 'frontdesk_duplicates_total{channel="sms"} 3.0' in text
    assert 'frontdesk_messages_in_total{channel="whatsapp"} 1.0' in text
    assert journal.commits


async def test_duplicates_among_new_rows_in_one_commit(tmp_path: Path) -> None:
    """Which rows of a commit were new is learned from the rows it inserted, even when old and
    new ones alternate, in one statement and in several (the writer process's insert)."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    await store.ensure_schema()
    await store.dispose()
    file = JournalFile(str(tmp_path / "j.db"), "full", 0)

    def row(key: str) -> tuple[str, str, bytes, str, str]:
        return ("sms", key, b"x", "{}", "2026-11-23 10:00:00.000000")

    try:
        assert file.insert([row("a"), row("c")]) is None  # all new
        assert sorted(file.insert([row(k) for k in "abcdb"]) or []) == [("sms", "b"), ("sms", "d")]
        assert file.insert([row("a")]) == []
        keys = [f"n{i}" for i in range(JournalFile.rows_per_statement + 20)]
        assert file.insert([row(k) for k in keys[::2]]) is None
        new = file.insert([row(k) for k in keys])  # old and new alternate over two statements
        assert sorted(new or []) == sorted(("sms", k) for k in keys[1::2])
    finally:
        file.close()


async def test_a_flood_leaves_no_large_log_file_behind(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """While commits follow each other without a pause, no checkpoint can copy the whole
    write-ahead log and its file grows (by megabytes a second); once the flood pauses and the log
    has been copied, the next commit starts it again and cuts the file back to the limit, whether
    that commit is the journal writer's or processing's (the daemon's own store). Nothing of
    what was committed is lost on the way."""
    path = tmp_path / "j.db"
    wal = Path(f"{path}-wal")
    limit = 256 * 1024  # instead of 64 MiB: a flood of a fraction of a second is enough
    monkeypatch.setattr(db_module, "WAL_SIZE_LIMIT", limit)
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.ensure_schema()
    file = JournalFile(str(path), "full", 0.05, limit)
    raw = b"x" * 1000
    count = 0

    def flood() -> None:
        nonlocal count
        deadline = time.monotonic() + 20
        while not (wal.exists() and wal.stat().st_size > 8 * limit):
            assert time.monotonic() < deadline, "the log never grew"
            file.insert([("sms", f"k{count + i}", raw, "{}", "2026-12-07 10:00:00.000000")
                         for i in range(50)])
            count += 50

    def pause() -> None:  # until a checkpoint has copied all of the log (fsync included)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            deadline = time.monotonic() + 20
            while True:
                busy, log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and log == copied:
                    return
                assert time.monotonic() < deadline, "the log was never copied"
                time.sleep(0.05)
        finally:
            db.close()

    try:
        flood()
        pause()
        async with store.session() as s:  # processing commits first
            s.add(InboundJournal(channel="sms", remote_id="processed", raw=b"x", meta={},
                                 received_at=datetime(2026, 12, 7, tzinfo=UTC),
                                 state="pending", attempts=0))
        assert wal.stat().st_size <= limit
        flood()
        pause()
        assert file.insert([("sms", "after", b"x", "{}", "2026-12-07 10:00:00.000000")]) is None
        assert wal.stat().st_size <= limit
    finally:
        file.close()
    async with store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(InboundJournal))
                ).scalar_one() == count + 2
    await store.dispose()


async def test_more_than_one_commit_holds(journal: Any) -> None:
    if journal._sqlite is None:
        pytest.skip("SQLite's writer splits big batches")
    n = SqliteJournalWriter.rows_per_commit * 2 + 5  # more commits, several statements each
    answers = await asyncio.gather(*(journal.accept("sms", f"k{i}", b"x", {}) for i in range(n)))
    assert all(answers) and len(await rows(journal)) == n


async def test_many_journals_a_delivery_in_one_commit(journal: Any) -> None:
    """A webhook's several messages: one answer per id, in order, duplicates (earlier or in the
    same delivery) answered False; all of them in the journal at once."""
    assert await journal.accept("meta", "m2", b"earlier", {}) is True
    answers = await journal.many("meta", [("m1", b"one"), ("m2", b"two"), ("m3", b"three"),
                                          ("m1", b"one again")])
    assert answers == [True, False, True, False]
    stored = {r.remote_id: r.raw for r in await rows(journal)}
    assert stored == {"m1": b"one", "m2": b"earlier", "m3": b"three"}
    assert await journal.many("meta", []) == []
    text = journal.metrics.render().decode()
    assert 'frontdesk_messages_in_total{channel="meta"} 3.0' in text
    assert 'frontdesk_duplicates_total{channel="meta"} 2.0' in text


async def test_many_larger_than_a_statement_is_still_one_commit(journal: Any) -> None:
    """More messages in one delivery than one SQLite statement holds: several statements, one
    transaction, every answer right (the retry of the whole delivery stores nothing)."""
    n = SqliteJournalWriter.rows_per_commit + 7
    items = [(f"b{i}", b"x") for i in range(n)]
    others = [journal.accept("sms", f"s{i}", b"x", {}) for i in range(5)]
    assert await journal.many("meta", items) == [True] * n
    assert all(await asyncio.gather(*others))
    assert await journal.many("meta", items) == [False] * n
    assert len(await rows(journal)) == n + 5


async def test_a_failed_commit_fails_its_senders_then_recovers(journal: Any) -> None:
    writer = journal._sqlite
    if writer is None:
        pytest.skip("the SQLite writer's failure path")
    db = sqlite3.connect(journal._store.sqlite_path, isolation_level=None)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON inbound_journal "
               "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END")
    results = await asyncio.gather(*(journal.accept("sms", f"f{i}", b"x", {}) for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, JournalWriteError) and "injected" in str(r) for r in results)
    assert 'frontdesk_journal_commit_errors_total' in journal.metrics.render().decode()
    db.execute("DROP TRIGGER refuse")
    db.close()
    assert await journal.accept("sms", "f0", b"x", {}) is True  # the sender's retry
    assert [r.remote_id for r in await rows(journal)] == ["f0"]


async def test_a_killed_writer_process_fails_its_commit_and_the_next_one_starts(
        journal: Any) -> None:
    """kill -9 of the writer process: the senders of the commit it had in hand get a temporary
    failure (they retry); the next commit starts a new process, and a retry of a message that
    was stored after all is answered as a duplicate."""
    writer = journal._sqlite
    if writer is None:
        pytest.skip("SQLite's writer process")
    assert await journal.accept("sms", "before", b"x", {}) is True
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # it takes the next batch and answers nothing
    in_hand = asyncio.ensure_future(journal.accept("sms", "in-hand", b"x", {}))
    await asyncio.sleep(0.2)
    assert not in_hand.done()
    os.kill(first, signal.SIGKILL)
    with pytest.raises(WriterGone, match="writer process stopped"):
        await asyncio.wait_for(in_hand, 5)
    assert await journal.accept("sms", "in-hand", b"x", {}) is True  # the retry
    assert await journal.accept("sms", "before", b"x", {}) is False
    assert writer.pid not in (None, first)
    assert [r.remote_id for r in await rows(journal)] == ["before", "in-hand"]


async def test_the_next_batch_waits_in_the_writers_socket_while_one_commits(
        journal: Any) -> None:
    """Up to ``pipeline`` batches are at the writer process at once, so its next commit starts
    the moment one ends; what comes after waits in the daemon, and all are answered in order."""
    writer = journal._sqlite
    if writer is None:
        pytest.skip("SQLite's writer process")
    assert await journal.accept("sms", "warm", b"x", {}) is True
    pid = writer.pid
    assert pid is not None and writer.pipeline == 2
    journal.drain_limit = 5.0  # the gate is not handed on (no batch sent) within the test
    os.kill(pid, signal.SIGSTOP)  # a commit that takes its time
    try:
        first = asyncio.ensure_future(journal.accept("sms", "a", b"x", {}))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(journal.many("sms", [("b", b"x"), ("a", b"again")]))
        await asyncio.sleep(0.05)
        third = asyncio.ensure_future(journal.accept("sms", "c", b"x", {}))
        await asyncio.sleep(0.05)
        assert len(writer._inflight) == 2 and writer.waiting()
        assert not (first.done() or second.done() or third.done())
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await asyncio.wait_for(asyncio.gather(first, second, third), 5) == [
        True, [True, False], True]
    assert [r.remote_id for r in await rows(journal)] == ["warm", "a", "b", "c"]


async def test_a_message_offered_as_the_drain_stops_lingering_is_committed(
        journal: Any) -> None:
    """A message offered just as the drain's wait for more runs out is sent, committed and
    answered True: in the same turn of the loop the batch goes to the writer and the wait
    times out (a busy loop: here it sleeps past the wait), and the drain once took that for
    the end, answering the batch as if the writer had stopped."""
    writer = journal._sqlite
    if writer is None:
        pytest.skip("SQLite's writer process")
    for i in range(3):
        assert await journal.accept("sms", f"first-{i}", b"x", {}) is True  # the drain lingers
        offered = journal.accept("sms", f"then-{i}", b"x", {})
        time.sleep(writer.linger * 2)  # a loop too busy to wake the drain in time
        assert await offered is True


async def test_stop_commits_what_is_queued_and_refuses_more(journal: Any) -> None:
    waiting = [asyncio.ensure_future(journal.accept("sms", f"s{i}", b"x", {})) for i in range(20)]
    await asyncio.sleep(0)
    await journal.stop()
    assert [w.result() for w in waiting] == [True] * 20
    with pytest.raises(RuntimeError, match="shutting down"):
        await journal.accept("sms", "late", b"x", {})
    async with journal._store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(InboundJournal))
                ).scalar_one() == 20


async def test_other_writers_get_the_gate_while_messages_keep_coming(journal: Any) -> None:
    """A drain hands the store's write gate on: a processing transaction gets its turn while
    messages arrive without a pause."""
    store = journal._store
    if store.write_gate is None:
        pytest.skip("SQLite's write gate")
    stop = asyncio.Event()

    async def flood() -> int:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(journal.accept("sms", f"x{n}-{i}", b"x", {})
                                   for i in range(5)))
            n += 1
        return n

    task = asyncio.create_task(flood())
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        async with store.writing():
            pass
    stop.set()
    assert await task > 0


async def test_idle_until_senders_keep_waiting(journal: Any) -> None:
    """The journal is not idle (background work steps aside) once senders have been waiting
    most of the recent time, and is idle again soon after they are answered."""
    store = journal._store
    if store.write_gate is None:
        pytest.skip("held up by SQLite's write gate")
    assert journal.idle()
    async with store.writing():  # another writer's long transaction: the sender waits
        waiting = asyncio.ensure_future(journal.accept("sms", "w1", b"x", {}))
        await asyncio.sleep(journal.load_window / 4)
        assert journal.idle() and 0 < journal.load() < journal.busy_load
        await asyncio.sleep(journal.load_window)
        assert not journal.idle()
    assert await waiting is True
    await asyncio.sleep(journal.load_window * 1.5)
    assert journal.idle() and journal.load() < 0.25


async def test_step_aside_waits_only_while_busy() -> None:
    busy = {"on": False}
    step_aside = StepAside(lambda: busy["on"], factor=10, max_wait=0.3)

    async def timed(last_step: float) -> float:
        began = time.monotonic()
        await step_aside.wait(last_step)
        return time.monotonic() - began

    assert await timed(0.01) < 0.005  # nothing arriving: at once
    busy["on"] = True
    assert 0.09 <= await timed(0.01) < 0.25  # factor x the last step
    assert 0.29 <= await timed(1.0) < 0.6  # at most max_wait
    asyncio.get_running_loop().call_later(0.03, busy.update, {"on": False})
    assert await timed(1.0) < 0.2  # the flood ebbs: at once


async def test_the_wal_is_checkpointed_beside_the_commits(tmp_path: Path, clock: Any) -> None:
    """The writer's own commits never checkpoint (SQLite would, inside the commit a sender
    waits for); the writer process's checkpoint thread copies them into the database file soon
    after, and the process ends with the journal."""
    path = tmp_path / "j.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.ensure_schema()
    journal = Journal(store, clock=clock, metrics=Metrics())
    journal.start()

    def in_database_file() -> int:  # immutable: the file alone, the WAL ignored
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM inbound_journal").fetchone()[0])
        except sqlite3.OperationalError:  # not even the schema is in the file yet
            return 0
        finally:
            conn.close()

    try:
        await asyncio.gather(*(journal.accept("sms", f"c{i}", b"x", {}) for i in range(30)))
        writer = journal._sqlite
        assert writer is not None
        pid = writer.pid
        assert pid is not None
        deadline = time.monotonic() + 5
        while in_database_file() < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert in_database_file() == 30
    finally:
        await journal.stop()
        await store.dispose()
    assert writer.pid is None
    with pytest.raises(ProcessLookupError):  # stop waits for the process to exit
        os.kill(pid, 0)


async def test_a_long_read_does_not_hold_up_the_journal(journal: Any) -> None:
    """A read transaction left open (a slow report, `frontdesk show` in another process) is a
    snapshot: messages keep being journaled and answered meanwhile, and the reader sees its
    snapshot, not the new rows. On SQLite a read that took the write lock made every sender
    wait for it (up to the busy timeout)."""
    store = journal._store
    await journal.accept("sms", "before", b"x", {})
    async with store.reader() as s:
        count = select(func.count()).select_from(InboundJournal)
        assert (await s.execute(count)).scalar() == 1
        async with asyncio.timeout(5):  # a held write lock would keep these 30 s (busy timeout)
            started = time.monotonic()
            answers = await asyncio.gather(*(journal.accept("sms", f"during-{i}", b"x", {})
                                             for i in range(20)))
            waited = time.monotonic() - started
        assert answers == [True] * 20 and waited < 2
        if store.dialect == "sqlite":  # a snapshot (PostgreSQL: read committed, sees them)
            assert (await s.execute(count)).scalar() == 1
    assert len(await rows(journal)) == 21
    if store.sqlite_path is not None:  # another process's reader: the same
        other = sqlite3.connect(store.sqlite_path, isolation_level=None)
        try:
            other.execute("BEGIN")
            assert other.execute("SELECT count(*) FROM inbound_journal").fetchone()[0] == 21
            async with asyncio.timeout(5):
                assert await journal.accept("sms", "beside-another-reader", b"x", {}) is True
            other.execute("COMMIT")
        finally:
            other.close()
