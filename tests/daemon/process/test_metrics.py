"""``/metrics`` of a running daemon: the build and process series, the conversation gauges read
from the store at each scrape, and no series for a part that does not run."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from frontdesk import __version__
from frontdesk.daemon.process.app import Daemon
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.conversations import resolve
from tests.support.helpers import FakeClock, conversations, eventually, mail, processed, send


async def scrape(d: Daemon) -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{d.http.port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


OTHER_PARTS = re.compile(r"imap|slack|telegram|twilio|sms|whatsapp|voice|scheduler_sweep",
                         re.IGNORECASE)


async def test_a_daemon_with_nothing_configured_shows_only_what_runs(
    make_settings: Callable[..., Settings], daemon_factory: Any,
) -> None:
    d = await daemon_factory(make_settings())
    text = await scrape(d)
    assert value(text, "frontdesk_build_info", version=__version__) == 1
    assert value(text, "frontdesk_conversations_open", channel="email") == 0
    assert value(text, "frontdesk_sla_breached", channel="email") == 0
    names = {name for name, _ in samples(text)}
    # the process and platform collectors, in the daemon's own registry
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "python_info"} <= names
    # nothing of the IMAP reader, the Slack desk, Telegram, Twilio or the (disabled) sweeps
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in series if OTHER_PARTS.search(line)], text


async def test_open_and_breached_conversations_by_channel_at_each_scrape(
    make_settings: Callable[..., Settings], daemon_factory: Any, clock: FakeClock,
) -> None:
    d = await daemon_factory(make_settings(), clock=clock)  # first response due within 1h
    assert d.email is not None and d.email.smtp is not None
    for n in range(3):
        await send(d.email.smtp.port, mail(msgid=f"<sla{n}@example.org>", subject=f"Order {n}",
                                           frm=f"Customer {n} <c{n}@example.org>"))
    await eventually(lambda: processed(d.store))
    text = await scrape(d)
    assert value(text, "frontdesk_conversations_open", channel="email") == 3
    assert value(text, "frontdesk_sla_breached", channel="email") == 0

    clock.advance(hours=2)
    first, *_ = await conversations(d.store)
    async with d.store.session() as s:
        conversation = await s.get(type(first), first.id)
        assert conversation is not None
        await resolve(s, conversation, actor="test", now=clock())
    text = await scrape(d)
    assert value(text, "frontdesk_conversations_open", channel="email") == 2
    assert value(text, "frontdesk_sla_breached", channel="email") == 2


def test_imap_and_slack_series_exist_only_when_they_run(
    make_settings: Callable[..., Settings],
) -> None:
    """The IMAP reader's and the Slack desk's metrics are registered when they are built (the
    daemon is composed, not started: nothing connects)."""
    plain = Daemon(make_settings()).metrics.render().decode()
    assert "frontdesk_imap_" not in plain and "frontdesk_slack_" not in plain

    settings = make_settings(
        email={"imap": {"host": "127.0.0.1", "port": 9, "tls": False, "username": "support",
                        "password": "secret"}},
        slack={"bot_token": "xoxb-test", "signing_secret": "signing", "channel_id": "C0TEST",
               "api_base_url": "http://127.0.0.1:9/api/"},
    )
    text = Daemon(settings).metrics.render().decode()
    assert "frontdesk_imap_connected" in text and "frontdesk_imap_fetched_total" in text
    assert "# TYPE frontdesk_slack_backlog gauge" in text
