"""The IMAP mailbox reader: mail waiting in an existing support mailbox becomes conversations.

For businesses that keep their MX and their mailbox: frontdesk logs in to the IMAP server with
aioimaplib on the daemon's own event loop, selects the configured folder and journals every new
message as channel ``email`` (remote id :func:`~.parse.remote_id_for`, the same key as mail that
arrives over SMTP, so one mail that comes both ways is stored once). Its journal rows are parsed
by the email channel.

Reliability, in order of what matters:

* New mail is found by UID. After the journal commit of a batch the message is flagged ``\\Seen``
  (or moved to ``email.imap.move_to``) and then the checkpoint ``(UIDVALIDITY, last UID)`` is saved
  in the store, so a restart or a reconnect resumes right after the last committed message: none
  skipped, and whatever is read twice is a duplicate the journal refuses. A changed UIDVALIDITY
  (the folder was recreated or restored) re-reads the folder; the journal's unique remote id
  (the Message-ID) keeps that from duplicating anything.
* Every IMAP call runs under ``asyncio.wait_for`` (aioimaplib does not time out every command).
  Any error (connection lost, timeout, ``BYE``, a refused login) closes the session and
  reconnects after an exponential backoff with jitter, forever: the reader is never disabled
  for good. Its state is the channel's ``ready`` (``/readyz``) and the metrics
  ``frontdesk_imap_connected`` and ``frontdesk_imap_reconnects_total``.
* IDLE delivers new mail within a second or two; it is re-issued every ``idle_interval``. A
  server without IDLE (or ``idle = false``) is polled every ``poll_interval``.
* A backlog is read in batches of ``fetch_batch`` UIDs, and each batch's bodies in groups of at
  most 32 MB, so 10,000 waiting messages never sit in memory at once.
* One reader per mailbox: with several instances on one PostgreSQL store, only the instance
  elected leader for ``imap:<user>@<host>/<folder>`` (:mod:`frontdesk.daemon.process.leader`)
  reads it;
  it stops at once when it loses leadership, and another instance resumes from the checkpoint.
  A standby instance counts as ready.

TLS: implicit TLS (``tls = true``, port 993) or STARTTLS (``tls = false``,
``starttls = "required"``, port 143: aioimaplib has no STARTTLS command, so the upgrade is done
here with ``loop.start_tls`` on the open connection, then the capabilities are asked again), or
plain for a server on the same machine. The certificate is verified against the system CAs or
``ca_file``; ``verify_tls = false`` is an explicit choice, logged as a warning at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import random
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from frontdesk.channels.base import Accept, ChannelContext, ChannelParts, Leader, PermanentFailure
from frontdesk.channels.email import EmailConfig, ImapConfig
from frontdesk.channels.email.parse import email_parser, remote_id_for
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt

if TYPE_CHECKING:
    from frontdesk.channels.email.oauth import AccessTokens

log = logging.getLogger(__name__)

_BATCH_BYTES = 32 * 1024 * 1024
"""At most this much mail is fetched in one command (a bigger single message alone)."""
_MIN_THROUGHPUT = 256 * 1024
"""Bytes a second a body fetch may take at the least before it counts as stuck."""


class Checkpoints(Protocol):
    """Where the reader got to, kept in the store (frontdesk.storage.checkpoints)."""

    async def load(self, name: str) -> dict[str, Any] | None: ...

    async def save(self, name: str, value: dict[str, Any]) -> None: ...


class ImapMetrics:
    """The reader's own metrics, in the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.imap_connected = Gauge(
            "frontdesk_imap_connected",
            "1 while the IMAP reader is logged in with its folder selected", registry=registry)
        self.imap_reconnects = Counter(
            "frontdesk_imap_reconnects",
            "IMAP sessions that failed (connection lost, timeout, refused login) and were "
            "retried after a backoff", registry=registry)
        self.imap_fetched = Counter(
            "frontdesk_imap_fetched", "Messages read from the IMAP mailbox into the journal",
            registry=registry)


class ImapError(Exception):
    """The session cannot go on; the reader reconnects after a pause. The text is for people."""


