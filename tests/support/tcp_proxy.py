"""A loopback TCP proxy for tests that cut a daemon off a server (PostgreSQL) and give it back,
without touching the server that other tests share.

It runs its own event loop in a thread, so it keeps forwarding whatever the test's loop is
doing, and its methods are plain calls::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url_for("postgresql+asyncpg://postgres@127.0.0.1:5432/test")
        ...
        proxy.stop()    # every proxied connection closed, new ones refused (a server restarting)
        proxy.hold()    # connections accepted but never answered (a host that went silent)
        proxy.start()   # forwarding again, on the same port

``stop()`` closes the listening socket, so a connect gets "connection refused" as it does from
a host whose server is down; ``hold()`` keeps listening but forwards nothing, so a client waits
until its own connect timeout. Both close every connection being proxied.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Literal, Self, TypeVar

from sqlalchemy.engine import make_url

__all__ = ["TcpProxy"]

T = TypeVar("T")
Mode = Literal["forward", "refuse", "hold"]


class TcpProxy:
    """Forwards ``host:port`` (loopback, a port the kernel picks) to ``target_host:target_port``."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 5.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.port = 0
        self.mode: Mode = "refuse"
        self.accepted = 0
        """Connections accepted so far (any mode)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control (from any thread) ---------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen (on the same port as before, if there was one) and forward."""
        self._call(self._start())

    def stop(self) -> None:
        """Close every proxied connection and refuse new ones."""
        self._call(self._stop())

    def hold(self) -> None:
        """Close every proxied connection; accept new ones but never answer them."""
        self._call(self._hold())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._writers)

    def url_for(self, url: str) -> str:
        """A SQLAlchemy URL like ``url`` but going through the proxy."""
        return make_url(url).set(host=self.host, port=self.port).render_as_string(
            hide_password=False)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- on the proxy's loop ---------------------------------------------------------------------

    async def _start(self) -> None:
        self.mode = "forward"
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self.mode = "refuse"
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._drop_all()

    async def _hold(self) -> None:
        await self._start()
        self.mode = "hold"
        await self._drop_all()

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        if self._tasks:  # each sees its connections end and returns
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":  # accepted in the moment before the listener closed
            _abort(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "hold":
                while await reader.read(65536):  # swallow everything, answer nothing
                    pass
                return
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            _abort(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=self.connect_timeout)
        except (OSError, TimeoutError):
            return
        self._writers.add(up_writer)
        try:
            pumps = [asyncio.create_task(_pump(reader, up_writer)),
                     asyncio.create_task(_pump(up_reader, writer))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._writers.discard(up_writer)
            _abort(up_writer)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        return


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once, unsent data and all (as a server process that exits)."""
    if not writer.transport.is_closing():
        writer.transport.abort()
