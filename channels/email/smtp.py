"""frontdesk's own SMTP server: aiosmtpd on the daemon's loop (``loop.create_server``).

It takes mail only for the configured inbox addresses and their plus-addresses (never an open
relay), answers ``250`` only after the raw message is committed to the journal, and ``451`` when
the store fails, so the sending MTA retries and nothing is lost.

Against connection exhaustion (issue 14): at most ``max_connections_per_client`` sessions per
client address (an IPv6 client's /64) and ``max_connections`` in all; a connection over either
cap hears ``421 4.7.0`` and is closed at once, before a session is built for it. A session
waiting for a command (a command line trickled byte by byte included: aiosmtpd's timer restarts
only when a whole command has arrived) is closed after ``idle_timeout``, and the DATA phase, from
DATA to the final dot however slowly the bytes come, after ``data_timeout``: either way with
``421 4.4.2 ... timeout exceeded``, so the sending MTA tries again later. Refusals and cuts are
logged in one line per interval (:mod:`frontdesk.channels.connections`), never one per
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import ssl
import weakref
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from frontdesk.channels.base import Accept
from frontdesk.channels.connections import Gate, Limiter, Refusal, Ticket
from frontdesk.channels.email import SmtpServerConfig
from frontdesk.channels.email.parse import remote_id_for
from frontdesk.config.schema import format_duration, split_listen

log = logging.getLogger(__name__)

# Reply lines, named as Mailman names them.
OK = "250 2.0.0 OK: message accepted"
RCPT_OK = "250 2.1.5 OK"
NO_SUCH_MAILBOX = "550 5.1.1 <{}>: no such mailbox here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure storing the message, please try again later"
TOO_MANY_FROM_YOU = ("421 4.7.0 {host} Too many connections from your address ({peer}), "
                     "try again later")
TOO_MANY = "421 4.7.0 {host} Server busy: too many connections, try again later"
IDLE_TIMEOUT = "421 4.4.2 {host} Error: timeout exceeded, closing connection"
DATA_TIMEOUT = ("421 4.4.2 {host} Error: timeout exceeded while receiving the message "
                "(it must arrive within {bound}), closing connection; try again later")


class InboxAddresses:
    """The configured inbox addresses; ``local+anything@domain`` counts as ``local@domain``."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self._addresses = {a.lower() for a in addresses}

    def base_of(self, address: str) -> str | None:
        address = address.strip().strip("<>").lower()
        if address in self._addresses:
            return address
        local, at, domain = address.rpartition("@")
        if at and "+" in local:
            base = f"{local.split('+', 1)[0]}@{domain}"
            if base in self._addresses:
                return base
        return None


class _Handler:
    def __init__(self, inboxes: InboxAddresses, accept: Accept) -> None:
        self._inboxes = inboxes
        self._accept = accept
        self.in_flight = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self._inboxes.base_of(address) is None:
            log.warning("refused mail for %s from %s", address, session.peer)
            return NO_SUCH_MAILBOX.format(address)
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if isinstance(server, _Session):
            server.message_received()  # the DATA clock stops at the final dot
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        assert isinstance(raw, bytes)
        meta: dict[str, Any] = {
            "mail_from": envelope.mail_from or "",
            "rcpt_tos": list(envelope.rcpt_tos),
            "peer": session.peer[0] if isinstance(session.peer, tuple) else str(session.peer),
            "helo": session.host_name or "",
        }
        self.in_flight += 1
        try:
            await self._accept("email", remote_id_for(raw), raw, meta)
        except Exception as exc:  # noqa: BLE001 - never a 5xx for our own trouble
            log.error("could not journal mail from %s: %s", envelope.mail_from, exc)
            return TEMPORARY_FAILURE
        finally:
            self.in_flight -= 1
        return OK

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %r", error)
        return TEMPORARY_FAILURE


