"""Connection exhaustion on the HTTP server (issue 14), over real loopback sockets.

On loopback every client is 127.0.0.1; an attacker binds its sockets to 127.0.0.2 (Linux routes
all of 127.0.0.0/8 to loopback) to be another client address.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.support.helpers import eventually
from tests.support.sockets import ATTACKER, Conn, close_all, closed, connect, trickling


async def get(port: int, path: str, source: str = "127.0.0.1",
              method: str = "GET") -> tuple[int, bytes]:
    """One request on a connection of its own: the status and the whole response."""
    r, w = await connect(port, source)
    try:
        w.write(f"{method} {path} HTTP/1.1\r\nHost: frontdesk\r\nConnection: close\r\n\r\n"
                .encode())
        response = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
    assert response.startswith(b"HTTP/1.1 "), f"no response to {path}: {response!r}"
    return int(response.split(b" ", 2)[1]), response


async def open_idle(port: int, count: int, source: str = ATTACKER) -> list[Conn]:
    conns = [await connect(port, source) for _ in range(count)]
    await asyncio.sleep(0.2)  # let the server take them all in
    return conns


async def still_open(conns: list[Conn]) -> int:
    results = await asyncio.gather(*(closed(r, 0.3) for r, _ in conns))
    return sum(not c for c in results)


async def _none_open(limiter: Any) -> bool:
    return bool(limiter.open == 0)


async def test_slowloris_is_cut_after_header_timeout_while_healthz_answers(
        make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(http={
        "listen": "127.0.0.1:0", "header_timeout": "1s", "keepalive_timeout": "3s"}))
    port = d.http.port
    r, w = await connect(port, ATTACKER)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: frontdesk\r\n")

    async def trickle(w: asyncio.StreamWriter) -> None:  # a header byte every 0.2 s, no end
        for byte in b"X-Slow: " + b"a" * 100:
            w.write(bytes([byte]))
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with trickling(w, trickle(w)):
        status, body = await get(port, "/healthz")
        assert status == 200 and b'"ok"' in body
        assert await closed(r, 4)
        assert time.monotonic() - started < 2.5
        status, _ = await get(port, "/readyz")
        assert status == 200
    # Keep-alive: a connection may sit idle between requests for keepalive_timeout...
    r, w = await connect(port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: frontdesk\r\n\r\n")
    assert (await asyncio.wait_for(r.readline(), 3)).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await closed(r, 5)
    assert 2.5 < time.monotonic() - started < 4.5
    w.close()
    # ... but a request begun on it must still bring its headers within header_timeout.
    r, w = await connect(port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: frontdesk\r\n\r\n")
    assert (await asyncio.wait_for(r.readline(), 3)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)
    w.write(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    async with trickling(w, trickle(w)):
        assert await closed(r, 4)
        assert time.monotonic() - started < 2


async def test_over_cap_connections_from_one_address_are_closed_once_logged(
        make_settings: Any, daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d = await daemon_factory(make_settings(http={
        "listen": "127.0.0.1:0", "max_connections_per_client": 5, "max_connections": 100}))
    port = d.http.port
    held = await open_idle(port, 5)
    extra = await open_idle(port, 10)
    try:
        results = await asyncio.gather(*(closed(r, 1) for r, _ in extra))
        assert all(results), results
        assert await still_open(held) == 5
        status, _ = await get(port, "/healthz")  # another address is served
        assert status == 200
        refusals = [rec.getMessage() for rec in caplog.records
                    if rec.levelno >= logging.WARNING and "refused" in rec.getMessage()]
        assert len(refusals) == 1, refusals
        assert "HTTP" in refusals[0] and ATTACKER in refusals[0]
        assert not [rec for rec in caplog.records if rec.exc_info]
        # ... and an operator's dashboard counts them
        status, body = await get(port, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'frontdesk_connections_refused_total{reason="per_client_cap",server="http"} 10.0' \
            in text
        assert 'frontdesk_connections_open{server="http"} 6.0' in text  # 5 held + this scrape
        assert 'frontdesk_connections_refused_total{reason="total_cap",server="smtp"} 0.0' in text
    finally:
        close_all(held + extra)
    # An over-cap connection that says something hears why.
    await eventually(lambda: _none_open(d.http.limiter))
    held = await open_idle(port, 5)
    try:
        status, body = await get(port, "/healthz", source=ATTACKER)
        assert status == 503 and b"too many connections" in body
    except ConnectionError:
        pass  # the request crossed the server's close: a reset is all the client sees
    finally:
        close_all(held)


async def test_total_cap_full_of_idle_attackers_healthz_and_readyz_still_answer(
        make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(http={
        "listen": "127.0.0.1:0", "max_connections_per_client": 1000, "max_connections": 10}))
    port = d.http.port
    attackers = await open_idle(port, 20)
    try:
        assert await still_open(attackers) <= 10
        for path in ("/healthz", "/readyz", "/healthz"):
            status, _ = await get(port, path)
            assert status == 200, path
        assert await still_open(attackers) <= 10
    finally:
        close_all(attackers)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    """The HTTP server alone, with a route that reads a body and one that streams for 2 s."""
    from frontdesk.config.schema import HttpConfig
    from frontdesk.daemon.process.http import HttpServer
    from frontdesk.daemon.process.metrics import Metrics

    async def ready() -> tuple[bool, dict[str, str]]:
        return True, {}

    async def nothing() -> None:
        return None

    config = HttpConfig(listen="127.0.0.1:0", header_timeout="1s", body_timeout="1s")
    http = HttpServer(config, metrics=Metrics(), readiness=ready, refresh_metrics=nothing)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for n in range(5):  # 2 s in all, twice header_timeout
            await response.write(b"event %d\n" % n)
            await asyncio.sleep(0.4)
        await response.write_eof()
        return response

    http.app.router.add_post("/echo", echo)
    http.app.router.add_get("/stream", stream)
    await http.start()
    yield http
    await http.stop()


async def test_trickled_body_gets_408_but_a_long_response_streams_on(server: Any) -> None:
    port = server.port
    r, w = await connect(port, ATTACKER)
    w.write(b"POST /echo HTTP/1.1\r\nHost: frontdesk\r\nContent-Length: 1000\r\n\r\n")

    async def trickle() -> None:
        for _ in range(100):
            w.write(b"x")
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with trickling(w, trickle()):
        status_line = await asyncio.wait_for(r.readline(), 4)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert time.monotonic() - started < 2.5
        assert await closed(r, 2)
    # A body sent at once is read; a response streaming past header_timeout is not cut.
    r, w = await connect(port)
    w.write(b"POST /echo HTTP/1.1\r\nHost: frontdesk\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\nhello")
    response = await asyncio.wait_for(r.read(), 3)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello")
    w.close()
    status, body = await get(port, "/stream")
    assert status == 200 and b"event 4" in body


async def test_file_limit_is_raised_to_the_hard_limit_and_too_small_a_one_is_named(
        make_settings: Any, daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip("needs a finite hard RLIMIT_NOFILE of at least 2048")
    caplog.set_level(logging.INFO)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        await daemon_factory(make_settings(http={"listen": "127.0.0.1:0"}))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert not [r for r in caplog.records if "RLIMIT_NOFILE" in r.getMessage()]
        # Caps that the hard limit cannot hold are named in one line at start.
        await daemon_factory(make_settings(http={"listen": "127.0.0.1:0",
                                                 "max_connections": hard + 1}))
        lines = [r.getMessage() for r in caplog.records if "RLIMIT_NOFILE" in r.getMessage()]
        assert len(lines) == 1 and str(hard) in lines[0], lines
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))



async def test_a_trusted_proxy_is_held_to_the_total_cap_only(
        make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(http={
        "listen": "127.0.0.1:0", "max_connections_per_client": 2, "max_connections": 100,
        "trusted_proxies": ["127.0.0.2/32"]}))
    port = d.http.port
    proxy = await open_idle(port, 6)  # one proxy carries many clients
    direct = await open_idle(port, 3, source="127.0.0.1")
    try:
        assert await still_open(proxy) == 6
        assert await still_open(direct) == 2
    finally:
        close_all(proxy + direct)


def test_per_client_counting_and_trusted_networks() -> None:
    from frontdesk.channels.connections import client_key, networks_matcher

    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    # One IPv6 host is handed a whole /64: its addresses share one per-client count.
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == \
        "2001:db8:1:2::/64"
    trusted = networks_matcher(["10.0.0.0/8", "2001:db8::1"])
    assert trusted("10.1.2.3") and trusted("::ffff:10.1.2.3") and trusted("2001:db8::1")
    assert not trusted("192.0.2.7") and not trusted("2001:db8::2") and not trusted("")
