"""Loopback fakes of the remote SaaS APIs (Slack, Twilio, Telegram) speaking their protocols."""

from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application, port: int = 0, *,
                shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 (``port`` 0: one the kernel picks); the runner (for its
    ``cleanup()``) and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1]
