"""A daemon with the Meta channel on, its Graph API the loopback fake, webhooks signed as Meta
signs them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.fakes.meta import (
    APP_SECRET,
    INSTAGRAM_ID,
    PAGE_ID,
    PAGE_TOKEN,
    PHONE_NUMBER_ID,
    WHATSAPP_TOKEN,
    FakeGraph,
    post_webhook,
)

VERIFY_TOKEN = "frontdesk-verify-42"


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as g:
        yield g


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def meta_settings(make_settings: Callable[..., Any], graph: FakeGraph) -> Callable[..., Any]:
    def make(**sections: dict[str, Any]) -> Any:
        meta = {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN,
                "api_base_url": graph.base_url, "page_id": PAGE_ID,
                "page_access_token": PAGE_TOKEN, "instagram_account_id": INSTAGRAM_ID,
                "whatsapp_phone_number_id": PHONE_NUMBER_ID,
                "whatsapp_access_token": WHATSAPP_TOKEN, **sections.pop("meta", {})}
        return make_settings(meta=meta, **sections)

    return make


class Hooks:
    """Posting webhooks to one daemon."""

    def __init__(self, http: aiohttp.ClientSession, daemon: Any) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{daemon.http.port}/webhooks/meta"

    async def post(self, payload: Any, **kw: Any) -> tuple[int, str]:
        return await post_webhook(self.http, self.url, payload, **kw)
