"""The website channel against a running daemon: a visitor is an HTTP client with a token of its
own, calling the widget's API from a page origin, as a browser would."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes.smtp_sink import SmtpSink

SITE = "http://shop.test"
"""The customer's website (an allowed origin in these tests)."""


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


class Visitor:
    """One browser: a token, and the widget's API calls made from ``origin``."""

    def __init__(self, http: aiohttp.ClientSession, base: str, *, origin: str | None = SITE,
                 token: str | None = None) -> None:
        self.http = http
        self.base = base
        self.origin = origin
        self.token = token or new_token()

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", **extra}
        if self.origin is not None:
            headers["Origin"] = self.origin
        return headers

    async def session(self, **headers: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.base}/web/api/session",
                                 headers=self.headers(**headers)) as r:
            return r.status, await r.json()

    async def send(self, text: str = "", *, client_id: str | None = None,
                   email: str | None = None, page: str = f"{SITE}/pricing",
                   files: list[tuple[str, bytes]] | None = None,
                   **headers: str) -> tuple[int, Any]:
        client_id = client_id or secrets.token_urlsafe(16)
        url = f"{self.base}/web/api/messages"
        if files:
            form = aiohttp.FormData()
            form.add_field("client_id", client_id)
            form.add_field("text", text)
            form.add_field("page", page)
            if email is not None:
                form.add_field("email", email)
            for name, data in files:
                form.add_field("file", data, filename=name,
                               content_type="application/octet-stream")
            async with self.http.post(url, data=form, headers=self.headers(**headers)) as r:
                return r.status, await _body(r)
        body: dict[str, Any] = {"client_id": client_id, "text": text, "page": page}
        if email is not None:
            body["email"] = email
        async with self.http.post(url, json=body, headers=self.headers(**headers)) as r:
            return r.status, await _body(r)

    async def seen(self, ids: list[int]) -> int:
        async with self.http.post(f"{self.base}/web/api/seen", json={"ids": ids},
                                  headers=self.headers()) as r:
            return r.status

    async def file(self, attachment_id: int) -> tuple[int, bytes]:
        async with self.http.get(f"{self.base}/web/api/files/{attachment_id}",
                                 headers=self.headers()) as r:
            return r.status, await r.read()

    def stream(self, last_event_id: int | None = None) -> Stream:
        return Stream(self, last_event_id)


class Stream:
    """The Server-Sent Events stream, read event by event."""

    def __init__(self, visitor: Visitor, last_event_id: int | None) -> None:
        self.visitor = visitor
        self.last_event_id = last_event_id
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.comments = 0
        self._task: asyncio.Task[None] | None = None
        self.status: int | None = None
        self.opened = asyncio.Event()

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        headers = self.visitor.headers(Accept="text/event-stream")
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        async with self.visitor.http.get(f"{self.visitor.base}/web/api/stream",
                                         headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=None)) as r:
            self.status = r.status
            self.opened.set()
            if r.status != 200:
                return
            event: dict[str, str] = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in event:
                        await self.events.put({"id": event.get("id"),
                                               **json.loads(event["data"])})
                    event = {}
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(": ")
                    event[name] = value

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)


async def _body(r: aiohttp.ClientResponse) -> Any:
    text = await r.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


@pytest.fixture
def web_settings(make_settings: Callable[..., Any], sink: SmtpSink) -> Callable[..., Any]:
    """Settings with the website channel on, mail going to the sink."""

    def make(**sections: dict[str, Any]) -> Any:
        web = {"enabled": True, "allowed_origins": [SITE], "title": "Example Shop",
               **sections.pop("web", {})}
        email = {"outbound": {"port": sink.port}, **sections.pop("email", {})}
        return make_settings(web=web, email=email, **sections)

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base_of(daemon: Any) -> str:
    return f"http://127.0.0.1:{daemon.http.port}"
