"""Hostile Telegram input against a running daemon (issue 14): webhook bodies that are no update
we can journal get a 400 (or, for an update Telegram would otherwise retry for ever, a 200 and
nothing stored) with one log line and no traceback; the poller steps over updates it cannot
journal instead of stalling on them; files larger than the cap are not downloaded."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from frontdesk.channels.telegram.channel import TelegramChannel
from frontdesk.storage.models import Attachment, InboundJournal, Outbox
from tests.channels.telegram.test_telegram import (
    SECRET,
    USER,
    _count_is,
    _offset_is,
    _ready,
    _webhook_set,
    count,
    start,
)
from tests.fakes.telegram import FakeTelegram
from tests.support.helpers import eventually, processed


async def _post(port: int, body: bytes) -> int:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/webhooks/telegram", data=body,
            headers={"Content-Type": "application/json",
                     "X-Telegram-Bot-Api-Secret-Token": SECRET}) as r:
        return r.status


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage()[:200] for r in records
            if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.CRITICAL]


def _deep(depth: int) -> bytes:
    return b'{"update_id": 5, "message": ' + b"[" * depth + b"]" * depth + b"}"


async def test_webhook_answers_malformed_bodies_without_a_traceback_and_stores_nothing(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram,
        caplog: pytest.LogCaptureFixture) -> None:
    d = await start(make_settings, daemon_factory, clock, fake, mode="webhook",
                    webhook_secret=SECRET)
    await eventually(lambda: _webhook_set(fake))
    await eventually(lambda: _ready(d))
    good = fake.message_update(USER, "Hello")
    message = json.dumps(good["message"])
    not_updates = [  # Telegram never sends these: 400
        b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"x"', b"{}", b'{"update_id": "abc"}',
        b'{"update_id": true}', b'{"update_id": 1.5}', b'{"update_id": -3}',
        b'{"update_id": 100000000000000000000000000000000000}',
        b'{"update_id": 1e999, "message": ' + message.encode() + b"}",
        b"[" * 200_000 + b"]" * 200_000, _deep(100_000), _deep(5_000),
    ]
    chat_x = {**good["message"], "chat": "x"}
    not_journalable = [  # updates Telegram would retry for ever on a 4xx: 200, nothing stored
        {"update_id": 11, "message": chat_x},
        {"update_id": 12, "message": {**good["message"], "chat": {"id": "x", "type": "private"}}},
        {"update_id": 13, "message": {**good["message"], "from": "x"}},
        {"update_id": 14, "message": {**good["message"], "from": {"id": [], "is_bot": False}}},
        {"update_id": 15, "message": {**good["message"], "chat": {"id": 10 ** 40,
                                                                  "type": "private"}}},
        {"update_id": 16, "message": "x"},
    ]
    raw_not_journalable = [
        b'{"update_id": 17, "message": ' + message.replace(
            f'"message_id": {good["message"]["message_id"]}', '"message_id": 1e999'
        ).encode() + b"}",
    ]
    for body in not_updates:
        caplog.clear()
        status = await _post(d.http.port, body)
        assert status == 400, (body[:60], status)
        assert len(caplog.records) <= 1, [r.getMessage()[:200] for r in caplog.records]
        assert _tracebacks(caplog.records) == [], body[:60]
    for body in [json.dumps(u).encode() for u in not_journalable] + raw_not_journalable:
        caplog.clear()
        status = await _post(d.http.port, body)
        assert status == 200, (body[:80], status)
        assert len(caplog.records) == 1, [r.getMessage()[:200] for r in caplog.records]
        assert len(caplog.records[0].getMessage()) < 300
        assert _tracebacks(caplog.records) == [], body[:60]
    assert await count(d, InboundJournal) == 0
    # an odd but usable update (a date out of range, photo sizes that are no numbers) is kept
    odd = fake.message_update(USER, None, date=1e300, caption="odd", photo=[
        {"file_id": "p1", "file_unique_id": "u1", "width": "wide", "height": 1e999},
        {"file_id": "p2", "file_unique_id": "u2", "width": 10 ** 30, "height": None}])
    assert await _post(d.http.port, json.dumps(odd).encode()) == 200
    assert await _post(d.http.port, json.dumps(good).encode()) == 200
    await eventually(lambda: _count_is(d, 2))
    async with d.store.reader() as s:
        states = [r.state for r in (await s.execute(select(InboundJournal))).scalars()]
    assert states == ["done", "done"]


async def test_the_poller_steps_over_updates_it_cannot_journal(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram,
        caplog: pytest.LogCaptureFixture) -> None:
    d = await start(make_settings, daemon_factory, clock, fake)
    await eventually(lambda: _ready(d))
    good = fake.message_update(USER, "Hello")
    bad = [{"update_id": good["update_id"] + 1, "message": {**good["message"], "chat": "x"}},
           {"update_id": good["update_id"] + 2, "message": {**good["message"], "from": "x"}},
           {"update_id": good["update_id"] + 3, "message": ["x"]},
           {"update_id": good["update_id"] + 4,
            "message": {**good["message"], "chat": {"id": "x", "type": "private"}}}]
    after = fake.message_update(USER, "Still there?")
    after["update_id"] = good["update_id"] + 5
    caplog.clear()
    for update in [good, *bad, after]:
        await fake.push(update)
    await eventually(lambda: _count_is(d, 2), timeout=5)
    await eventually(lambda: _offset_is(d, after["update_id"] + 1))
    assert _tracebacks(caplog.records) == []
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(bad) and all(len(r.getMessage()) < 300 for r in skipped)
    async with d.store.reader() as s:
        assert [r.state for r in (await s.execute(select(InboundJournal))).scalars()] == \
            ["done", "done"]


async def test_a_file_larger_than_the_cap_is_not_downloaded(
        make_settings: Any, daemon_factory: Any, clock: Any, fake: FakeTelegram,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramChannel, "max_file_bytes", 1000)
    d = await start(make_settings, daemon_factory, clock, fake)
    big = b"%PDF-1.7 " + b"x" * 5000
    doc_id = fake.add_file(big, "documents", "pdf")
    await fake.push(fake.message_update(USER, None, document={
        "file_id": doc_id, "file_unique_id": "AgADbig", "file_name": "big.pdf",
        "mime_type": "application/pdf", "file_size": len(big)}))
    await eventually(lambda: processed(d.store))

    async def job() -> Outbox | None:
        async with d.store.reader() as s:
            row = (await s.execute(select(Outbox).where(Outbox.kind == "telegram_file"))
                   ).scalars().first()
        return row if row is not None and row.state in ("failed", "done") else None

    row = await eventually(job)
    assert row.state == "failed" and "larger than" in (row.last_error or ""), row.last_error
    assert fake.file_downloads == []
    async with d.store.reader() as s:
        assert (await s.execute(select(Attachment))).first() is None
