"""Fixtures of the Telegram channel tests: a loopback fake of the Bot API, and the channel's
reconnect backoff shortened so that a test does not wait seconds for a retry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from frontdesk.channels.telegram.channel import TelegramChannel
from tests.fakes.telegram import FakeTelegram


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramChannel, "backoff_initial", 0.05)
    monkeypatch.setattr(TelegramChannel, "backoff_max", 0.2)
