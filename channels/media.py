"""Fetching a customer's file by a URL a request named, without letting the request steer the
daemon (server-side request forgery).

A webhook names where its media are (Twilio's ``MediaUrl{i}``); a signed webhook is still only as
trustworthy as whoever holds the key, and the fetch runs inside the daemon's network. So every
channel that downloads media goes through :class:`MediaFetcher`:

* **Hosts.** A URL is fetched only when its host is one of the provider's (:class:`MediaHosts`):
  the channel's ``api_base_url`` (scheme, host and port exactly) or a pattern of its
  ``media_hosts`` setting: ``media.example.com``, ``media.example.com:8443`` or
  ``*.example.com`` (any name under example.com, not example.com itself). A pattern without a
  port means the scheme's default port (443 for https, 80 for http). Only http and https.
* **Addresses.** A host matched by a wildcard must resolve to public unicast addresses only:
  loopback, private, link-local, shared (CGN), multicast, reserved and unspecified addresses,
  IPv4 and IPv6 (IPv4-mapped, 6to4 and NAT64 forms checked by their IPv4 address), are refused.
  The check is made by the connector's resolver, on the addresses the connection then uses, so a
  name that answers a public address to a first lookup and 127.0.0.1 to the next (DNS
  rebinding) gains nothing. The ``api_base_url`` host and hosts listed literally are trusted to
  resolve where they will (a media proxy on the local network, a test's loopback fake).
* **Redirects** are followed here, not by aiohttp: at most :data:`MAX_REDIRECTS`, each hop
  checked by the same rules; credentials (``credentials(url)``) are asked for per hop, so a
  channel sends its secret to its provider's own hosts and to nothing a redirect points at.
* **Size.** A file larger than ``max_bytes`` is refused (from its Content-Length, else while
  reading), never read whole first.

Refusals are :class:`~frontdesk.channels.base.PermanentFailure` (the attachment job records the
reason and does not retry); a network failure is a
:class:`~frontdesk.channels.base.TemporaryFailure`. Reasons name hosts, never whole URLs (a
Telegram file URL carries the bot token).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from frontdesk.channels.base import PermanentFailure, TemporaryFailure

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def public_address(address: str | Address) -> bool:
    """Whether a connection to this address reaches the public internet: False for loopback,
    private, link-local, shared (100.64/10), multicast, reserved, unspecified and documentation
    addresses, and for an IPv6 address whose embedded IPv4 address (IPv4-mapped, 6to4, NAT64)
    is one of those."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.__class__(ip.packed)  # the scope (``%eth0``) does not matter here
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(ip.packed[-4:])
        if embedded is not None and not public_address(embedded):
            return False
        if ip.is_site_local:
            return False
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                      or ip.is_loopback or ip.is_link_local or ip.is_private))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _norm_host(host: str) -> str:
    """A host as compared here: lower case, no trailing dot, IDNA (punycode) for a name, no
    brackets around an IPv6 address."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host or _is_ip(host):
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def parse_pattern(pattern: str) -> tuple[str, int | None, bool]:
    """``"*.example.com:8443"`` → ``("example.com", 8443, True)``: the host (or, for a
    wildcard, the suffix), the port (None: the scheme's default) and whether it is a wildcard.
    Raises ValueError, in words for the config file, for what is no host pattern."""
    text = pattern.strip()
    if not text or "/" in text or "@" in text or any(c.isspace() for c in text):
        raise ValueError(f"{pattern!r} is not a host name (write media.example.com, "
                         "media.example.com:8443 or *.example.com, without a scheme or path)")
    port: int | None = None
    if text.startswith("["):  # [2001:db8::1] or [2001:db8::1]:8443
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ip(host):
            raise ValueError(f"{pattern!r}: write an IPv6 address as [2001:db8::1]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{pattern!r}: write an IPv6 address as [2001:db8::1]:8443")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(f"{pattern!r}: the port must be a number")
        port = int(number)
    else:
        host = text
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{pattern!r}: the port must be between 1 and 65535")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise ValueError(f"{pattern!r}: a wildcard may only be the first label (*.example.com)")
    name = _norm_host(host)
    if not name or (":" in name and not _is_ip(name)):
        raise ValueError(f"{pattern!r} is not a host name")
    if wildcard and (_is_ip(name) or "." not in name):
        raise ValueError(f"{pattern!r}: a wildcard must stand before a domain of two labels or "
                         "more (*.example.com, not *.com)")
    return name, port, wildcard


def normalise_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns as written back (lower case, punycode), after :func:`parse_pattern` checked
    each one; for a config validator."""
    out = []
    for pattern in patterns:
        host, port, wildcard = parse_pattern(pattern)
        shown = f"[{host}]" if ":" in host else host
        out.append(("*." if wildcard else "") + shown + (f":{port}" if port else ""))
    return out


class MediaHosts:
    """Where media may be fetched from: ``origins`` (a channel's ``api_base_url``, matched by
    scheme, host and port) and ``patterns`` (its ``media_hosts``); see the module docstring."""

    def __init__(self, patterns: Iterable[str] = (), *, origins: Iterable[str] = (),
                 settings: str = "api_base_url, media_hosts") -> None:
        self.settings = settings
        self._origins: set[tuple[str, str, int]] = set()
        self._trusted: set[str] = set()
        for origin in origins:
            url = URL(origin)
            host = _norm_host(url.raw_host or "")
            if url.scheme in _DEFAULT_PORTS and host and url.port is not None:
                self._origins.add((url.scheme, host, url.port))
                self._trusted.add(host)
        self._literal: set[tuple[str, int | None]] = set()
        self._wildcards: list[tuple[str, int | None]] = []
        for pattern in patterns:
            host, port, wildcard = parse_pattern(pattern)
            if wildcard:
                self._wildcards.append((host, port))
            else:
                self._literal.add((host, port))
                self._trusted.add(host)

    def trusts(self, host: str) -> bool:
        """Whether a connection to ``host`` may go to whatever address it resolves to."""
        return _norm_host(host) in self._trusted

    def refusal(self, url: URL) -> str | None:
        """Why ``url`` may not be fetched, or None when it may."""
        if url.scheme not in _DEFAULT_PORTS:
            return f"only http and https addresses are fetched, not {url.scheme or 'this'}:"
        host = _norm_host(url.raw_host or "")
        if not host:
            return "the address has no host"
        port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
        if (url.scheme, host, port) in self._origins:
            return None
        default = _DEFAULT_PORTS[url.scheme]
        if (host, port) in self._literal or (port == default and (host, None) in self._literal):
            return None
        if not _is_ip(host):
            for suffix, wanted in self._wildcards:
                if host.endswith("." + suffix) and port == (wanted or default):
                    return None
        return f"{describe(url)} is not a host media are fetched from (see {self.settings})"


def describe(url: URL) -> str:
    """``scheme://host:port`` of a URL: what a reason or a log line may show of it."""
    host = url.raw_host or "?"
    shown = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{shown}" + (f":{url.port}" if url.explicit_port else "")


class AddressRefused(OSError):
    """A host resolved to no address media may be fetched from."""


class PublicOnlyResolver(AbstractResolver):
    """The connector's resolver: the addresses of a host that :class:`MediaHosts` does not
    trust are filtered down to public ones (:func:`public_address`); none left is an
    :class:`AddressRefused`."""

    def __init__(self, hosts: MediaHosts, resolver: AbstractResolver | None = None) -> None:
        self._hosts = hosts
        self._resolver = resolver if resolver is not None else aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self._hosts.trusts(host):
            return found
        kept = [r for r in found if public_address(r["host"])]
        if not kept:
            shown = ", ".join(sorted({r["host"] for r in found}))[:200] or "nothing"
            raise AddressRefused(f"{_norm_host(host)} resolves to {shown}: a loopback, private, "
                                 "link-local or otherwise non-public address, which media are "
                                 "not fetched from")
        return kept

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True)
class Fetched:
    """What the last hop answered: its status, and the body and content type when it was 200
    (empty otherwise: the caller decides what another status means)."""

    status: int
    data: bytes
    content_type: str
    origin: str  # scheme://host:port that answered


