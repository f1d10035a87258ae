"""The daemon's HTTP server (aiohttp on the daemon's loop): health, readiness and metrics.

Channel webhooks mount their routes on the same application.

Against connection exhaustion (issue 14), from ``[http]``:

- at most ``max_connections_per_client`` connections per client address (an IPv6 client's /64;
  ``trusted_proxies`` are held to the total cap only) and ``max_connections`` in all. A
  connection over the per-client cap is answered ``503`` with ``Connection: close`` and closed
  at once, before aiohttp builds anything for it. At the total cap the longest-idle connection
  waiting for a request, from the address holding the most, is closed to make room, so
  ``/healthz`` and ``/readyz`` still answer while idle attackers fill the server; only when every
  connection is busy with a request is the newcomer refused.
- a request's headers must all arrive within ``header_timeout``, however slowly they trickle:
  counted from the connection's opening for its first request, from the first byte of each
  later one; between two requests a connection may sit idle for ``keepalive_timeout``. No clock
  runs while a request is handled (until its response is sent), so a long streamed response
  (Server-Sent Events) is never cut by them.
- a request's body must arrive within ``body_timeout`` of its headers, or the client gets
  ``408`` and the connection is closed.

Refusals and cuts are logged in one line per interval (:mod:`frontdesk.channels.connections`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from frontdesk.channels.connections import Gate, Limiter, Refusal, Ticket, networks_matcher
from frontdesk.config.schema import HttpConfig, format_duration, split_listen
from frontdesk.daemon.process.metrics import Metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(why: Refusal, peer: str) -> bytes:
    text = ("too many connections from your address, try again later\n" if why == "client"
            else "server busy: too many connections, try again later\n").encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nRetry-After: 10\r\nConnection: close\r\n\r\n%s"
            % (len(text), text))


class _Connection(web.RequestHandler):
    """aiohttp's connection protocol, holding its :class:`Ticket` and one deadline: for the
    request headers (``header_timeout`` from the opening, or from the first byte of a later
    request), or for the idle time between two requests (``keepalive_timeout``). No deadline
    runs while a request is handled."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, ticket: Ticket,
                 limiter: Limiter, header_timeout: float, idle_timeout: float,
                 body_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.fd_loop = loop
        self.fd_ticket = ticket
        self.fd_limiter = limiter
        self.fd_header_timeout = header_timeout
        self.fd_idle_timeout = idle_timeout
        self.fd_body_timeout = body_timeout
        self.fd_running = 0
        self.fd_deadline: asyncio.TimerHandle | None = None
        self.fd_idle = False  # the deadline running is the keep-alive one
        ticket.evict = self.fd_evict

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.fd_wait(idle=False)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fd_disarm()
        self.fd_ticket.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.fd_idle:  # a new request begins: its headers are due within header_timeout
            self.fd_wait(idle=False)
        super().data_received(data)

    def fd_wait(self, *, idle: bool) -> None:
        """Waiting for the client: ``idle`` between requests, or for a request's headers."""
        self.fd_disarm()
        if self.transport is None or self.transport.is_closing():
            return
        self.fd_ticket.idle(True)
        self.fd_idle = idle
        seconds = self.fd_idle_timeout if idle else self.fd_header_timeout
        self.fd_deadline = self.fd_loop.call_later(seconds, self.fd_expired)

    def fd_disarm(self) -> None:
        self.fd_idle = False
        if self.fd_deadline is not None:
            self.fd_deadline.cancel()
            self.fd_deadline = None

    def fd_request_began(self) -> None:
        self.fd_running += 1
        self.fd_disarm()
        self.fd_ticket.idle(False)

    def fd_request_ended(self) -> None:
        self.fd_running -= 1
        if not self.fd_running:
            self.fd_wait(idle=True)

    def fd_expired(self) -> None:
        self.fd_deadline = None
        if self.fd_running:
            return
        if not self.fd_idle:  # an idle keep-alive connection just goes, as it always may
            bound = format_duration_s(self.fd_header_timeout)
            self.fd_limiter.cut(f"without a request's headers for over {bound}")
        self.force_close()

    def fd_evict(self) -> None:
        self.fd_disarm()
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # A malformed request is the client's doing: a 400 without a traceback in the log
        # (aiohttp logs one per connection). Our own failures still get theirs.
        if isinstance(exc, HttpProcessingError):
            log.debug("bad request from %s: %s", request.remote, exc)
            exc = None
            previous, self.logger = self.logger, _SILENT
            try:
                return super().handle_error(request, status, exc, message)
            finally:
                self.logger = previous
        return super().handle_error(request, status, exc, message)


