"""Connection limits shared by the daemon's listeners (the SMTP server and the HTTP server).

A :class:`Limiter` counts a listener's open connections, per client address and in all; a
:class:`Gate` is the protocol every accepted connection starts with: it asks the limiter, and
either hands the transport to the real protocol (an SMTP session, an HTTP connection) or writes
one refusal line (``421`` / ``503``) and closes it at once, before anything is built for it.

Refusals, evictions and connections cut for slowness are never logged one by one: the first
refusal is one WARNING line at once, and whatever follows is summed up in one line per
:data:`REPORT_INTERVAL` while it goes on (with the address that was refused most).

:func:`raise_file_limit` makes sure the caps fit under the process's open-file limit, so the
event loop never meets ``EMFILE`` ("socket.accept() out of system resource"), which asyncio logs
with a traceback on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

log = logging.getLogger(__name__)

REPORT_INTERVAL = 60.0
"""Seconds between two summary lines of one listener (read when a summary is scheduled)."""

FILE_HEADROOM = 512
"""Open files beyond the connection caps: the store's pool, outbound connections (relay, IMAP,
Slack, Twilio, Telegram), the listening sockets, log and attachment files, and the connections a
listener accepts in one go before the gate closes the extra ones."""

_MAX_HOSTS = 1000  # distinct refused addresses remembered for one summary

Refusal = Literal["client", "total"]


def client_key(host: str) -> str:
    """What the per-client cap counts: an IPv4 address (also when IPv4-mapped in IPv6), or an
    IPv6 address's /64 network (a single host or home is handed a whole /64)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def networks_matcher(networks: Iterable[str]) -> Callable[[str], bool]:
    """Whether a peer address lies in one of ``networks`` (addresses or CIDR networks)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    if not nets:
        return lambda host: False

    def match(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in nets)

    return match


class Ticket:
    """One admitted connection. ``release`` (idempotent) when it is gone. A protocol that can
    be closed to make room sets ``evict`` and tells the limiter when it is idle."""

    __slots__ = ("_limiter", "_released", "evict", "host", "key")

    def __init__(self, limiter: Limiter, key: str, host: str) -> None:
        self._limiter = limiter
        self.key = key
        self.host = host
        self.evict: Callable[[], None] | None = None
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self)

    def idle(self, idle: bool) -> None:
        """Waiting for the client (may be evicted at the total cap) or busy with a request."""
        if not self._released:
            self._limiter._set_idle(self, idle)


class Limiter:
    """The caps of one listener, named ``name`` ("SMTP", "HTTP") in its log lines.

    ``exempt(host)`` addresses (trusted proxies, which carry many clients) are held to the total
    cap only. At the total cap, an idle connection (one whose protocol set ``Ticket.evict`` and
    said it is idle) is closed to make room: the longest-idle one of the address holding the
    most connections (a trusted proxy aside), else the longest-idle one of all; when there is
    none, the newcomer is refused.
    """

    def __init__(self, name: str, *, max_connections: int, max_per_client: int,
                 exempt: Callable[[str], bool] | None = None, noun: str = "connections") -> None:
        self.name = name
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._exempt = exempt or (lambda host: False)
        self._noun = noun
        self._open = 0
        self._per_key: Counter[str] = Counter()
        self._idle: dict[Ticket, None] = {}  # oldest first
        self._exempt_keys: set[str] = set()
        # What the next summary line reports.
        self._refused: Counter[Refusal] = Counter()
        self._refused_from: Counter[str] = Counter()
        self._evicted = 0
        self._cut: Counter[str] = Counter()
        self._report: asyncio.TimerHandle | None = None
        self._since = time.monotonic()  # when the interval being summed up began
        self.totals: Counter[str] = Counter()
        """Since start, for the metrics: ``refused_client``, ``refused_total`` (refused over a
        cap), ``evicted`` (idle, closed to make room), ``too_slow`` (cut by a time bound)."""

    @property
    def open(self) -> int:
        return self._open

    def admit(self, host: str) -> Ticket | Refusal:
        key = client_key(host)
        if self._exempt(host):
            self._exempt_keys.add(key)
        elif self._per_key[key] >= self.max_per_client:
            self.totals["refused_client"] += 1
            self._note_refusal("client", key)
            return "client"
        if self._open >= self.max_connections and not self._make_room():
            self.totals["refused_total"] += 1
            self._note_refusal("total", key)
            return "total"
        self._open += 1
        self._per_key[key] += 1
        return Ticket(self, key, host)

    def cut(self, why: str) -> None:
        """A connection was closed for being too slow (``why`` names the bound)."""
        self._cut[why] += 1
        self.totals["too_slow"] += 1
        self._schedule()

    def close(self) -> None:
        """The listener stops: say what is still unreported now."""
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._flush(reschedule=False)

    # -- internals -------------------------------------------------------------------------

    def _release(self, ticket: Ticket) -> None:
        self._open -= 1
        self._per_key[ticket.key] -= 1
        if self._per_key[ticket.key] <= 0:
            del self._per_key[ticket.key]
        self._idle.pop(ticket, None)

    def _set_idle(self, ticket: Ticket, idle: bool) -> None:
        self._idle.pop(ticket, None)
        if idle and ticket.evict is not None:
            self._idle[ticket] = None

    def _make_room(self) -> bool:
        if not self._idle:
            return False
        # From the address holding the most (never a trusted proxy's: it carries many clients).
        holders = [k for k in self._per_key if k not in self._exempt_keys]
        top = max(holders, key=self._per_key.__getitem__) if holders else None
        victim = next((t for t in self._idle if t.key == top), None)
        if victim is None:
            victim = next(iter(self._idle))
        evict = victim.evict
        victim.release()
        self._evicted += 1
        self.totals["evicted"] += 1
        self._schedule()
        if evict is not None:
            evict()
        return True

    def _note_refusal(self, why: Refusal, key: str) -> None:
        if self._report is None and not self._pending():
            cap = (f"the per-client cap of {self.max_per_client}" if why == "client"
                   else f"the total cap of {self.max_connections}")
            interval = _seconds(REPORT_INTERVAL)
            log.warning("refused an %s connection from %s: over %s %s; further refusals are "
                        "summed up every %s", self.name, key, cap, self._noun, interval)
            self._schedule()
            return
        self._refused[why] += 1
        if key in self._refused_from or len(self._refused_from) < _MAX_HOSTS:
            self._refused_from[key] += 1
        self._schedule()

    def _pending(self) -> bool:
        return bool(self._refused or self._evicted or self._cut)

    def _schedule(self) -> None:
        if self._report is None:
            self._since = time.monotonic()
            with contextlib.suppress(RuntimeError):  # no running loop: reported at close
                self._report = asyncio.get_running_loop().call_later(
                    REPORT_INTERVAL, self._flush)

    def _flush(self, reschedule: bool = True) -> None:
        self._report = None
        if not self._pending():
            return  # a quiet interval: the next refusal is told at once again
        # (at close, the interval is cut short: say how long it really was)
        interval = _seconds(min(REPORT_INTERVAL, math.ceil(time.monotonic() - self._since)))
        parts = []
        refused = sum(self._refused.values())
        if refused:
            detail = []
            if self._refused["client"]:
                detail.append(f"{self._refused['client']:,} over the per-client cap of "
                              f"{self.max_per_client}")
            if self._refused["total"]:
                detail.append(f"{self._refused['total']:,} over the total cap of "
                              f"{self.max_connections}")
            most, count = self._refused_from.most_common(1)[0]
            parts.append(f"refused {refused:,} {self.name} {_plural(refused, 'connection')} "
                         f"in the last {interval}: {', '.join(detail)} (most from {most}: "
                         f"{count:,})")
        when = "" if parts else f" in the last {interval}"
        if self._evicted:
            parts.append(f"closed {self._evicted:,} idle {self.name} "
                         f"{_plural(self._evicted, 'connection')}{when} to make room under the "
                         f"total cap of {self.max_connections}")
            when = ""
        if self._cut:
            cut = sum(self._cut.values())
            detail = [f"{n:,} {why}" for why, n in self._cut.most_common()]
            parts.append(f"cut {cut:,} {self.name} {_plural(cut, self._noun.rstrip('s'))}"
                         f"{when} for being too slow: {', '.join(detail)}")
        level = logging.WARNING if refused or self._evicted else logging.INFO
        log.log(level, "%s", "; ".join(parts))
        self._refused.clear()
        self._refused_from.clear()
        self._evicted = 0
        self._cut.clear()
        if reschedule:
            self._schedule()


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _seconds(value: float) -> str:
    return f"{value:g} s"


class Gate(asyncio.Protocol):
    """Every accepted connection starts here: admitted, the transport goes to ``start(ticket)``'s
    protocol (which must ``ticket.release()`` in its ``connection_lost``); refused, the client
    gets ``refusal(why, host)`` and the connection is closed at once."""

    def __init__(self, limiter: Limiter, start: Callable[[Ticket], asyncio.BaseProtocol],
                 refusal: Callable[[Refusal, str], bytes]) -> None:
        self._limiter = limiter
        self._start = start
        self._refusal = refusal

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        ticket = self._limiter.admit(host)
        if not isinstance(ticket, Ticket):
            with contextlib.suppress(Exception):
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(self._refusal(ticket, host))
            transport.close()
            return
        try:
            protocol = self._start(ticket)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
        except BaseException:
            ticket.release()
            transport.close()
            raise

    def data_received(self, data: bytes) -> None:
        """A refused client's bytes, between the refusal and the close: ignored."""

    def eof_received(self) -> bool | None:
        return None


def raise_file_limit(caps: Mapping[str, int]) -> None:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one, and warn in one line if
    the connection ``caps`` (config key → value) plus :data:`FILE_HEADROOM` exceed it."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = soft if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("open-file limit raised from %d to %d", soft, target)
            soft = target
    except (OSError, ValueError) as exc:
        log.debug("could not raise the open-file limit: %s", exc)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    needed = sum(caps.values()) + FILE_HEADROOM
    if needed > soft:
        named = " + ".join(f"{key} {value:,}" for key, value in caps.items())
        log.warning("the open-file limit (RLIMIT_NOFILE) is %d, below what the connection caps "
                    "need (%s + %d for everything else = %s): at the caps, new connections fail "
                    "with 'Too many open files'; raise LimitNOFILE= in the unit or lower the "
                    "caps", soft, named, FILE_HEADROOM, f"{needed:,}")