# --- small pieces of the protocol --------------------------------------------------------------

def imap_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 5.1.3): ``Über`` → ``&ANw-ber``."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            encoded = base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{encoded}-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def quote(value: str) -> str:
    """An IMAP quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_arg(folder: str) -> str:
    return quote(imap_utf7(folder))


def uid_set(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1:3,7,9:10"`` (ascending input)."""
    parts: list[str] = []
    start = prev = None
    for uid in uids:
        if start is None:
            start = prev = uid
        elif prev is not None and uid == prev + 1:
            prev = uid
        else:
            parts.append(f"{start}:{prev}" if start != prev else f"{start}")
            start = prev = uid
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else f"{start}")
    return ",".join(parts)


_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_FETCH_START = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)", re.IGNORECASE)


def _text(response: Any) -> str:
    lines = [line for line in response.lines if isinstance(line, bytes | bytearray)]
    return bytes(lines[-1]).decode("utf-8", "replace").strip() if lines else ""


def parse_uidvalidity(lines: Sequence[Any]) -> int | None:
    for line in lines:
        if isinstance(line, bytes | bytearray):
            match = _UIDVALIDITY.search(bytes(line))
            if match:
                return int(match.group(1))
    return None


def parse_search(lines: Sequence[Any]) -> list[int]:
    """The UIDs of a ``UID SEARCH`` answer (its lines without the completion text)."""
    uids: list[int] = []
    for line in lines[:-1]:
        if not isinstance(line, bytes | bytearray):
            continue
        words = bytes(line).split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        if all(w.isdigit() for w in words):
            uids.extend(int(w) for w in words)
    return uids


@dataclass
class _Record:
    uid: int | None = None
    size: int | None = None
    body: bytes | None = None


def parse_fetch(lines: Sequence[Any]) -> list[_Record]:
    """The records of a FETCH answer: UID, RFC822.SIZE and the BODY[] literal, wherever the
    server put the UID (before or after the literal). Unsolicited flag updates come back as
    records without size and body."""
    records: list[_Record] = []
    current: _Record | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if current is not None:
                current.body = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            current = _Record()
            records.append(current)
        if current is None:
            continue
        uid = _UID.search(line)
        if uid:
            current.uid = int(uid.group(1))
        size = _SIZE.search(line)
        if size:
            current.size = int(size.group(1))
    return records


def _challenge_reason(challenges: Sequence[bytes]) -> str:
    """The ``status`` of an XOAUTH2 error challenge (``+ eyJzdGF0dXMiOiI0MDAi...``)."""
    import json

    for line in challenges:
        try:
            data = json.loads(base64.b64decode(bytes(line).lstrip(b"+ ").strip()))
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict) and data.get("status"):
            return f"; status {str(data['status'])[:20]}"
    return ""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- one connection ----------------------------------------------------------------------------

