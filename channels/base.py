"""The contract every customer channel shares.

A channel adapter has three faces:

* receive: ``async start(accept)`` / ``async stop()``. ``accept(channel, remote_id, raw, meta)``
  journals the raw message and returns only after the commit; the adapter answers its remote
  side (SMTP 250, HTTP 200) after that and answers temporarily (451, 503) if it raises.
* parse: ``parse(raw, meta) -> InboundMessage``: pure, no I/O, so it can be re-run on a dead
  letter after a fix.
* send: ``async send(outbound) -> Receipt``; raises :class:`TemporaryFailure` (retry later) or
  :class:`PermanentFailure` (give up, with words a person understands).

Adapters know their remote protocol and nothing of the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from frontdesk.daemon.domain.messages import InboundMessage, OutboundMessage, Receipt


class DeliveryError(Exception):
    """A send that did not work. ``reason`` is for people (Slack, `frontdesk show`)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TemporaryFailure(DeliveryError):
    """Try again later (connection refused, 4xx, timeouts, rate limits)."""


class Deferred(TemporaryFailure):
    """Not tried now: a rate limit (the remote side's Retry-After, or a pace of our own) says
    wait ``retry_after`` seconds. The outbox waits exactly that long, and the wait does not count
    as a failed attempt, so a long queue behind a rate limit never gives up."""


class PermanentFailure(DeliveryError):
    """Retrying cannot help (5xx from the relay, opted-out number, unknown user)."""


class ParseError(ValueError):
    """The raw message cannot be turned into an InboundMessage; it stays in the journal."""


Accept = Callable[[str, str, bytes, Mapping[str, Any]], Awaitable[bool]]
"""``accept(channel, remote_id, raw, meta)``: journal and commit; True if new, False if seen."""


class Channel(Protocol):
    """A customer channel as the daemon composes it."""

    name: str

    async def start(self, accept: Accept) -> None: ...

    async def stop(self) -> None: ...

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage: ...

    async def send(self, outbound: OutboundMessage) -> Receipt: ...

    @property
    def ready(self) -> bool: ...
