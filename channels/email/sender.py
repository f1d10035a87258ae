"""Outbound email: turn an :class:`OutboundMessage` into RFC 5322 mail and relay it over SMTP.

Staff replies, acknowledgements and escalation notices to customers who wrote by email leave
through the relay named in ``[email.outbound]``. :meth:`EmailSender.build` is pure (it makes the
message: threading headers, ``Auto-Submitted`` for automated mail, a UTF-8 text body) and
:meth:`EmailSender.send` speaks SMTP with aiosmtplib: implicit TLS or STARTTLS (required,
opportunistic or off), certificate checks against the system store or ``ca_file``, AUTH.

The outbox worker retries :class:`TemporaryFailure` with backoff and gives up on
:class:`PermanentFailure`; both carry a ``reason`` shown to staff, so it is written in plain
words and never contains the relay's credentials: some relays echo what they were sent in their
refusal (``535 5.7.8 Authentication failed: AGZyb250ZGVzawBzM2NyZXQ=``, the AUTH PLAIN blob), so
the password, any base64 token that decodes to something holding it, and (in a refused login)
any long base64 token are masked, in the reason and in the relay's exception chained to it.

A connection is kept for the mails that follow (up to ``EmailSender.keep_idle`` seconds idle,
``mails_per_connection`` mails, ``idle_connections`` at once), so a burst of acknowledgements or
replies is greeted, secured and logged in once per connection, not once per mail. A kept
connection the relay has closed meanwhile (an idle timeout, a 421 "too many messages") is
replaced by a new one and the mail sent there; any other answer is the mail's own.

Automated mail (acknowledgements) goes out with the null envelope sender ``MAIL FROM:<>``
(RFC 3834), so a bounce or an auto-reply to it cannot start a mail loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.errors
import email.policy
import email.utils
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib

from frontdesk.channels.base import DeliveryError, PermanentFailure, TemporaryFailure
from frontdesk.channels.email import OutboundConfig
from frontdesk.channels.email.ids import new_message_id
from frontdesk.domain.cc import clean_address
from frontdesk.domain.files import file_words, size_words
from frontdesk.domain.messages import OutboundMessage, Receipt

if TYPE_CHECKING:
    from frontdesk.channels.email.oauth import AccessTokens

logger = logging.getLogger(__name__)

_MASK = "********"
_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[ \t]*")
_TOKEN = re.compile(r"[^\s'\"`()<>\[\]{},;]+")
"""A word of a relay's reply, without the quotes and brackets around it."""
_BASE64 = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")
_LONG_BASE64 = 16
"""In a refused login, a base64 token at least this long is masked whatever it decodes to."""


def _bare_id(value: str) -> str:
    """``"<a@b>"`` or ``"a@b"`` → ``"a@b"``."""
    return value.strip().strip("<>").strip()


def _one_line(value: str) -> str:
    """Header text on one line: a line break (which the email package refuses) becomes a space."""
    return _LINE_BREAK.sub(" ", value).strip()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (``raise ... from``), then what it was raised in."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _copies(out: OutboundMessage) -> list[str]:
    """The addresses ``out`` copies (``Cc:`` and the envelope) that can be written in both: plain
    ASCII addresses other than the recipient's; anything else is left out (one bad recipient
    must not fail the whole reply)."""
    to = out.to_address.strip().lower()
    copies: list[str] = []
    for text in out.cc or ():
        address = clean_address(str(text))
        if address is None:
            logger.warning("CC address %r left out: not a plain email address", str(text)[:100])
        elif address != to and address not in copies:
            copies.append(address)
    return copies


def _random_looking(token: str) -> bool:
    """A base64 token rather than a word: a digit, ``+``, ``/`` or ``=`` in it, or capitals
    after its first letter."""
    return (any(c.isdigit() or c in "+/=" for c in token)
            or any(c.isupper() for c in token[1:]))


class _Connection:
    """A connection to the relay: greeted, secured and logged in once, then kept for the
    mails that follow (:attr:`EmailSender.keep_idle`)."""

    __slots__ = ("idle_since", "sent", "smtp", "stage")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.sent = 0
        self.idle_since = 0.0
        self.stage = "connect"
        """What it is doing (connect, ehlo, starttls, auth, send): a failure says so."""


class _Gone(Exception):
    """The kept connection was closed by the relay before it took the mail: send it again
    on a new one."""


