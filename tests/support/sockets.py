"""Raw loopback client connections for the listener limit tests (SMTP and HTTP): open one from a
chosen client address, keep a slow client writing on one, tell whether the server closed it,
close many.

On loopback every client is 127.0.0.1; an attacker binds its sockets to :data:`ATTACKER`
(Linux routes all of 127.0.0.0/8 to loopback) to be another client address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

ATTACKER = "127.0.0.2"

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str = "127.0.0.1") -> Conn:
    """A connection to 127.0.0.1:``port`` from the address ``source``."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True when the server closes the connection within ``timeout`` (whatever it said)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def close_all(conns: list[Conn]) -> None:
    for _, w in conns:
        w.close()


@asynccontextmanager
async def trickling(writer: asyncio.StreamWriter, trickle: Coroutine[Any, Any, None]
                    ) -> AsyncIterator[None]:
    """Run ``trickle`` (a client writing slowly on ``writer``) as a task while the ``async with``
    block runs; then stop it and close ``writer``."""
    task = asyncio.create_task(trickle)
    try:
        yield
    finally:
        task.cancel()
        writer.close()
