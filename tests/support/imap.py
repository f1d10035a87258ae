"""Helpers of the IMAP tests (tests/test_imap.py, tests/test_leader.py): mail to put in a
Dovecot mailbox, settings that point the reader at it, and the reader of a running daemon."""

from __future__ import annotations

from typing import Any

from tests.support.helpers import mail


def raw_mail(n: int, *, subject: str | None = None, frm: str = "Ada Lovelace <ada@example.org>",
             body: str | None = None) -> bytes:
    msg = mail(frm=frm, subject=subject or f"Question {n}", body=body or f"Message number {n}.",
               msgid=f"<imap-{n}@example.org>")
    return msg.as_bytes()


def imap_settings(make_settings: Any, dovecot: Any, box: Any, *, database_url: str | None = None,
                  **imap: Any) -> Any:
    config = {"host": "127.0.0.1", "port": dovecot.imaps_port, "tls": True,
              "ca_file": str(dovecot.ca_file), "username": box.user, "password": box.password,
              "idle_interval": "5m", "poll_interval": "60s", "timeout": "10s",
              "reconnect_initial": "1s", "reconnect_max": "2s", **imap}
    return make_settings(database_url=database_url, email={"imap": config})


def reader(daemon: Any) -> Any:
    return next(c for c in daemon.channels if c.name == "imap")
