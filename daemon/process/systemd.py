"""Telling systemd how the daemon is doing: the sd_notify protocol, without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX datagram
socket, and waits for ``READY=1`` before it counts the service as started. With
``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and
restarts the service when no ``WATCHDOG=1`` arrives within that time.

The daemon builds one :class:`Notifier` from its environment, sends ``READY=1``
once its listeners are bound and ``STOPPING=1`` when it starts to drain, and
runs :meth:`Notifier.watchdog_loop` as a task on its own event loop, so that a
loop stuck in a blocking call stops the pings and systemd restarts it. Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.

Sending never raises: systemd being away must not take the daemon down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

READY = "READY=1"
STOPPING = "STOPPING=1"
RELOADING = "RELOADING=1"
WATCHDOG = "WATCHDOG=1"


def status(text: str) -> str:
    """A ``STATUS=`` assignment (shown by ``systemctl status``), kept on one line."""
    return "STATUS=" + " ".join(text.split())


def _socket_address(value: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if unsupported.

    An absolute path is a socket in the file system; a leading ``@`` names a
    Linux abstract socket, whose address starts with a NUL byte instead.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify states to systemd; does nothing when not run by systemd."""

    def __init__(
        self,
        notify_socket: str | None = None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        """Take the raw values of $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID."""
        self._notify_socket = notify_socket or None
        self._address = _socket_address(notify_socket) if notify_socket else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._send_failed_logged = False
        if self._notify_socket and self._address is None:
            log.debug("unsupported %s=%r; not notifying systemd", NOTIFY_SOCKET_ENV, notify_socket)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for the socket and watchdog that systemd put in the environment."""
        return cls(
            environ.get(NOTIFY_SOCKET_ENV),
            watchdog_usec=environ.get(WATCHDOG_USEC_ENV),
            watchdog_pid=environ.get(WATCHDOG_PID_ENV),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._notify_socket!r}, "
            f"watchdog_interval={self.watchdog_interval()!r})"
        )

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to send to."""
        return self._address is not None

    def notify(self, *states: str) -> None:
        """Send ``states`` (``"READY=1"``, ``status("...")``, ...) as one datagram.

        Newlines inside a state are replaced by spaces so that a state cannot
        smuggle in another assignment. A failed send is logged (at debug, once
        per notifier) and otherwise ignored.
        """
        if self._address is None or not states:
            return
        payload = "\n".join(state.replace("\n", " ") for state in states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop: a full receive queue drops the datagram.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._send_failed_logged:
                self._send_failed_logged = True
                log.debug("cannot notify systemd at %s: %s", self._notify_socket, exc)

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of $WATCHDOG_USEC), or None.

        None when systemd asked for no watchdog, or asked it of another
        process ($WATCHDOG_PID set to a pid that is not ours).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.debug("ignoring malformed %s=%r", WATCHDOG_USEC_ENV, self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                log.debug("ignoring malformed %s=%r", WATCHDOG_PID_ENV, self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None
        return usec / 2 / 1_000_000

    async def watchdog_loop(self) -> None:
        """Send ``WATCHDOG=1`` every :meth:`watchdog_interval` until cancelled.

        Returns at once when there is no watchdog or no socket. Run it as a task
        on the daemon's event loop: if the loop stalls, the pings stop.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        log.debug("sending %s every %.3gs", WATCHDOG, interval)
        while True:
            self.notify(WATCHDOG)
            await asyncio.sleep(interval)
