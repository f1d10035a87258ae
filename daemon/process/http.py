"""The daemon's HTTP server (aiohttp on the daemon's loop): health, readiness and metrics.

Channel webhooks mount their routes on the same application.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from frontdesk.config.schema import split_listen
from frontdesk.daemon.process.metrics import Metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


class HttpServer:
    def __init__(self, listen: str, *, metrics: Metrics, readiness: Readiness,
                 refresh_metrics: Callable[[], Awaitable[None]]) -> None:
        self._listen = listen
        self._metrics = metrics
        self._readiness = readiness
        self._refresh = refresh_metrics
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics_route)
        self._runner: web.AppRunner | None = None
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
        host, port = split_listen(self._listen)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("HTTP server listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
