"""A message that is slow to parse does not freeze the daemon: parsing runs in a worker thread,
so while one mail takes seconds to read the health check answers and other senders get their
250 at once (issue 14: one hostile mail froze /healthz for 7 s and held others' 250 for 18 s)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import pytest

from frontdesk.channels.email.channel import EmailChannel
from frontdesk.domain.messages import InboundMessage
from tests.support.helpers import conversations, eventually, mail, processed, send, smtp_send

SLOW = 2.0


async def test_a_slow_parse_holds_neither_health_checks_nor_other_senders(
        make_settings: Any, daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    original = EmailChannel.parse
    parsing = threading.Event()

    def slow_parse(self: EmailChannel, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        if b"slow to read" in raw:
            parsing.set()
            time.sleep(SLOW)  # CPU-bound parsing holds its thread this long
        return original(self, raw, meta)

    monkeypatch.setattr(EmailChannel, "parse", slow_parse)
    d = await daemon_factory(make_settings())

    def meanwhile() -> tuple[float, float]:
        """From another thread (the daemon's loop may be the one that is stuck): the time
        /healthz and another sender's 250 take while the slow mail is being parsed."""
        assert parsing.wait(5), "the slow mail was never parsed"
        began = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{d.http.port}/healthz", timeout=10) as r:
            assert r.status == 200
        health = time.monotonic() - began
        began = time.monotonic()
        smtp_send(d.email.smtp.port, mail(frm="Bob <bob@example.org>", msgid="<b@example.org>"),
                  sender="bob@example.org")
        return health, time.monotonic() - began

    measuring = asyncio.ensure_future(asyncio.to_thread(meanwhile))
    await send(d.email.smtp.port, mail(subject="slow to read", msgid="<slow@example.org>"))
    health, accepted = await measuring
    assert health < SLOW / 2, f"/healthz took {health:.2f} s while a mail was being parsed"
    assert accepted < SLOW / 2, f"another sender's 250 took {accepted:.2f} s"

    await eventually(lambda: processed(d.store))
    assert sorted(c.subject for c in await conversations(d.store)) == [
        "Order 1234 never arrived", "slow to read"]
