"""SQLite's statements run on the event loop's thread (storage.sqlite_inline, issue 18): what a
user notices is that the daemon stays responsive while another program holds the store's write
lock, that what waited is written as soon as the lock is let go, and that a lock held for too
long is the same clear "database is locked" error as before, not a frozen daemon."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from frontdesk.storage import sqlite_inline
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation
from tests.support.helpers import eventually, mail, processed, send


@pytest.fixture
def other_program(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second program's connection to the store (as ``sqlite3 frontdesk.db`` in a shell)."""
    conn = sqlite3.connect(tmp_path / "frontdesk.db", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


async def _healthz_ms(port: int) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200
    return (time.monotonic() - started) * 1000


async def test_the_daemon_answers_while_another_program_holds_the_write_lock(
        make_settings: Any, daemon_factory: Any, other_program: sqlite3.Connection) -> None:
    d = await daemon_factory(make_settings())
    await send(d.email.smtp.port, mail(msgid="<before@example.org>", subject="Before"))
    await eventually(lambda: processed(d.store))

    other_program.execute("BEGIN IMMEDIATE")  # held: nobody else may write
    sent = asyncio.create_task(send(d.email.smtp.port, mail(
        frm="Grace Hopper <grace@example.org>", msgid="<during@example.org>",
        subject="During the lock")))

    async def staff_write() -> None:  # one of the daemon's own writers, on its loop
        async with d.store.session() as s:
            await s.execute(text("UPDATE conversations SET subject = 'Before (renamed)'"))

    written = asyncio.create_task(staff_write())
    ticks: list[float] = []
    for _ in range(8):  # 1.6 s of a locked store
        ticks.append(await _healthz_ms(d.http.port))
        await asyncio.sleep(0.2)
    assert max(ticks) < 500, ticks  # the loop is never held by SQLite's busy handler
    assert not sent.done()  # its 250 waits for its commit, which waits for the lock
    assert not written.done()
    other_program.execute("COMMIT")

    await asyncio.wait_for(written, 10)
    await asyncio.wait_for(sent, 10)
    await eventually(lambda: processed(d.store))
    async with d.store.reader() as s:
        subjects = set((await s.execute(select(Conversation.subject))).scalars())
    assert subjects == {"Before (renamed)", "During the lock"}


async def test_a_lock_held_past_the_busy_timeout_is_a_database_locked_error(
        tmp_path: Path, other_program: sqlite3.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_inline, "BUSY_TIMEOUT", 0.4)
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    await store.upgrade()
    try:
        other_program.execute("BEGIN IMMEDIATE")
        beats = 0

        async def heartbeat() -> None:
            nonlocal beats
            while True:
                await asyncio.sleep(0.02)
                beats += 1

        beating = asyncio.create_task(heartbeat())
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            async with store.session() as s:
                await s.execute(text("DELETE FROM conversations"))
        waited = time.monotonic() - started
        beating.cancel()
        assert 0.35 < waited < 2.0
        assert beats >= 10  # the loop ran all along (a 20 ms beat over 0.4 s)

        other_program.execute("ROLLBACK")
        async with store.session() as s:  # the lock let go: writing works again
            await s.execute(text("DELETE FROM conversations"))
        async with store.reader() as s:
            assert (await s.execute(select(func.count()).select_from(Conversation))
                    ).scalar_one() == 0
    finally:
        await store.dispose()
