"""The safe media fetch every channel downloads through (frontdesk.channels.media): which hosts
may be fetched from, which addresses a connection may reach (checked when connecting, on the
address the connection uses), redirects followed hop by hop, credentials per hop, size capped.
Real sockets on 127.0.0.1; names are resolved by a stub resolver so a public-looking name can
be made to answer 127.0.0.1, as a DNS rebinding attack would."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from frontdesk.channels.base import PermanentFailure
from frontdesk.channels.media import (
    MediaFetcher,
    MediaHosts,
    PublicOnlyResolver,
    parse_pattern,
    public_address,
)
from tests.fakes.media import FakeMediaHost


class StubResolver(AbstractResolver):
    """Answers each name with the addresses given (none: not found)."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        found = self.names.get(host.rstrip("."), [])
        if not found:
            raise OSError(f"{host} not found")
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in found]

    async def close(self) -> None:
        pass


def canned(host: FakeMediaHost) -> FakeMediaHost:
    """What these tests fetch: a small file, files over a 1000-byte cap with and without a
    Content-Length, and a redirect to itself."""
    host.file("/ok", b"a small file", "image/png")
    host.file("/sized", b"x" * 5000, "image/png")
    host.stream("/streamed", b"y" * 5000)  # no Content-Length: the cap must hold while reading
    host.redirect("/loop", "/loop")
    return host


@pytest.fixture
async def site() -> AsyncIterator[FakeMediaHost]:
    async with FakeMediaHost() as s:
        yield canned(s)


async def fetcher(hosts: MediaHosts, *, names: dict[str, list[str]] | None = None,
                  max_bytes: int = 1000, credentials: Any = None) -> MediaFetcher:
    f = MediaFetcher(hosts, provider="Example", timeout=5, max_bytes=max_bytes,
                     credentials=credentials, resolver=StubResolver(names or {}))
    await f.start()
    return f


# -- addresses and hosts ----------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.251", "239.1.1.1", "240.0.0.1", "255.255.255.255",
    "192.0.2.10", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1",
    "fec0::1", "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "::127.0.0.1", "2002:7f00:1::1", "2002:a00:1::1",
    "64:ff9b::7f00:1", "2001:db8::1", "not an address",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111",
                                     "2a00:1450:4001:82a::200e"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert public_address(address)


def test_host_patterns() -> None:
    hosts = MediaHosts(["*.twilio.com", "*.twiliocdn.com", "s3-external-1.amazonaws.com",
                        "media.example.org:8443", "[2001:db8::5]"],
                       origins=["https://api.twilio.com", "http://127.0.0.1:4010"])
    allowed = [
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://API.Twilio.com./x", "https://api.dublin.ie1.twilio.com/x",
        "https://mms.twiliocdn.com/AC1/abc?Expires=1", "https://media.twiliocdn.com/x",
        "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/x",
        "https://media.example.org:8443/x", "http://127.0.0.1:4010/x", "https://[2001:db8::5]/x",
    ]
    refused = [
        "http://127.0.0.1:9999/metrics", "http://localhost:4010/x", "https://twilio.com/x",
        "https://twiliocdn.com/x", "https://eviltwilio.com/x", "https://twilio.com.evil.org/x",
        "https://api.twilio.com:8443/x", "https://mms.twiliocdn.com:444/x",
        "https://media.example.org/x", "https://other.s3-external-1.amazonaws.com/x",
        "https://s3.amazonaws.com/x", "file:///etc/passwd", "ftp://api.twilio.com/x",
        "gopher://api.twilio.com/x", "https://169.254.169.254/latest/meta-data/",
        "http://[::1]:4010/x", "http:///x",
    ]
    assert [u for u in allowed if hosts.refusal(URL(u)) is not None] == []
    assert [u for u in refused if hosts.refusal(URL(u)) is None] == []
    # only the api_base_url host and literal entries may resolve anywhere
    assert hosts.trusts("api.twilio.com") and hosts.trusts("s3-external-1.amazonaws.com.")
    assert hosts.trusts("127.0.0.1") and hosts.trusts("MEDIA.example.org")
    assert not hosts.trusts("mms.twiliocdn.com") and not hosts.trusts("api.dublin.ie1.twilio.com")


