"""The channel seam: a channel is its own package plus one line in the registry.

A small channel ("pager") is written here exactly as the README's checklist says — a
``ChannelSection`` that builds it, a class that is a ``Channel`` — and added to the configuration
with one field. The real daemon then takes its webhook, journals and processes what arrives into
a conversation on that channel, and sends a staff reply back through it; without credentials it
is reported as disabled in one line. Nothing else in the core is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import Field, SecretStr

from frontdesk.channels.base import (
    Accept,
    Channel,
    ChannelContext,
    ChannelParts,
    ChannelSection,
)
from frontdesk.config.schema import CoreSettings
from frontdesk.daemon.process.app import build_channels
from frontdesk.daemon.process.registry import Settings, channel_sections, customer_channels
from frontdesk.domain.conversations import add_staff_reply, get_conversation
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt
from tests.support.helpers import detail, eventually, processed, settings_for


class PagerChannel:
    """A channel whose customers post JSON to ``/webhooks/pager``."""

    name = "pager"
    journal_names = ("pager",)
    channel_names = ("pager",)

    def __init__(self, token: str) -> None:
        self._token = token
        self._accept: Accept | None = None
        self.sent: list[OutboundMessage] = []
        self.context: ChannelContext | None = None

    def bind(self, context: ChannelContext) -> ChannelParts:
        self.context = context
        return ChannelParts(routes=[web.post("/webhooks/pager", self._on_post)])

    async def _on_post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self._token}":
            return web.Response(status=403)
        raw = await request.read()
        assert self._accept is not None
        await self._accept("pager", json.loads(raw)["id"], raw, {})
        return web.Response(status=200)

    async def start(self, accept: Accept) -> None:
        self._accept = accept

    async def stop(self) -> None:
        self._accept = None

    @property
    def ready(self) -> bool:
        return self._accept is not None

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        data = json.loads(raw)
        return InboundMessage(channel="pager", external_id=data["id"],
                              sender_address=data["from"], sender_name=data["name"],
                              text=data["text"])

    async def send(self, outbound: OutboundMessage) -> Receipt:
        self.sent.append(outbound)
        return Receipt(remote_id=f"page-{len(self.sent)}")


class PagerConfig(ChannelSection):
    """``[pager]``"""

    channel_names = ("pager",)
    token: SecretStr = SecretStr("")

    def build(self, core: CoreSettings) -> list[Channel | str]:
        if not self.token.get_secret_value():
            return ["pager channel disabled: pager.token is not set"]
        return [PagerChannel(self.token.get_secret_value())]


class SettingsWithPager(Settings):
    pager: PagerConfig = Field(default_factory=PagerConfig)  # the one registry line


def _settings(tmp_path: Path, **pager: Any) -> SettingsWithPager:
    base = settings_for(tmp_path).model_dump(by_alias=True)
    return SettingsWithPager.model_validate({**base, "pager": pager})


def test_a_section_line_makes_the_channel_known_or_says_why_it_is_off(tmp_path: Path) -> None:
    off = _settings(tmp_path)
    assert list(channel_sections(off)) == ["email", "twilio", "telegram", "web", "meta",
                                              "logged", "pager"]
    assert "pager" in customer_channels(off)
    assert "pager channel disabled: pager.token is not set" in build_channels(off)[1]
    on = _settings(tmp_path, token="s3cret")
    assert [c.name for c in build_channels(on)[0]] == ["email", "logged", "pager"]
    assert "s3cret" not in repr(on)


async def test_the_daemon_runs_a_channel_it_has_never_heard_of(
        tmp_path: Path, daemon_factory: Any, clock: Any) -> None:
    d = await daemon_factory(_settings(tmp_path, token="s3cret"), clock=clock)
    [pager] = [c for c in d.channels if isinstance(c, PagerChannel)]
    assert pager.context is not None and pager.context.store is d.store
    url = f"http://127.0.0.1:{d.http.port}/webhooks/pager"
    page = {"id": "p-1", "from": "ada-pager", "name": "Ada", "text": "The printer is on fire"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=page) as refused:
            assert refused.status == 403
        for _ in range(2):  # a retry of the same page is stored once
            async with http.post(url, json=page,
                                 headers={"Authorization": "Bearer s3cret"}) as answer:
                assert answer.status == 200
    await eventually(lambda: processed(d.store))
    shown = await detail(d.store, 1)
    assert shown["channel"] == "pager"
    assert [m["text"] for m in shown["messages"]] == ["The printer is on fire"]
    assert shown["contact"]["identities"] == [{"channel": "pager", "address": "ada-pager"}]
    async with d.store.session() as s:
        await add_staff_reply(s, await get_conversation(s, 1), "Evacuate.", author="Grace",
                              replies=d.replies, now=clock())
    d.outbox.kick()

    async def sent() -> list[OutboundMessage]:
        return pager.sent

    await eventually(sent)
    assert pager.sent[0].to_address == "ada-pager" and pager.sent[0].text == "Evacuate."
    ok, checks = await d.readiness()
    assert ok and checks["pager"] == "ok"