class _Session(SMTP):
    """One admitted SMTP session: gives its :class:`Ticket` back when the connection is gone,
    bounds DATA as a whole, and says ``421`` before a timeout closes the connection."""

    def __init__(self, handler: Any, *, ticket: Ticket, limiter: Limiter, data_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._ticket = ticket
        self._limiter = limiter
        self._data_timeout = data_timeout
        self._in_data = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's timer (idle_timeout) restarts only when a whole command arrives, so a
        # trickled DATA would be cut at idle_timeout: give the whole DATA phase data_timeout.
        self._in_data = True
        self._reset_timeout(self._data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            if self._in_data:  # refused before the 354, or the connection went
                self.message_received()

    def message_received(self) -> None:
        """The final dot is in: from now on the idle bound applies (to the commit, too)."""
        self._in_data = False
        if self.transport is not None:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._in_data:
                line = DATA_TIMEOUT.format(host=self.hostname,
                                           bound=_duration(self._data_timeout))
                self._limiter.cut(f"sending DATA for over {_duration(self._data_timeout)}")
            else:
                line = IDLE_TIMEOUT.format(host=self.hostname)
                self._limiter.cut(
                    f"silent for over {_duration(self._timeout_duration)} between commands")
            if isinstance(transport, asyncio.WriteTransport):
                with contextlib.suppress(Exception):
                    transport.write(line.encode("ascii", "replace") + b"\r\n")
        super()._timeout_cb()

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._ticket.release()


def _duration(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


class SmtpServer:
    """The listening server; ``start`` binds, ``stop`` stops taking mail and lets DATA finish.

    Every connection passes a :class:`Gate` first: over ``max_connections_per_client`` from its
    address or ``max_connections`` in all it gets ``421 4.7.0`` and is closed; otherwise it
    becomes a session bounded by ``idle_timeout`` between commands and ``data_timeout`` for the
    whole DATA phase.
    """

    def __init__(self, config: SmtpServerConfig, inboxes: InboxAddresses) -> None:
        self._config = config
        self._inboxes = inboxes
        self._server: asyncio.base_events.Server | None = None
        self._handler: _Handler | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.limiter = Limiter("SMTP", max_connections=config.max_connections,
                               max_per_client=config.max_connections_per_client,
                               noun="sessions")
        self.port: int | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self._config.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self._config.tls_cert, self._config.tls_key)
        return ctx

    def _authenticator(self) -> Any:
        user = self._config.auth_username
        secret = self._config.auth_password.get_secret_value()
        if not user:
            return None

        def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                  auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword)
                  and hmac.compare_digest(auth_data.login, user.encode())
                  and hmac.compare_digest(auth_data.password, secret.encode()))
            return AuthResult(success=ok, handled=False)

        return check

    async def start(self, accept: Accept) -> None:
        host, port = split_listen(self._config.listen)
        hostname = self._config.hostname or socket.getfqdn()
        handler = self._handler = _Handler(self._inboxes, accept)
        tls = self._tls_context()
        authenticator = self._authenticator()

        limiter = self.limiter
        idle = self._config.idle_timeout.total_seconds()
        data = self._config.data_timeout.total_seconds()

        def session(ticket: Ticket) -> SMTP:
            smtp = _Session(
                handler, ticket=ticket, limiter=limiter, data_timeout=data, timeout=idle,
                hostname=hostname, ident="frontdesk ESMTP",
                data_size_limit=self._config.max_message_bytes, enable_SMTPUTF8=True,
                decode_data=False, tls_context=tls, require_starttls=self._config.require_starttls,
                authenticator=authenticator, auth_required=self._config.auth_required,
                auth_require_tls=True,
            )
            self._sessions.add(smtp)
            return smtp

        def refusal(why: Refusal, peer: str) -> bytes:
            line = (TOO_MANY_FROM_YOU if why == "client" else TOO_MANY).format(
                host=hostname, peer=peer)
            return line.encode("ascii", "replace") + b"\r\n"

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Gate(limiter, session, refusal), host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMTP server listening on %s:%d for %s", host, self.port,
                 ", ".join(sorted(self._inboxes._addresses)) or "no inbox address")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._handler and self._handler.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for smtp in list(self._sessions):
            if smtp.transport is not None:
                smtp.transport.close()
        self._server = None
        self.limiter.close()