@pytest.mark.parametrize("pattern", ["", "*", "*.com", "https://a.example", "a.example/x",
                                     "a.example:port", "a.example:70000", "*.a*.example",
                                     "user@a.example", "a .example", "[::1", "*.10.0.0.1"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(pattern)


async def test_the_resolver_keeps_only_public_addresses_of_an_untrusted_name() -> None:
    stub = StubResolver({"mixed.cdn.test": ["127.0.0.1", "93.184.216.34", "10.0.0.1"],
                         "inside.cdn.test": ["10.0.0.1", "::1"],
                         "proxy.internal": ["10.0.0.7"]})
    resolver = PublicOnlyResolver(MediaHosts(["*.cdn.test", "proxy.internal"]), stub)
    assert [r["host"] for r in await resolver.resolve("mixed.cdn.test", 443)] == \
        ["93.184.216.34"]
    with pytest.raises(OSError, match=r"10\.0\.0\.1"):
        await resolver.resolve("inside.cdn.test", 443)
    assert [r["host"] for r in await resolver.resolve("proxy.internal", 443)] == ["10.0.0.7"]


# -- fetching ---------------------------------------------------------------------------------

async def test_a_name_that_resolves_to_loopback_is_refused_when_connecting(
        site: FakeMediaHost) -> None:
    """The host rule lets evil.cdn.test through (the wildcard); the address it resolves to,
    checked by the connector, does not."""
    names = {"evil.cdn.test": ["127.0.0.1"], "proxy.internal": ["127.0.0.1"]}
    f = await fetcher(MediaHosts([f"*.cdn.test:{site.port}", f"proxy.internal:{site.port}"]),
                      names=names)
    try:
        with pytest.raises(PermanentFailure, match="non-public address"):
            await f.fetch(site.url("/ok", "evil.cdn.test"))
        assert site.requests == []
        got = await f.fetch(site.url("/ok", "proxy.internal"))  # listed literally: trusted
        assert (got.status, got.data) == (200, b"a small file")
    finally:
        await f.close()


async def test_redirects_are_checked_hop_by_hop_and_credentials_asked_per_hop(
        site: FakeMediaHost) -> None:
    async with FakeMediaHost() as other:
        canned(other)
        to_other = site.redirect("/go/1", f"http://localhost:{other.port}/ok")
        off_host = site.redirect("/go/2", f"http://127.0.0.1:{other.port}/ok")
        to_a_file = site.redirect("/go/3", "file:///etc/passwd")
        asked: list[str] = []

        def credentials(url: URL) -> dict[str, str]:
            asked.append(str(url.port))
            return {"Authorization": "Basic c2VjcmV0"} if url.port == site.port else {}

        hosts = MediaHosts([f"localhost:{other.port}"],
                           origins=[f"http://127.0.0.1:{site.port}"])
        f = await fetcher(hosts, names={"localhost": ["127.0.0.1"]}, credentials=credentials)
        try:
            got = await f.fetch(to_other)
            assert (got.status, got.data) == (200, b"a small file")
            assert other.requests == [("/ok", None)]  # no credentials past the first host
            assert site.requests[-1][1] == "Basic c2VjcmV0"
            with pytest.raises(PermanentFailure, match=r"redirected the file to http://127\.0"):
                await f.fetch(off_host)
            with pytest.raises(PermanentFailure, match="not followed"):
                await f.fetch(to_a_file)
            with pytest.raises(PermanentFailure, match="more than 5 times"):
                await f.fetch(site.url("/loop"))
            assert len([p for p, _ in site.requests if p == "/loop"]) == 6
            assert other.requests == [("/ok", None)]
        finally:
            await f.close()


async def test_the_size_is_capped_with_or_without_a_content_length(site: FakeMediaHost) -> None:
    f = await fetcher(MediaHosts(origins=[f"http://127.0.0.1:{site.port}"]), max_bytes=1000)
    try:
        for path in ("/sized", "/streamed"):
            with pytest.raises(PermanentFailure, match="larger than 1000 bytes"):
                await f.fetch(site.url(path))
        got = await f.fetch(site.url("/ok"))
        assert got.data == b"a small file" and got.content_type.startswith("image/png")
        assert (await f.fetch(site.url("/missing"))).status == 404
    finally:
        await f.close()