_SILENT = logging.getLogger("frontdesk.daemon.process.http.client_errors")
_SILENT.propagate = False
_SILENT.addHandler(logging.NullHandler())


def format_duration_s(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


@web.middleware
async def _limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stops the connection's header clock while the request is handled (until its response is
    sent: the request's task ends then) and bounds the time its body takes to arrive."""
    conn = request.protocol
    if not isinstance(conn, _Connection):
        return await handler(request)
    conn.fd_request_began()
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: conn.fd_request_ended())
    else:  # pragma: no cover - aiohttp runs every request in a task of its own
        conn.fd_request_ended()
    body = request.content
    late: list[bool] = []
    timer: asyncio.TimerHandle | None = None
    if not body.is_eof():
        def too_slow() -> None:
            if not body.is_eof():
                late.append(True)
                conn.fd_limiter.cut(f"sending a request body for over "
                                    f"{format_duration_s(conn.fd_body_timeout)}")
                body.set_exception(TimeoutError())

        timer = conn.fd_loop.call_later(conn.fd_body_timeout, too_slow)
    try:
        return await handler(request)
    except TimeoutError:
        if not late:
            raise
        timeout = web.HTTPRequestTimeout(
            text=f"the request body did not arrive within "
                 f"{format_duration_s(conn.fd_body_timeout)}\n")
        timeout.force_close()
        raise timeout from None
    finally:
        if timer is not None:
            timer.cancel()


class HttpServer:
    """``/healthz``, ``/readyz``, ``/metrics`` and the channels' routes, behind the caps and
    bounds of ``[http]`` (see the module's docstring)."""

    def __init__(self, config: HttpConfig, *, metrics: Metrics, readiness: Readiness,
                 refresh_metrics: Callable[[], Awaitable[None]]) -> None:
        self._config = config
        self._metrics = metrics
        self._readiness = readiness
        self._refresh = refresh_metrics
        self.app = web.Application(middlewares=[_limits])
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics_route)
        self.limiter = Limiter("HTTP", max_connections=config.max_connections,
                               max_per_client=config.max_connections_per_client,
                               exempt=networks_matcher(config.trusted_proxies))
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, parts = await self._readiness()
        return web.json_response({"ready": ready, "checks": parts}, status=200 if ready else 503)

    async def _metrics_route(self, request: web.Request) -> web.Response:
        try:
            await self._refresh()
        except Exception as exc:  # the rest of the figures are still worth serving
            from frontdesk.storage.db import store_unavailable

            if store_unavailable(exc):  # a line per scrape then, not a traceback
                log.warning("could not refresh store gauges for /metrics: the store is "
                            "unavailable (%s)", type(exc).__name__)
            else:
                log.warning("could not refresh store gauges for /metrics", exc_info=True)
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": self._metrics.content_type})

    async def start(self) -> None:
        host, port = split_listen(self._config.listen)
        header = self._config.header_timeout.total_seconds()
        keepalive = self._config.keepalive_timeout.total_seconds()
        body = self._config.body_timeout.total_seconds()
        # aiohttp's own keep-alive timer is a backstop only, a little behind ours.
        options: dict[str, Any] = {"access_log": None,
                                   "keepalive_timeout": max(header, keepalive) + 1}
        self._runner = web.AppRunner(self.app, handle_signals=False, **options)
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        limiter = self.limiter

        def connection(ticket: Ticket) -> _Connection:
            return _Connection(manager, loop=loop, ticket=ticket, limiter=limiter,
                               header_timeout=header, idle_timeout=keepalive,
                               body_timeout=body, **options)

        # Our own listening socket (not a TCPSite): every connection passes the Gate first.
        self._server = await loop.create_server(
            lambda: Gate(limiter, connection, _refusal), host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP server listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.limiter.close()
