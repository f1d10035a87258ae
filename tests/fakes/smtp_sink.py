"""A real SMTP server on 127.0.0.1 for tests: it records every message it is given.

It runs aiosmtpd on the test's own event loop (not the threaded ``Controller``), optionally with
STARTTLS (``starttls=`` a server context, ``require_starttls``), implicit TLS (``implicit_tls=``
a server context) and AUTH (``credentials={"user": "password"}``)::

    sink = SmtpSink()
    await sink.start()
    ...  # send to 127.0.0.1:sink.port
    mail_from, rcpt_tos, data = sink.messages[0]
    await sink.stop()

Set ``fail_with`` (a whole reply line such as ``"451 4.3.0 try later"`` or
``"550 5.1.1 no such user"``) to make it answer that at ``fail_at`` (``"MAIL"``, ``"RCPT"`` or
``"DATA"``) instead of accepting. A null sender is recorded as ``"<>"``.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["SmtpSink"]


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 with a recording handler."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        hostname: str = "sink.test",
        starttls: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
        credentials: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        data_size_limit: int = 33554432,
        session_timeout: float = 300,
        mails_per_connection: int | None = None,
    ) -> None:
        self.hostname = hostname
        self.starttls = starttls
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.credentials = credentials
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.data_size_limit = data_size_limit
        self.session_timeout = session_timeout
        """Seconds an idle session is kept before the server closes it (aiosmtpd's timeout)."""
        self.mails_per_connection = mails_per_connection
        """When set: a MAIL after this many messages on one connection is answered 421 and the
        connection closed (as relays limit the messages per session)."""
        self.connections = 0
        """Connections made to it."""
        self.quits = 0
        """QUIT commands received."""
        """The SIZE it says in its EHLO answer and enforces (0: no limit)."""
        self.messages: list[tuple[str, list[str], bytes]] = []
        """(mail_from, rcpt_tos, data) for each accepted message, in order."""
        self.secure: list[bool] = []
        """For each accepted message: did it arrive over TLS (STARTTLS or implicit)?"""
        self.logins: list[str] = []
        """User names that authenticated successfully."""
        self.failed_logins: list[str] = []
        self.fail_with: str | None = None
        self.fail_at: Literal["MAIL", "RCPT", "DATA"] = "RCPT"
        self.port = 0
        self._server: asyncio.Server | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, port, ssl=self.implicit_tls, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _protocol(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {}
        if self.credentials is not None:
            kwargs["authenticator"] = self._authenticate
        return SMTP(
            self,
            hostname=self.hostname,
            tls_context=self.starttls,
            require_starttls=self.require_starttls,
            auth_require_tls=self.auth_require_tls,
            auth_required=self.auth_required,
            data_size_limit=self.data_size_limit,
            timeout=self.session_timeout,
            loop=asyncio.get_running_loop(),
            **kwargs,
        )

    # -- what was received --------------------------------------------------------------------

    def bodies(self) -> list[str]:
        """The text of each received message, stripped, in order."""
        return [str(self.parsed(i).get_content()).strip() for i in range(len(self.messages))]

    def parsed(self, index: int = -1) -> EmailMessage:
        """A received message parsed with the modern email policy."""
        message = BytesParser(policy=email.policy.default).parsebytes(self.messages[index][2])
        assert isinstance(message, EmailMessage)
        return message

    # -- aiosmtpd handler hooks -----------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.credentials is not None
        if isinstance(data, LoginPassword):
            user = data.login.decode("utf-8", "replace")
            password = data.password.decode("utf-8", "replace")
            if self.credentials.get(user) == password:
                self.logins.append(user)
                return AuthResult(success=True)
            self.failed_logins.append(user)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.fail_with and self.fail_at == "MAIL":
            return self.fail_with
        if self.mails_per_connection is not None and \
                getattr(session, "sink_messages", 0) >= self.mails_per_connection:
            transport = server.transport
            if transport is not None:  # after the answer is written
                asyncio.get_running_loop().call_soon(transport.close)
            return "421 4.7.0 too many messages in this session, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.fail_with and self.fail_at == "RCPT":
            return self.fail_with
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fail_with and self.fail_at == "DATA":
            return self.fail_with
        data = envelope.original_content
        if data is None:
            data = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), data))
        session.sink_messages = getattr(session, "sink_messages", 0) + 1  # type: ignore[attr-defined]
        transport = server.transport
        self.secure.append(
            transport is not None and transport.get_extra_info("ssl_object") is not None
        )
        return "250 2.0.0 OK: queued as SINK"
