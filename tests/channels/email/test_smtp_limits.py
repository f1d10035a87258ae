"""Connection exhaustion on the SMTP server (issue 14), over real loopback sockets.

On loopback every client is 127.0.0.1; an attacker binds its sockets to 127.0.0.2 (Linux routes
all of 127.0.0.0/8 to loopback) to be another client address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.support.helpers import eventually, mail, processed, send
from tests.support.sockets import ATTACKER, Conn, close_all, closed, connect, trickling


async def line(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout)


async def reply(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """A whole (possibly multi-line) SMTP reply; its last line."""
    while True:
        got = await line(reader, timeout)
        if len(got) < 4 or got[3:4] != b"-":
            return got


async def smtp_daemon(make_settings: Any, daemon_factory: Any, **smtp_server: Any
                      ) -> tuple[Any, int]:
    """A daemon whose SMTP server has these ``email.smtp_server`` settings, and its port."""
    d = await daemon_factory(make_settings(email={"smtp_server": smtp_server}))
    return d, d.email.smtp.port


@asynccontextmanager
async def holding(port: int, count: int, source: str = ATTACKER) -> AsyncIterator[list[Conn]]:
    """``count`` sessions that got their 220 greeting and then say nothing, for the ``async
    with`` block; those still in the list are closed at its end."""
    held = []
    for _ in range(count):
        r, w = await connect(port, source)
        assert (await line(r)).startswith(b"220 ")
        held.append((r, w))
    try:
        yield held
    finally:
        close_all(held)


async def test_extra_connection_from_one_address_gets_421_and_others_still_get_250(
        make_settings: Any, daemon_factory: Any) -> None:
    d, port = await smtp_daemon(make_settings, daemon_factory,
                                max_connections_per_client=3, max_connections=50)
    async with holding(port, 3) as held:
        r, _ = await connect(port, ATTACKER)
        refused = await line(r)
        assert refused.startswith(b"421 4.7.0 frontdesk.test ")
        assert b"too many connections from your address (127.0.0.2)" in refused.lower()
        assert await closed(r, 2)
        # A sender from another address still gets its mail taken while the attacker holds its
        # quota, and the attacker's sessions are still alive.
        assert await send(port, mail()) == {}
        await eventually(lambda: processed(d.store))
        r0, w0 = held[0]
        w0.write(b"NOOP\r\n")
        assert (await line(r0)).startswith(b"250")


async def test_total_cap_answers_server_busy_and_frees_the_slot_on_close(
        make_settings: Any, daemon_factory: Any) -> None:
    _, port = await smtp_daemon(make_settings, daemon_factory,
                                max_connections_per_client=10, max_connections=3)
    async with holding(port, 3) as held:
        r, _ = await connect(port)  # another address, but the server is full
        refused = await line(r)
        assert refused.startswith(b"421 4.7.0 frontdesk.test ")
        assert b"server busy" in refused.lower() and b"try again later" in refused
        held.pop()[1].close()  # one attacker session goes: its slot is free again
        await eventually(lambda: _sendable(port))


async def _sendable(port: int) -> bool:
    try:
        return await send(port, mail()) == {}
    except OSError:  # smtplib's SMTPConnectError (421) is an OSError
        return False


async def test_trickling_data_is_cut_with_421_after_data_timeout(
        make_settings: Any, daemon_factory: Any) -> None:
    d, port = await smtp_daemon(make_settings, daemon_factory,
                                data_timeout="1s", idle_timeout="30s")
    r, w = await connect(port)
    assert (await line(r)).startswith(b"220")
    for command in (b"EHLO slow.example", b"MAIL FROM:<ada@example.org>",
                    b"RCPT TO:<support@example.com>", b"DATA"):
        w.write(command + b"\r\n")
        assert (await reply(r)).startswith((b"250", b"354"))

    async def trickle() -> None:  # a line every 0.2 s: each read is quick, the whole is not
        with pytest.raises(ConnectionError):
            for n in range(100):
                w.write(b"Subject: slow %d\r\n" % n)
                await w.drain()
                await asyncio.sleep(0.2)

    started = time.monotonic()
    async with trickling(w, trickle()):
        cut = await line(r, 5)
        elapsed = time.monotonic() - started
        assert cut.startswith(b"421 4.4.2 frontdesk.test ") and b"timeout" in cut
        assert 0.8 < elapsed < 3, elapsed
        assert await closed(r, 2)
    # Nothing was journaled, and a message sent at normal speed still goes through.
    assert await send(port, mail()) == {}
    await eventually(lambda: processed(d.store))


async def test_idle_session_and_a_command_line_trickled_byte_by_byte_are_cut(
        make_settings: Any, daemon_factory: Any) -> None:
    _, port = await smtp_daemon(make_settings, daemon_factory, idle_timeout="1s")
    r, w = await connect(port)
    assert (await line(r)).startswith(b"220")
    started = time.monotonic()

    async def trickle() -> None:  # "EHLO slow.example" one byte every 0.2 s, never a CRLF
        for byte in b"EHLO slow.example" * 10:
            w.write(bytes([byte]))
            await asyncio.sleep(0.2)

    async with trickling(w, trickle()):
        cut = await line(r, 5)
        assert cut.startswith(b"421 4.4.2 frontdesk.test ") and b"timeout" in cut
        assert time.monotonic() - started < 3
        assert await closed(r, 2)
    # A silent session (never a byte after the greeting) goes the same way.
    r, w = await connect(port)
    assert (await line(r)).startswith(b"220")
    assert (await line(r, 3)).startswith(b"421 4.4.2")
    w.close()


async def test_refusals_are_logged_once_per_interval_not_per_connection(
        make_settings: Any, daemon_factory: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from frontdesk.channels import connections

    monkeypatch.setattr(connections, "REPORT_INTERVAL", 1.0)
    caplog.set_level(logging.INFO)
    _, port = await smtp_daemon(make_settings, daemon_factory,
                                max_connections_per_client=2, max_connections=50)
    async with holding(port, 2):
        for _ in range(30):
            r, w = await connect(port, ATTACKER)
            assert (await line(r)).startswith(b"421 4.7.0")
            w.close()

        def refusals() -> list[logging.LogRecord]:
            return [rec for rec in caplog.records
                    if rec.levelno >= logging.WARNING and "refused" in rec.getMessage()]

        first = refusals()
        assert len(first) == 1, [rec.getMessage() for rec in first]
        assert "SMTP" in first[0].getMessage() and ATTACKER in first[0].getMessage()
        # The rest are summed up once the interval is over: one more line for 29 connections.
        summary = await eventually(lambda: _later(refusals, 2), timeout=4)
        text = summary[1].getMessage()
        assert "refused 29 SMTP connections" in text, text
        assert "per-client cap of 2" in text and ATTACKER in text, text
        await asyncio.sleep(1.2)  # a quiet interval adds nothing
        assert len(refusals()) == 2
        assert not [rec for rec in caplog.records if rec.exc_info]


async def _later(get: Any, count: int) -> Any:
    got = get()
    return got if len(got) >= count else None
