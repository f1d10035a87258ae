"""Small helpers the end-to-end tests share: send mail over real SMTP, wait for the store."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select

from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.conversations import conversation_detail, get_conversation, messages_of
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation, InboundJournal

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (config/, systemd/ and the rest beside tests/)."""


def mail(frm: str = "Ada Lovelace <ada@example.org>", to: str = "support@example.com",
         subject: str = "Order 1234 never arrived", body: str = "Hello, where is my order?",
         msgid: str | None = "<m1@example.org>", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    if msgid:
        msg["Message-ID"] = msgid
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def smtp_send(port: int, message: EmailMessage | bytes, *, sender: str = "ada@example.org",
              rcpt: list[str] | None = None) -> dict[str, Any]:
    """Send one message; returns smtplib's refused-recipients dict (raises on a refusal)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        data = message if isinstance(message, bytes) else message.as_bytes(policy=SMTP_POLICY)
        return s.sendmail(sender, rcpt or ["support@example.com"], data)


async def send(port: int, message: EmailMessage | bytes, **kw: Any) -> dict[str, Any]:
    return await asyncio.to_thread(smtp_send, port, message, **kw)


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 10.0,
                     interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def processed(store: Store) -> bool:
    async with store.reader() as s:
        pending = (await s.execute(select(func.count()).select_from(InboundJournal)
                                   .where(InboundJournal.state == "pending"))).scalar_one()
        total = (await s.execute(select(func.count()).select_from(InboundJournal))).scalar_one()
    return pending == 0 and total > 0


async def conversations(store: Store) -> list[Conversation]:
    async with store.reader() as s:
        return list((await s.execute(select(Conversation).order_by(Conversation.id)))
                    .unique().scalars())


async def detail(store: Store, ref: str | int) -> dict[str, Any]:
    async with store.reader() as s:
        c = await get_conversation(s, ref)
        return conversation_detail(c, await messages_of(s, c.id))

class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def settings_for(tmp_path: Path, *, database_url: str | None = None,
                 **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "database": {"url": database_url or f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db"},
        "http": {"listen": "127.0.0.1:0"},
        "email": {"inbox_addresses": ["support@example.com"],
                  "smtp_server": {"listen": "127.0.0.1:0", "hostname": "frontdesk.test"},
                  "outbound": {"host": "127.0.0.1", "port": 9, "starttls": "off",
                               "from": "Support <support@example.com>"}},
        "daemon": {"data_dir": str(tmp_path / "data"), "outbox_poll": "1s",
                   "outbox_retry_initial": "1s", "outbox_retry_max": "2s",
                   "shutdown_timeout": "10s"},
        "sla": {"business_hours": "always", "first_response": "1h", "timezone": "UTC"},
        # The scheduler's sweeps (acknowledgements, escalations, surveys) stay off unless a test
        # turns them on: tests of other parts count the messages and posts they expect.
        "scheduler": {"enabled": False},
    }
    for section, values in sections.items():
        if not isinstance(values, dict):  # a list of tables ([[tag_rules]]) or a value
            data[section] = values
            continue
        target = data.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return Settings.model_validate(data)


def cli_config(d: Any, tmp_path: Path, *, relay_port: int | None = None) -> str:
    """A config file for the command line naming a running daemon's store and relay."""
    path = tmp_path / "frontdesk.toml"
    port = relay_port if relay_port is not None else d.settings.email.outbound.port
    path.write_text(f"""
[database]
url = "{d.settings.database.url}"
[email]
inbox_addresses = ["support@example.com"]
[email.outbound]
host = "127.0.0.1"
port = {port}
from = "Example Support <support@example.com>"
starttls = "off"
[daemon]
data_dir = "{tmp_path}/data"
""")
    return str(path)


async def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``frontdesk ARGS`` in this process, in a thread (it runs its own event loop): the exit
    code (a usage error's SystemExit gives its code), stdout and stderr of this call alone."""
    from frontdesk.daemon.cli.main import main

    def run() -> int:
        try:
            return main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)

    capsys.readouterr()
    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err