Credentials = Callable[[URL], Mapping[str, str]]


class MediaFetcher:
    """An aiohttp session that fetches only what :class:`MediaHosts` allows; see the module
    docstring. ``provider`` names the remote side in reasons ("Twilio")."""

    def __init__(self, hosts: MediaHosts, *, provider: str, timeout: float, max_bytes: int,
                 credentials: Credentials | None = None, max_redirects: int = MAX_REDIRECTS,
                 resolver: AbstractResolver | None = None) -> None:
        self.hosts = hosts
        self.provider = provider
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._credentials = credentials
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    @property
    def running(self) -> bool:
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(self.hosts, self._resolver))
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def fetch(self, address: str) -> Fetched:
        """GET ``address``, following allowed redirects; raises PermanentFailure for what may
        not be fetched (or is too large) and TemporaryFailure when the host cannot be
        reached."""
        session = self._session
        if session is None or session.closed:
            raise TemporaryFailure(f"the {self.provider} channel is not running")
        try:
            url = URL(address)
        except (ValueError, TypeError):
            raise PermanentFailure("the file's address is not a URL") from None
        for hop in range(self.max_redirects + 1):
            refusal = self.hosts.refusal(url)
            if refusal is not None:
                if hop:
                    raise PermanentFailure(f"{self.provider} redirected the file to "
                                           f"{describe(url)}, which was not followed: {refusal}")
                raise PermanentFailure(f"the file's address was not fetched: {refusal}")
            host = url.raw_host or ""
            if _is_ip(host) and not self.hosts.trusts(host) and not public_address(host):
                raise PermanentFailure(f"the file's address {describe(url)} is not a public "
                                       "address, which media are not fetched from")
            headers = dict(self._credentials(url)) if self._credentials is not None else {}
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        location = response.headers.get("Location", "")
                        if not location:
                            return Fetched(response.status, b"", "", describe(url))
                        try:
                            url = response.url.join(URL(location))
                        except (ValueError, TypeError):
                            raise PermanentFailure(f"{self.provider} redirected the file to an "
                                                   "address that is not a URL") from None
                        continue
                    if response.status != 200:
                        return Fetched(response.status, b"", "", describe(url))
                    data = await self._read(response)
                    return Fetched(200, data, response.headers.get("Content-Type", ""),
                                   describe(url))
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, AddressRefused):
                    raise PermanentFailure(f"the file was not fetched from {describe(url)}: "
                                           f"{exc.os_error}") from None
                raise TemporaryFailure(f"could not reach {describe(url)} for the file: "
                                       f"{type(exc).__name__}") from None
            except aiohttp.InvalidURL:
                raise PermanentFailure(f"the file's address {describe(url)} is not a URL "
                                       "that can be fetched") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise TemporaryFailure(f"could not fetch the file from {describe(url)}: "
                                       f"{type(exc).__name__}") from None
        raise PermanentFailure(f"{self.provider} redirected the file more than "
                               f"{self.max_redirects} times; not followed further")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        too_large = PermanentFailure(f"the file is larger than {size_words(self.max_bytes)}, which "
                                     "is more than frontdesk fetches")
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise too_large
        data = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            data.extend(chunk)
            if len(data) > self.max_bytes:
                raise too_large
        return bytes(data)


def size_words(n: int) -> str:
    """``52428800`` → ``"50 MB"``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MB"
    if n >= 1024:
        return f"{n / 1024:g} KB"
    return f"{n} bytes"
