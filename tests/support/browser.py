"""A real Chromium for the tests of what visitors see: Playwright for Python driving Debian's
``chromium`` (``.ci/run`` installs both). Where either is missing the tests skip, saying why.

:class:`Site` is the customer's website on another origin: a loopback HTTP server whose pages
embed the widget from the daemon with one script tag, as a real site does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    explicit = os.environ.get("FRONTDESK_TEST_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for name in CHROMIUM_CANDIDATES:
        if found := shutil.which(name):
            return found
    return None


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return ("the browser tests need Playwright for Python (pip install 'frontdesk[test]'); "
                ".ci/run installs it")
    if chromium_path() is None:
        return ("the browser tests need Chromium (Debian: apt-get install chromium, or set "
                "FRONTDESK_TEST_CHROMIUM); .ci/run installs it")
    return None


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright's Browser)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            await browser.close()


class Site:
    """The customer's website: ``/`` embeds the widget from ``widget_base``; ``/plain`` does
    not. Served on its own loopback port, so its origin is not the daemon's."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host
        self.widget_base = ""
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/{name:[a-z-]+}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        # the host page's own CSS tries hard to break the widget; the shadow root keeps it out
        return web.Response(content_type="text/html", text=f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Example Shop</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>* {{ color: red !important; font-size: 40px !important; display: inline }}
button {{ display: none !important }}</style></head>
<body><h1>Example Shop: {request.path}</h1>
<script src="{self.widget_base}/web/widget.js" async></script></body></html>""")