def _closed_by_relay(exc: BaseException) -> bool:
    """The relay closed the connection (idle too long, or enough mails on it) rather than
    refused the mail: a 421 answer or a connection that ended."""
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return True
    return isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 421


class _Headers(HeaderRegistry):
    """The standard library's header classes, each made once. ``HeaderRegistry`` makes a new
    class for every header it is asked for (``type(...)`` in ``__getitem__``): about half the
    time an acknowledgement took to build."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


SMTP_POLICY = email.policy.SMTP.clone(header_factory=_Headers())
"""``email.policy.SMTP`` (CRLF line ends) whose header classes are made once."""
_AUTOMATED = (("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"))
"""What an automated message (an acknowledgement, a survey) says it is (RFC 3834)."""


def _put(msg: EmailMessage, name: str, value: str | Address) -> None:
    """Set a header (``value`` may be one the policy parsed already: kept as it is when it is
    not plain). Printable ASCII (on one line, then) is stored as written: the email package
    would parse it now and fold it again when the mail is flattened, which was more than half
    of what building and flattening an acknowledgement cost (548 µs; 268 µs now). A value too
    long for one line is still folded when flattened. Anything else (words to encode, a line
    break, a control character) goes through the policy, which encodes it or refuses it."""
    text = str(value)
    if text.isascii() and text.isprintable():
        msg.set_raw(name, text)
    else:
        msg[name] = value


class EmailSender:
    """Builds and relays outbound email according to ``[email.outbound]``.

    ``hostname`` is the name given in EHLO; by default the machine's FQDN, looked up once.
    ``clock`` returns the time for the Date header (an aware datetime); tests inject one.
    """

    channel = "email"
    keep_idle = 10.0
    """Seconds a connection is kept after a mail for the next one: a burst of replies or
    acknowledgements goes over a few connections, not one each (relays close an idle session
    after a minute or more)."""
    mails_per_connection = 100
    """Mails sent over one connection before it is closed and a new one opened."""
    idle_connections = 4
    """Connections kept at most (the outbox sends a few mails at once)."""

    def __init__(
        self,
        config: OutboundConfig,
        *,
        hostname: str | None = None,
        clock: Callable[[], datetime] | None = None,
        tokens: AccessTokens | None = None,
    ) -> None:
        self.config = config
        self._tokens = tokens if config.auth == "oauth2" else None
        """``auth = "oauth2"``: AUTH XOAUTH2 with these access tokens instead of the password."""
        self._hostname = hostname
        self._clock = clock or (lambda: datetime.now(UTC))
        _, address = email.utils.parseaddr(config.from_)
        if "@" not in address:
            raise ValueError(
                f"email.outbound.from = {config.from_!r} does not contain an email address"
            )
        self.from_address = address
        self._from = SMTP_POLICY.header_factory("From", config.from_)  # parsed once
        self.from_domain = address.rpartition("@")[2]
        self._tls: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def relay(self) -> str:
        """``host:port`` of the relay, as people read it."""
        return f"{self.config.host}:{self.config.port}"

    # -- building ---------------------------------------------------------------------------

    def build(self, out: OutboundMessage, files: Sequence[bytes] = ()) -> EmailMessage:
        """The RFC 5322 message for ``out`` (CRLF line ends when serialised), with ``files``
        (the bytes of ``out.attachments``, in order) attached. No I/O.

        Raises ValueError (or an :class:`email.errors.MessageError`) for an address that cannot
        be written in a header.
        """
        msg = EmailMessage(policy=SMTP_POLICY)
        _put(msg, "From", self._from)
        _put(msg, "To", Address(display_name=_one_line(out.to_name),
                                addr_spec=out.to_address.strip()))
        copies = _copies(out)
        if copies:  # reply-all: the people the customer copied
            msg["Cc"] = [Address(addr_spec=address) for address in copies]
        _put(msg, "Subject", _one_line(out.subject))
        _put(msg, "Date", email.utils.format_datetime(self._clock()))
        if out.message_id:
            _put(msg, "Message-ID", f"<{_bare_id(out.message_id)}>")
        else:
            _put(msg, "Message-ID", f"<{new_message_id(self.from_domain)}>")
        if out.in_reply_to:
            _put(msg, "In-Reply-To", f"<{_bare_id(out.in_reply_to)}>")
        refs = [_bare_id(ref) for ref in out.references if _bare_id(ref)]
        if refs:
            _put(msg, "References", " ".join(f"<{ref}>" for ref in refs))
        if out.reply_to:
            msg["Reply-To"] = out.reply_to
        if out.automated:
            for name, value in _AUTOMATED:
                msg.set_raw(name, value)
        text = out.text.replace("\r\n", "\n").replace("\r", "\n")
        msg.set_content(text, subtype="plain", charset="utf-8")
        for meta, data in zip(out.attachments, files, strict=True):
            maintype, _, subtype = meta.content_type.partition("/")
            if not subtype or maintype in ("multipart", "message"):
                maintype, subtype = "application", "octet-stream"
            msg.add_attachment(data, maintype=maintype, subtype=subtype,
                               filename=_one_line(meta.filename))
        return msg

    # -- sending ----------------------------------------------------------------------------

    async def send(self, out: OutboundMessage, files: Sequence[bytes] = ()) -> Receipt:
        """Relay ``out`` (with ``files``, the bytes of its attachments); the receipt holds its
        Message-ID and the relay's final reply."""
        try:
            msg = self.build(out, files)
        except (ValueError, email.errors.MessageError) as exc:
            raise PermanentFailure(
                f"the email to {out.to_address!r} could not be written: {exc}"
            ) from None
        # Files are what make an email large: its size as sent is measured only then, once,
        # for both limits (ours before connecting, the relay's after its EHLO answer).
        size = len(msg.as_bytes()) if out.attachments else 0
        if size:
            self._check_size(out, size)
        message_id = _bare_id(str(msg["Message-ID"]))
        sender = "" if out.automated else self.from_address
        recipient = out.to_address.strip()
        copies = _copies(out)
        reused = self._take_idle()
        try:
            return await self._relay(reused, out, msg, size, message_id, sender, recipient,
                                     copies)
        except _Gone:  # the relay had closed the connection kept from the last mail
            return await self._relay(None, out, msg, size, message_id, sender, recipient,
                                     copies)

    async def _relay(self, reused: _Connection | None, out: OutboundMessage, msg: EmailMessage,
                     size: int, message_id: str, sender: str, recipient: str,
                     copies: list[str]) -> Receipt:
        """Send ``msg`` over ``reused`` (a connection kept from an earlier mail, already
        greeted, secured and logged in) or a new one. Raises :class:`_Gone` when ``reused``
        turns out closed before the relay took the message."""
        config = self.config
        if reused is not None:
            connection, smtp = reused, reused.smtp
        else:
            tls_context = (
                await self._tls_context() if (config.tls or config.starttls != "off") else None
            )
            smtp = aiosmtplib.SMTP(
                hostname=config.host,
                port=config.port,
                local_hostname=await self._local_hostname(),
                timeout=config.timeout.total_seconds(),
                use_tls=config.tls,
                start_tls=False,  # decided below, so "required" and "opportunistic" differ
                tls_context=tls_context,
            )
            connection = _Connection(smtp)
        try:
            if reused is None:
                await self._open(connection)
            if size:
                connection.stage = "ehlo"
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                self._check_relay_size(out, size, smtp.esmtp_extensions.get("size", ""))
            connection.stage = "send"
            refused, reply = await smtp.send_message(msg, sender=sender,
                                                     recipients=[recipient, *copies])
            reply = self._partly(refused, reply, message_id, recipient, copies)
        except DeliveryError as own:
            smtp.close()
            logger.debug("email %s to %s not sent: %s", message_id, recipient, own.reason)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            smtp.close()
            if reused is not None and _closed_by_relay(exc):
                raise _Gone from exc
            failure = self._failure(exc, connection.stage, recipient, sender)
            logger.debug("email %s to %s not sent: %s", message_id, recipient, failure.reason)
            raise failure from exc
        except BaseException:
            smtp.close()
            raise
        await self._keep(connection)
        logger.debug("email %s to %s accepted by %s: %s", message_id, recipient, self.relay, reply)
        return Receipt(remote_id=message_id, detail=reply)

    async def _open(self, connection: _Connection) -> None:
        """Connect, then STARTTLS and log in as ``[email.outbound]`` says; what it is doing is
        in ``connection.stage``, for the failure's words."""
        config, smtp = self.config, connection.smtp
        connection.stage = "connect"
        await smtp.connect()
        if not config.tls and config.starttls != "off":
            connection.stage = "ehlo"
            await smtp.ehlo()
            if smtp.supports_extension("starttls"):
                connection.stage = "starttls"
                await smtp.starttls()
            elif config.starttls == "required":
                raise TemporaryFailure(
                    f"the mail relay {self.relay} does not offer STARTTLS, and "
                    'email.outbound.starttls is "required", so nothing was sent'
                )
        if config.username or self._tokens is not None:
            connection.stage = "auth"
            if smtp.get_transport_info("sslcontext") is None:
                raise TemporaryFailure(
                    f"frontdesk will not send its login for the mail relay {self.relay} "
                    "over an unencrypted connection (the relay did not offer STARTTLS, or "
                    'email.outbound.starttls is "off"); use STARTTLS, or tls = true on '
                    "port 465"
                )
            if self._tokens is not None:
                await self._xoauth2(smtp)
            else:
                await smtp.login(config.username, config.password.get_secret_value())

    # -- connections kept between mails ---------------------------------------------------------

    def _take_idle(self) -> _Connection | None:
        """The most recently used connection still open and fresh enough; the others that are
        not are closed."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.smtp.is_connected and now - connection.idle_since < self.keep_idle:
                return connection
            connection.smtp.close()
        return None

    async def _keep(self, connection: _Connection) -> None:
        """After a mail the relay took: keep the connection for the next one (it has carried
        fewer than ``mails_per_connection`` and fewer than ``idle_connections`` are kept),
        else say goodbye."""
        connection.sent += 1
        if not self._closed and connection.sent < self.mails_per_connection and \
                len(self._idle) < self.idle_connections and connection.smtp.is_connected:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
            return
        await self._quit(connection.smtp)

    async def close(self) -> None:
        """Say goodbye on every kept connection, and on each one in use when its mail is sent
        (the daemon stops)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._quit(connection.smtp)

    def _partly(self, refused: dict[str, aiosmtplib.SMTPResponse], reply: str,
                message_id: str, recipient: str, copies: list[str]) -> str:
        """The relay took the message for some recipients only. The customer refused while
        copies went out: a permanent failure (a retry would send the copies again). A copy
        refused: said in the receipt's detail; the reply counts as sent."""
        if not refused:
            return reply
        said = {address: f"{answer.code} {answer.message}" for address, answer in refused.items()}
        mine = said.pop(recipient, None)
        if mine is not None:
            went = ", ".join(c for c in copies if c not in refused)
            raise PermanentFailure(self._scrub(
                f"the mail relay refused the recipient {recipient}: {mine}; only the copies "
                f"to {went} went out"))
        logger.info("email %s: the relay refused the CC recipient(s) %s", message_id,
                    ", ".join(f"{k} ({v})" for k, v in said.items()))
        return self._scrub(f"{reply} (CC refused: "
                           + "; ".join(f"{k}: {v}" for k, v in said.items()) + ")")

    def _check_size(self, out: OutboundMessage, size: int) -> None:
        """An email larger than ``email.outbound.max_message_bytes`` (what the relay takes) is
        not tried: the reply fails at once, naming its files."""
        limit = self.config.max_message_bytes
        if size > limit:
            names = ", ".join(file_words(f) for f in out.attachments)
            raise PermanentFailure(
                f"the email with its files ({names}) is {size_words(size)} as sent, more than "
                f"the {size_words(limit)} the mail relay takes (email.outbound.max_message_bytes)"
            )

    def _check_relay_size(self, out: OutboundMessage, size: int, advertised: str) -> None:
        """The relay's own limit (RFC 1870 ``SIZE n`` in its EHLO answer; 0 or none: no limit
        said) is checked before ``MAIL FROM``, so a file too big fails at once with both sizes
        named instead of a bare 552 after the upload."""
        limit = int(advertised) if advertised.strip().isdigit() else 0
        if limit <= 0 or size <= limit:
            return
        names = ", ".join(file_words(f) for f in out.attachments)
        raise PermanentFailure(
            f"the email with its files ({names}) is {size_words(size)} as sent, more than the "
            f"{size_words(limit)} the mail relay {self.relay} takes (it says SIZE {limit})")

    async def _xoauth2(self, smtp: aiosmtplib.SMTP) -> None:
        """``AUTH XOAUTH2`` with an access token. A relay that refuses the token sends its
        reason as a 334 challenge (base64 JSON); the empty answer to it brings the final 535."""
        from frontdesk.channels.email.oauth import OAuthError, xoauth2

        assert self._tokens is not None
        user = self.config.username
        try:
            token = await self._tokens.access_token(user)
        except OAuthError as exc:
            raise TemporaryFailure(f"frontdesk cannot sign in to the mail relay {self.relay}: "
                                   f"{exc}") from None
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
        if "xoauth2" not in smtp.server_auth_methods:
            raise TemporaryFailure(f"the mail relay {self.relay} does not offer AUTH XOAUTH2, "
                                   'and email.outbound.auth is "oauth2"')
        reply = await smtp.execute_command(b"AUTH", b"XOAUTH2",
                                           xoauth2(user, token).encode("ascii"))
        if reply.code == 334:
            reply = await smtp.execute_command(b"")
        if reply.code != 235:
            self._tokens.invalidate(user, token)
            raise aiosmtplib.SMTPAuthenticationError(reply.code, reply.message)

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        """Say goodbye; the message is already accepted, so a failure here does not matter."""
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            smtp.close()

    async def _local_hostname(self) -> str:
        if self._hostname is None:
            self._hostname = await asyncio.to_thread(socket.getfqdn) or "localhost"
        return self._hostname

    async def _tls_context(self) -> ssl.SSLContext:
        """The client TLS context, made once (reading CA files is blocking, so in a thread)."""
        if self._tls is None:
            try:
                self._tls = await asyncio.to_thread(self._make_tls_context)
            except (OSError, ValueError) as exc:
                raise TemporaryFailure(
                    f"the CA file email.outbound.ca_file = {self.config.ca_file!r} could not "
                    f"be read: {getattr(exc, 'strerror', None) or exc}"
                ) from exc
        return self._tls

    def _make_tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.config.ca_file or None)
        if not self.config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- turning errors into words --------------------------------------------------------

    def _scrub(self, text: str, *, auth: bool = False) -> str:
        """``text`` without the relay password: every base64 token that decodes to bytes holding
        it (the AUTH PLAIN blob, AUTH LOGIN's password, padded or not) and the password itself
        are masked; with ``auth`` (a refused login) every long base64 token too."""
        password = self.config.password.get_secret_value()

        def token(match: re.Match[str]) -> str:
            word = match.group()
            core = word.rstrip(".:!?")
            if _BASE64.fullmatch(core) and self._secret_token(core, password, auth=auth):
                return _MASK + word[len(core):]
            return word

        text = _TOKEN.sub(token, text)
        return text.replace(password, _MASK) if password else text

    @staticmethod
    def _secret_token(core: str, password: str, *, auth: bool) -> bool:
        if auth and len(core) >= _LONG_BASE64 and _random_looking(core):
            return True
        if not password:
            return False
        try:
            decoded = base64.b64decode(core.rstrip("=") + "=" * (-len(core.rstrip("=")) % 4),
                                       validate=True)
        except (binascii.Error, ValueError):
            return False
        return password.encode() in decoded

    def _failure(
        self, exc: BaseException, stage: str, recipient: str, sender: str
    ) -> DeliveryError:
        failure = self._classify(exc, stage, recipient, sender)
        auth = stage == "auth" or isinstance(exc, aiosmtplib.SMTPAuthenticationError)
        failure.reason = self._scrub(failure.reason, auth=auth)
        failure.args = (failure.reason,)
        # The relay's own exception stays chained to the failure (a traceback shows it): it
        # loses the credentials too.
        for cause in _chain(exc):
            if isinstance(cause, aiosmtplib.SMTPException):
                if isinstance(getattr(cause, "message", None), str):
                    cause.message = self._scrub(cause.message, auth=auth)
                cause.args = tuple(self._scrub(a, auth=auth) if isinstance(a, str) else a
                                   for a in cause.args)
        return failure

    def _classify(
        self, exc: BaseException, stage: str, recipient: str, sender: str
    ) -> DeliveryError:
        relay = self.relay
        seconds = int(self.config.timeout.total_seconds())
        within = "1 second" if seconds == 1 else f"{seconds} seconds"

        cert = _find(exc, ssl.SSLCertVerificationError)
        if isinstance(cert, ssl.SSLCertVerificationError):
            return TemporaryFailure(
                f"the mail relay {relay}'s certificate could not be verified "
                f"({cert.verify_message or cert}); set email.outbound.ca_file to the CA that "
                "signed it, or verify_tls = false if you accept an unverified relay"
            )
        tls = _find(exc, ssl.SSLError)
        if tls is not None:
            return TemporaryFailure(f"the TLS handshake with the mail relay {relay} failed ({tls})")

        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            check = ("the account's sign-in (frontdesk oauth status)" if self._tokens is not None
                     else "email.outbound.username and password")
            return TemporaryFailure(
                f"the mail relay {relay} rejected frontdesk's login as "
                f"{self.config.username!r} ({exc.code} {exc.message}); check {check}"
            )
        if stage == "auth" and type(exc) is aiosmtplib.SMTPException:
            return TemporaryFailure(
                f"the mail relay {relay} does not accept a login (no AUTH offered), but "
                "email.outbound.username is set"
            )

        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 530:
            # RFC 4954 / RFC 3207: "authentication required" or "must issue STARTTLS first".
            # The relay's rule, not the message's fault: a config fix makes the retry work.
            return TemporaryFailure(
                f"the mail relay {relay} requires a login or STARTTLS first "
                f"({exc.code} {exc.message}); check email.outbound.username, password "
                "and starttls"
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            if exc.recipients[0].code == 530:
                return self._classify(exc.recipients[0], stage, recipient, sender)
            refused = exc.recipients[0]
            reply = f"{refused.code} {refused.message}"
            if 500 <= refused.code < 600:
                return PermanentFailure(
                    f"the mail relay refused the recipient {refused.recipient}: {reply}"
                )
            return TemporaryFailure(
                f"the mail relay {relay} deferred the recipient {refused.recipient}: {reply}"
            )
        if isinstance(exc, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPDataError) \
                and exc.code == 552 and stage == "send":  # RFC 1870: over the relay's SIZE
            return PermanentFailure(f"the mail relay {relay} refused the email as too large: "
                                    f"{exc.code} {exc.message}")
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            who = exc.sender or "<> (the null sender of automated mail)"
            return self._by_code(exc, f"the mail relay {relay} refused the sender {who}")
        if isinstance(exc, aiosmtplib.SMTPDataError):
            return self._by_code(exc, f"the mail relay {relay} refused the message")
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return PermanentFailure(
                f"the mail relay {relay} cannot take this message: {exc.message}"
            )

        if isinstance(exc, aiosmtplib.SMTPResponseException):
            what = {
                "connect": "turned frontdesk away",
                "ehlo": "refused frontdesk's greeting (EHLO)",
                "starttls": "refused STARTTLS",
            }.get(stage)
            if what is not None:  # the relay's problem or ours, not the message's: retry
                return TemporaryFailure(f"the mail relay {relay} {what}: {exc.code} {exc.message}")
            return self._by_code(exc, f"the mail relay {relay} answered")

        if isinstance(exc, TimeoutError) or _find(exc, TimeoutError) is not None:
            doing = "connecting" if stage == "connect" else "waiting for an answer"
            return TemporaryFailure(
                f"the mail relay {relay} did not answer within {within} ({doing})"
            )
        if _find(exc, ConnectionRefusedError) is not None:
            return TemporaryFailure(f"mail relay {relay} refused the connection")
        if _find(exc, socket.gaierror) is not None:
            return TemporaryFailure(
                f"the mail relay's name {self.config.host!r} could not be resolved (DNS)"
            )
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            return TemporaryFailure(f"the mail relay {relay} closed the connection unexpectedly")
        if isinstance(exc, (aiosmtplib.SMTPConnectError, OSError)):
            cause = _find(exc, OSError)
            detail = getattr(cause, "strerror", None) or str(cause or exc)
            return TemporaryFailure(f"could not connect to the mail relay {relay} ({detail})")
        if isinstance(exc, ValueError):
            return PermanentFailure(
                f"the address {recipient!r} (or the sender {sender!r}) cannot be used in "
                f"SMTP: {exc}"
            )
        return TemporaryFailure(f"sending through the mail relay {relay} failed: {exc}")

    @staticmethod
    def _by_code(exc: aiosmtplib.SMTPResponseException, what: str) -> DeliveryError:
        reason = f"{what}: {exc.code} {exc.message}"
        if 500 <= exc.code < 600:
            return PermanentFailure(reason)
        return TemporaryFailure(reason)
