"""frontdesk's own SMTP server: aiosmtpd on the daemon's loop (``loop.create_server``).

It takes mail only for the configured inbox addresses and their plus-addresses (never an open
relay), answers ``250`` only after the raw message is committed to the journal, and ``451`` when
the store fails, so the sending MTA retries and nothing is lost.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
import weakref
from collections.abc import Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from frontdesk.channels.base import Accept
from frontdesk.channels.email import SmtpServerConfig
from frontdesk.channels.email.parse import remote_id_for
from frontdesk.config.schema import split_listen

log = logging.getLogger(__name__)

# Reply lines, named as Mailman names them.
OK = "250 2.0.0 OK: message accepted"
RCPT_OK = "250 2.1.5 OK"
NO_SUCH_MAILBOX = "550 5.1.1 <{}>: no such mailbox here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure storing the message, please try again later"


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


class SmtpServer:
    """The listening server; ``start`` binds, ``stop`` stops taking mail and lets DATA finish."""

    def __init__(self, config: SmtpServerConfig, inboxes: InboxAddresses) -> None:
        self._config = config
        self._inboxes = inboxes
        self._server: asyncio.base_events.Server | None = None
        self._handler: _Handler | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
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

        def factory() -> SMTP:
            smtp = SMTP(
                handler, hostname=hostname, ident="frontdesk ESMTP",
                data_size_limit=self._config.max_message_bytes, enable_SMTPUTF8=True,
                decode_data=False, tls_context=tls, require_starttls=self._config.require_starttls,
                authenticator=authenticator, auth_required=self._config.auth_required,
                auth_require_tls=True,
            )
            self._sessions.add(smtp)
            return smtp

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, host, port, reuse_address=True)
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