class _Session:
    """One logged-in IMAP connection; every call is bounded by the configured timeout."""

    def __init__(self, config: ImapConfig, tls: ssl.SSLContext | None,
                 tokens: AccessTokens | None = None) -> None:
        self.config = config
        self.timeout = config.timeout.total_seconds()
        self._tls = tls
        self._tokens = tokens
        self.lost = asyncio.Event()
        self.client: Any = None

    def _on_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    async def call(self, what: str, awaitable: Any, timeout: float | None = None) -> Any:
        """Await one IMAP call under a timeout; a lost connection or a timeout is an ImapError.

        aioimaplib leaves a command waiting when the connection drops, so the call also ends
        as soon as the connection is lost, not only at the timeout."""
        limit = timeout or self.timeout
        call = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({call, lost}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (call, lost):
                if not task.done():
                    task.cancel()
        if call in done:
            return call.result()
        if lost in done:
            raise ImapError(f"the IMAP server closed the connection (during {what})")
        raise ImapError(f"the IMAP server did not answer {what} within {int(limit)} s")

    async def open(self) -> None:
        from aioimaplib import IMAP4

        c = self.config
        implicit = self._tls if c.tls else None
        self.client = IMAP4(host=c.host, port=c.port, timeout=self.timeout,
                            conn_lost_cb=self._on_lost, ssl_context=implicit)
        await self.call("the greeting", self.client.wait_hello_from_server())
        if not c.tls and c.starttls == "required":
            await self._starttls()

    async def _starttls(self) -> None:
        from aioimaplib import Command

        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError(
                f"the IMAP server {self.config.host}:{self.config.port} does not offer STARTTLS, "
                'and email.imap.starttls is "required": frontdesk will not log in without TLS')
        response = await self.call("STARTTLS", protocol.execute(
            Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)))
        if response.result != "OK":
            raise ImapError(f"the IMAP server refused STARTTLS: {_text(response)}")
        if protocol.incomplete_line:
            # Bytes sent after the OK, before the handshake, would be read as if protected.
            raise ImapError("the IMAP server sent unexpected data right after STARTTLS; "
                            "not going on (a man in the middle could have injected it)")
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        transport = await self.call("the TLS handshake", loop.start_tls(
            protocol.transport, protocol, self._tls, server_hostname=self.config.host))
        protocol.transport = transport
        # RFC 3501 6.2.1: forget what was said before TLS and ask again.
        protocol.capabilities = set()
        await self.call("CAPABILITY", protocol.capability())

    @property
    def capabilities(self) -> set[str]:
        return set(self.client.protocol.capabilities) if self.client else set()

    async def login(self) -> None:
        c = self.config
        if c.auth == "oauth2":
            await self._xoauth2()
        else:
            response = await self.call("LOGIN", self.client.login(
                c.username, c.password.get_secret_value()))
            if response.result != "OK":
                raise ImapError(f"the IMAP server refused the login of {c.username!r} "
                                f"({_text(response)}); check email.imap.username and password")
        # What a server offers may change with the login (MOVE, UIDPLUS, IDLE): ask again.
        await self.call("CAPABILITY", self.client.protocol.capability())

    async def _xoauth2(self) -> None:
        """``AUTHENTICATE XOAUTH2`` with an access token (RFC 4959 initial response). A server
        that refuses the token first sends its reason as a challenge (a base64 JSON object);
        the empty answer to it brings the final NO."""
        from aioimaplib import Command

        from frontdesk.channels.email.oauth import OAuthError, xoauth2

        c = self.config
        assert self._tokens is not None, "email.imap.auth = oauth2 without AccessTokens"
        try:
            token = await self._tokens.access_token(c.username)
        except OAuthError as exc:
            raise ImapError(str(exc)) from None
        protocol = self.client.protocol
        sasl = xoauth2(c.username, token)
        challenges: list[bytes] = []

        class Authenticate(Command):
            def flush(self) -> None:
                # aioimaplib calls this after a continuation line (the server's challenge, the
                # reason it refuses) and after every chunk read: answer each challenge once.
                said = [line for line in self.response.lines
                        if isinstance(line, bytes | bytearray) and bytes(line).startswith(b"+")]
                for line in said[len(challenges):]:
                    challenges.append(bytes(line))
                    protocol.transport.write(b"\r\n")

        response = await self.call("AUTHENTICATE XOAUTH2", protocol.execute(
            Authenticate("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", sasl,
                         loop=protocol.loop), scrub=sasl))
        if response.result != "OK":
            self._tokens.invalidate(c.username, token)
            offered = any(cap.upper() == "AUTH=XOAUTH2" for cap in self.capabilities)
            reason = _text(response) + _challenge_reason(challenges)
            raise ImapError(
                f"the IMAP server refused the OAuth 2.0 sign-in of {c.username!r} ({reason})"
                + ("" if offered else "; it does not offer AUTH=XOAUTH2"))
        protocol.state = "AUTH"

    async def select(self, folder: str) -> int:
        response = await self.call("SELECT", self.client.select(mailbox_arg(folder)))
        if response.result != "OK":
            raise ImapError(f"the folder {folder!r} cannot be selected ({_text(response)}); "
                            "check email.imap.folder")
        validity = parse_uidvalidity(response.lines)
        if validity is None:
            raise ImapError(f"the IMAP server gave no UIDVALIDITY for {folder!r}")
        return validity

    async def search_after(self, last_uid: int) -> list[int]:
        response = await self.call("UID SEARCH", self.client.uid_search(
            "UID", f"{last_uid + 1}:*", charset=None))
        if response.result != "OK":
            raise ImapError(f"UID SEARCH failed: {_text(response)}")
        # "n:*" always includes the highest UID, even when it is not above n.
        return sorted({uid for uid in parse_search(response.lines) if uid > last_uid})

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        response = await self.call("UID FETCH (RFC822.SIZE)", self.client.uid(
            "fetch", uid_set(uids), "(UID RFC822.SIZE)"))
        if response.result != "OK":
            raise ImapError(f"UID FETCH failed: {_text(response)}")
        return {r.uid: r.size for r in parse_fetch(response.lines)
                if r.uid is not None and r.size is not None}

    async def bodies(self, uids: Sequence[int], total: int) -> list[tuple[int, bytes]]:
        timeout = self.timeout + total / _MIN_THROUGHPUT
        response = await self.call("UID FETCH (BODY.PEEK[])", self.client.uid(
            "fetch", uid_set(uids), "(UID BODY.PEEK[])"), timeout)
        if response.result != "OK":
            raise ImapError(f"UID FETCH failed: {_text(response)}")
        wanted = set(uids)
        found = {r.uid: r.body for r in parse_fetch(response.lines)
                 if r.uid in wanted and r.body is not None}
        return sorted((uid, body) for uid, body in found.items() if uid is not None)

    async def command_ok(self, what: str, awaitable: Any) -> tuple[bool, str]:
        response = await self.call(what, awaitable)
        return response.result == "OK", _text(response)

    async def close(self) -> None:
        if self.client is None:
            return
        protocol = self.client.protocol
        if not self.lost.is_set() and protocol.state in ("AUTH", "SELECTED", "NONAUTH"):
            with contextlib.suppress(Exception):
                if self.client.has_pending_idle():
                    self.client.idle_done()
                await asyncio.wait_for(self.client.logout(), min(self.timeout, 5.0))
        transport = protocol.transport
        if transport is not None:
            transport.close()
        task = getattr(self.client, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()  # still connecting: give up on it


# --- the reader --------------------------------------------------------------------------------


class ImapChannel:
    """Reads one IMAP folder into the journal (as channel ``email``).

    Its rows are parsed by the email channel and replies go out through the email channel's
    relay, so it registers no journal name and no customer channel of its own.
    """

    name = "imap"
    journal_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()

    def __init__(self, config: EmailConfig, *, tokens: AccessTokens | None = None) -> None:
        self._email = config
        self.config = config.imap
        self._tokens = tokens if config.imap.auth == "oauth2" else None
        """The access tokens of ``email.imap.auth = "oauth2"`` (shared with the relay)."""
        self._parse = email_parser(
            config, (parseaddr(config.outbound.from_)[1].rpartition("@")[2],))
        c = self.config
        self.checkpoint_name = f"imap:{c.username}@{c.host}/{c.folder}"
        self._checkpoints: Checkpoints | None = None
        self._metrics: ImapMetrics | None = None
        self._accept: Accept | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._connected = False
        self._tls: ssl.SSLContext | None = None
        self._uidvalidity: int | None = None
        self._last_uid = 0
        self._move_to: str | None = self.config.move_to or None
        self._leadership: Leader | None = None
        self.sessions = 0
        """How many sessions got as far as selecting the folder (tests and logs)."""

    # -- composition -----------------------------------------------------------------------------

    def bind(self, context: ChannelContext) -> ChannelParts:
        """Its checkpoints in the store, its metrics, and leadership of the mailbox."""
        from frontdesk.storage.checkpoints import Checkpoints as StoreCheckpoints

        self.connect_store(checkpoints=StoreCheckpoints(context.store, clock=context.clock),
                           metrics=ImapMetrics(context.metrics),
                           leadership=context.leadership(self.checkpoint_name))
        if self._tokens is not None:
            self._tokens.connect(context.store, clock=context.clock)
            self._tokens.watch(self.config.username)
        return ChannelParts()

    def readiness_checks(self) -> dict[str, str]:
        """``/readyz`` names a sign-in in trouble (``oauth:<account>``) beside ``imap``."""
        if self._tokens is None:
            return {}
        return self._tokens.checks(self.config.username)

    def connect_store(self, *, checkpoints: Checkpoints, metrics: ImapMetrics | None = None,
                      leadership: Leader | None = None) -> None:
        """Without ``leadership`` the reader runs unelected (a single instance)."""
        self._checkpoints = checkpoints
        self._metrics = metrics
        self._leadership = leadership

    @property
    def ready(self) -> bool:
        return self._connected or (self._leadership is not None and self._leadership.following)

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return self._parse(raw, meta)

    async def send(self, outbound: OutboundMessage) -> Receipt:
        raise PermanentFailure("replies to mail read from the IMAP mailbox are sent by the "
                               "email channel's relay, not by the IMAP reader")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, accept: Accept) -> None:
        if self._checkpoints is None:
            raise RuntimeError("the IMAP reader needs the store's checkpoints: call bind() first")
        self._accept = accept
        c = self.config
        if c.tls or c.starttls == "required":
            if not c.verify_tls:
                log.warning("email.imap.verify_tls is false: the IMAP server %s's certificate is "
                            "NOT checked, so anyone in between can read the mailbox password",
                            c.host)
        elif not _is_loopback(c.host):
            log.warning("email.imap.tls is false and starttls is \"off\": the %s for %s is "
                        "sent in clear text; use TLS unless the server is on this machine",
                        "access token" if c.auth == "oauth2" else "password", c.host)
        if self._tokens is not None:
            await self._tokens.start()
        self._stop.clear()
        runner = (self._run() if self._leadership is None
                  else self._leadership.run(self._run, stop=self._stop))
        self._task = asyncio.create_task(runner, name="imap-reader")
        log.info("reading IMAP folder %r of %s@%s:%d (%s)", c.folder, c.username, c.host, c.port,
                 "TLS" if c.tls else "STARTTLS" if c.starttls == "required" else "plain")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task),
                                   self.config.timeout.total_seconds() + 5)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._tokens is not None:
            await self._tokens.stop()

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                await self._session()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect later
                self._set_connected(False)
                if self._stop.is_set():
                    break
                failures += 1
                delay = self._backoff(failures)
                log.warning("IMAP %s@%s: %s; reconnecting in %.1f s", self.config.username,
                            self.config.host, _describe(exc), delay)
                if self._metrics is not None:
                    self._metrics.imap_reconnects.inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    def _backoff(self, failures: int) -> float:
        """Exponential from reconnect_initial up to reconnect_max, with jitter (50-100 %)."""
        initial = self.config.reconnect_initial.total_seconds()
        ceiling = self.config.reconnect_max.total_seconds()
        base = min(ceiling, initial * 2 ** min(failures - 1, 30))
        return base * random.uniform(0.5, 1.0)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        if self._metrics is not None:
            self._metrics.imap_connected.set(1 if value else 0)

    async def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = await asyncio.to_thread(self._make_tls_context)
        return self._tls

    def _make_tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.config.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ImapError(f"email.imap.ca_file = {self.config.ca_file!r} cannot be read: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
        if not self.config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- one session -----------------------------------------------------------------------------

    async def _session(self) -> None:
        c = self.config
        tls = await self._tls_context() if (c.tls or c.starttls == "required") else None
        session = _Session(c, tls, self._tokens)
        try:
            await session.open()
            await session.login()
            validity = await session.select(c.folder)
            await self._resume(validity)
            move_to = await self._check_move_to(session)
            self.sessions += 1
            self._set_connected(True)
            log.info("IMAP %s@%s: folder %r selected (UIDVALIDITY %d, resuming after UID %d)",
                     c.username, c.host, c.folder, validity, self._last_uid)
            idle = c.idle and "IDLE" in session.capabilities
            if c.idle and not idle:
                log.info("IMAP server %s has no IDLE: polling every %s s", c.host,
                         int(c.poll_interval.total_seconds()))
            while not self._stop.is_set():
                await self._sync(session, move_to)
                if self._stop.is_set():
                    break
                if idle:
                    await self._idle(session)
                else:
                    await self._poll(session)
        finally:
            self._set_connected(False)
            await session.close()

    async def _resume(self, validity: int) -> None:
        assert self._checkpoints is not None
        saved = await self._checkpoints.load(self.checkpoint_name)
        if saved and int(saved.get("uidvalidity", -1)) == validity:
            self._last_uid = int(saved.get("last_uid", 0))
        else:
            if saved:
                log.warning("IMAP folder %r has a new UIDVALIDITY (%s, was %s): reading it again "
                            "from the start; mail already stored is recognised by its "
                            "Message-ID and not stored twice", self.config.folder, validity,
                            saved.get("uidvalidity"))
            self._last_uid = 0
        self._uidvalidity = validity

    async def _check_move_to(self, session: _Session) -> str | None:
        """The folder to move processed mail to, created when missing; None: flag \\Seen."""
        folder = self._move_to
        if not folder:
            return None
        ok, _ = await session.command_ok("STATUS", session.client.status(
            mailbox_arg(folder), "(MESSAGES)"))
        if ok:
            return folder
        ok, text = await session.command_ok("CREATE", session.client.create(mailbox_arg(folder)))
        if ok:
            log.info("created IMAP folder %r for processed mail", folder)
            return folder
        log.error("email.imap.move_to folder %r does not exist and cannot be created (%s): "
                  "processed mail is flagged \\Seen instead", folder, text)
        return None

    async def _sync(self, session: _Session, move_to: str | None) -> None:
        """Journal everything after the checkpoint, batch by batch."""
        uids = await session.search_after(self._last_uid)
        if uids:
            log.info("IMAP folder %r: %d new message(s)", self.config.folder, len(uids))
        batch = self.config.fetch_batch
        for start in range(0, len(uids), batch):
            if self._stop.is_set():
                return
            chunk = uids[start:start + batch]
            sizes = await session.sizes(chunk)
            for group, total in _by_bytes(chunk, sizes):
                if self._stop.is_set():
                    return
                mails = await session.bodies(group, total)
                await self._journal(mails)
                await self._after_commit(session, group, move_to)
                await self._checkpoint(group[-1])

    async def _journal(self, mails: list[tuple[int, bytes]]) -> None:
        """Journal the batch in one group commit; raise if any of it did not commit."""
        assert self._accept is not None
        folder = self.config.folder

        def meta(uid: int) -> dict[str, Any]:
            return {"source": "imap", "folder": folder, "uid": uid,
                    "uidvalidity": self._uidvalidity}

        results = await asyncio.gather(
            *(self._accept("email", remote_id_for(raw), raw, meta(uid)) for uid, raw in mails),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if self._metrics is not None:
            self._metrics.imap_fetched.inc(len(mails))
        if failed:
            raise ImapError(f"{len(failed)} message(s) could not be stored ({failed[0]}); "
                            "they stay in the mailbox and are read again")

    async def _after_commit(self, session: _Session, uids: Sequence[int],
                            move_to: str | None) -> None:
        """Flag \\Seen or move to ``move_to``; a refusal is logged, the mail is already safe."""
        client, caps = session.client, session.capabilities
        where = uid_set(uids)
        if move_to is None:
            ok, text = await session.command_ok("UID STORE", client.uid(
                "store", where, "+FLAGS.SILENT", r"(\Seen)"))
        elif "MOVE" in caps:
            ok, text = await session.command_ok("UID MOVE", client.uid(
                "move", where, mailbox_arg(move_to)))
        else:
            ok, text = await session.command_ok("UID COPY", client.uid(
                "copy", where, mailbox_arg(move_to)))
            if ok:
                ok, text = await session.command_ok("UID STORE", client.uid(
                    "store", where, "+FLAGS.SILENT", r"(\Deleted)"))
            if ok:
                ok, text = await session.command_ok("EXPUNGE", client.uid("expunge", where)
                                                    if "UIDPLUS" in caps else client.expunge())
        if not ok:
            log.warning("IMAP: marking %d stored message(s) as processed failed (%s); they are "
                        "stored, and left in %r as they were", len(uids), text,
                        self.config.folder)

    async def _checkpoint(self, last_uid: int) -> None:
        assert self._checkpoints is not None
        self._last_uid = max(self._last_uid, last_uid)
        await self._checkpoints.save(self.checkpoint_name, {
            "uidvalidity": self._uidvalidity, "last_uid": self._last_uid})

    async def _wait(self, session: _Session, *aws: Any, timeout: float) -> Any:
        """Wait for the first of ``aws``, a stop or a lost connection; return its result, or None
        on a stop or a timeout. A lost connection is an ImapError."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(session.lost.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop, lost], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, stop, lost):
                if not task.done():
                    task.cancel()
        if lost in done:
            raise ImapError("the IMAP server closed the connection")
        for task in tasks:
            if task in done:
                return task.result()
        return None

    async def _idle(self, session: _Session) -> None:
        """IDLE until the server reports new mail, the renewal time comes, or we stop."""
        client = session.client
        renew = self.config.idle_interval.total_seconds()
        idle = await session.call("IDLE", client.idle_start(timeout=renew))
        try:
            await self._idle_until_news(session, renew)
        except asyncio.CancelledError:
            raise
        except BaseException:
            with contextlib.suppress(ImapError):  # the first error is the one to report
                await self._end_idle(session, idle)
            raise
        await self._end_idle(session, idle)

    async def _end_idle(self, session: _Session, idle: Any) -> None:
        if not session.lost.is_set() and session.client.has_pending_idle():
            session.client.idle_done()
            await session.call("DONE (end of IDLE)", idle)

    async def _idle_until_news(self, session: _Session, renew: float) -> None:
        from aioimaplib import STOP_WAIT_SERVER_PUSH

        client = session.client
        while not self._stop.is_set():
            push = await self._wait(session, client.wait_server_push(timeout=renew + 5),
                                    timeout=renew + 10)
            if push is None or push == STOP_WAIT_SERVER_PUSH:
                return
            lines = [bytes(line).strip() for line in push if isinstance(line, bytes | bytearray)]
            trouble = next((line for line in lines if line.upper().startswith(
                (b"BYE", b"NO", b"BAD")) or b"[UIDVALIDITY" in line.upper()), None)
            if trouble is not None:
                # A warning about the folder (deleted, restored, broken) or a goodbye: select
                # it afresh on a new connection, which also reads UIDVALIDITY again.
                raise ImapError("the IMAP server said " + trouble.decode("utf-8", "replace")[:200])
            if any(b"EXISTS" in line.upper() or b"RECENT" in line.upper() for line in lines):
                return

    async def _poll(self, session: _Session) -> None:
        await self._wait(session, timeout=self.config.poll_interval.total_seconds())
        if not self._stop.is_set():
            ok, text = await session.command_ok("NOOP", session.client.noop())
            if not ok:
                raise ImapError(f"NOOP failed: {text}")


def _by_bytes(uids: Sequence[int], sizes: Mapping[int, int]) -> list[tuple[list[int], int]]:
    """Split UIDs (ascending) into groups of at most _BATCH_BYTES (one big message alone).
    A UID the server gave no size for has gone (expunged meanwhile): it counts as empty, its
    fetch finds nothing, and the checkpoint moves past it with its group."""
    groups: list[tuple[list[int], int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and total + size > _BATCH_BYTES:
            groups.append((current, total))
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        groups.append((current, total))
    return groups


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ImapError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the IMAP server's certificate could not be verified "
                f"({exc.verify_message or exc}); set email.imap.ca_file to the CA that signed "
                "it, or verify_tls = false if you accept an unverified server")
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with the IMAP server failed ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "the IMAP server refused the connection"
    if isinstance(exc, OSError):
        return f"cannot reach the IMAP server ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "the IMAP server did not answer in time"
    name = type(exc).__name__
    return f"{name}: {exc}" if str(exc) else name
