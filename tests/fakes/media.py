"""A loopback fake of a media host: plain HTTP/1.1 GET on 127.0.0.1, standing for wherever a
channel downloads a file from (a provider's media URLs, the CDN it redirects to, or an internal
host an attacker points the daemon at).

Canned answers by path: :meth:`FakeMediaHost.file` (200 with the bytes and a Content-Type),
:meth:`FakeMediaHost.redirect` (302 to a URL, any scheme, relative or not),
:meth:`FakeMediaHost.stream` (200 with a chunked body and no Content-Length, so a size cap has to
hold while reading); every other path answers 404. Each of them returns the path's URL, and
:meth:`FakeMediaHost.url` builds one with another host name (for a stub resolver to map).

Every request is recorded in :attr:`FakeMediaHost.requests` as ``(path, Authorization header
or None)``, the query left out, so a test can tell where credentials went; a subclass may record
something else by overriding :meth:`FakeMediaHost.record`.
"""

from __future__ import annotations

from typing import Any, Self

from aiohttp import web

from tests.fakes import serve

__all__ = ["FakeMediaHost"]


class FakeMediaHost:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, Any]] = {}  # path -> (kind, value)
        self.requests: list[tuple[str, Any]] = []  # record(request) of every request, in order
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._get)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    # -- canned answers -------------------------------------------------------------------------

    def file(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.answers[path] = ("file", (data, content_type))
        return self.url(path)

    def redirect(self, path: str, to: str) -> str:
        self.answers[path] = ("redirect", to)
        return self.url(path)

    def stream(self, path: str, data: bytes, chunk_size: int = 100) -> str:
        self.answers[path] = ("stream", (data, chunk_size))
        return self.url(path)

    # -- server ---------------------------------------------------------------------------------

    def record(self, request: web.Request) -> tuple[str, Any]:
        return request.path, request.headers.get("Authorization")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(self.record(request))
        kind, value = self.answers.get(request.path, ("missing", None))
        if kind == "file":
            data, content_type = value
            return web.Response(body=data, content_type=content_type)
        if kind == "redirect":
            raise web.HTTPFound(value)
        if kind == "stream":
            data, chunk_size = value
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(data), chunk_size):
                await response.write(data[start:start + chunk_size])
            await response.write_eof()
            return response
        return web.Response(status=404)
