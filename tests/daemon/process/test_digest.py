"""The weekly digest: posted through the Slack desk's outbox to the loopback fake of Slack, once
for the week (not again after a restart, nor when two checks race), the next week again, not at
all without ``[digest] channel``, and not for a week whose moment is more than a day gone.
SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.daemon.process.digest import EVENT, KIND
from frontdesk.storage.db import Store
from frontdesk.storage.models import Event, Outbox
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.support.helpers import FakeClock, eventually
from tests.support.seed_figures import Seed, seed

SUPPORT = "C0SUPPORT"
DIGEST = "C0DIGEST"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday, an hour after the digest's time


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


SEEDS = [
    Seed(at(2026, 11, 16, 11), "email", ["refund"], timedelta(minutes=20), 5, "resolved"),
    Seed(at(2026, 11, 17, 12), "sms", ["refund", "shipping"], timedelta(hours=3), 3,
         "resolved"),
    Seed(at(2026, 11, 19, 15), "email", ["refund"], timedelta(minutes=40)),
    Seed(at(2026, 11, 21, 8), "web", [], None),
    Seed(at(2026, 11, 2, 8), "email", ["login"], timedelta(minutes=5), 1, "resolved"),
]


@pytest.fixture
async def slack() -> Any:
    async with FakeSlack() as fake:
        yield fake


def digest_settings(make_settings: Any, slack: FakeSlack, *, database_url: str | None = None,
                    digest: dict[str, Any] | None = None, **more: Any) -> Any:
    sections: dict[str, Any] = {**more,
        "slack": {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                  "channel_id": SUPPORT, "api_base_url": slack.base_url, "post_interval": "0s"},
        "http": {"public_url": "https://support.example.com"},
    }
    if digest is not None:
        sections["digest"] = digest
    return make_settings(database_url=database_url, **sections)


async def seeded_store(settings: Any) -> None:
    store = Store.from_settings(settings.database)
    try:
        await store.ensure_schema()
        await seed(store, SEEDS)
    finally:
        await store.dispose()


async def start(daemon_factory: Any, settings: Any, clock: FakeClock) -> Any:
    d = await daemon_factory(settings, clock=clock)
    await eventually(lambda: _ready(d))
    return d


async def _ready(d: Any) -> bool:
    return all(s.ready for s in d.services)


def posts(slack: FakeSlack) -> list[dict[str, Any]]:
    return [m for m in slack.messages if m["channel"] == DIGEST]


async def count(d: Any, query: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(query)).scalar_one())


async def test_posted_once_for_the_week_and_again_the_next(
        make_settings: Any, daemon_factory: Any, slack: FakeSlack,
        database_url: str) -> None:
    settings = digest_settings(make_settings, slack, database_url=database_url,
                               digest={"channel": DIGEST, "day": "monday", "time": "09:00"})
    await seeded_store(settings)
    clock = FakeClock(NOW)
    d = await start(daemon_factory, settings, clock)
    [post] = await eventually(lambda: _posts(slack))
    text = post["text"]
    assert text.startswith("*frontdesk weekly digest* · 16 Nov – 23 Nov 2026 (UTC)")
    assert "Conversations: *4* (2 resolved, 2 not yet)" in text
    assert "First response: median *40m*, p90 2h32m" in text
    assert "SLA met: *50%* (2 of 4)" in text  # the web one is past its due time, unanswered
    assert "CSAT: *4.0* from 2 ratings" in text
    assert "Top tags: refund 3, shipping 1" in text
    assert "Open backlog now: *2* (2 older than a day)" in text
    assert "<https://support.example.com/dashboard|Open the dashboard>" in text
    assert await count(d, select(func.count()).select_from(Event).where(
        Event.kind == EVENT)) == 1
    async with d.store.reader() as s:
        event = (await s.execute(select(Event).where(Event.kind == EVENT))).scalar_one()
    assert event.data["week"] == "2026-W48" and event.data["slack_channel"] == DIGEST
    assert await d.digest.check() is None  # queued already

    # a restart (the same week) posts nothing more
    d.request_stop()
    await d.stop()
    again = await start(daemon_factory, settings, clock)
    assert await again.digest.check() is None
    await asyncio.sleep(1.2)  # an outbox round
    assert len(posts(slack)) == 1

    # the next week's
    clock.advance(days=7)
    assert await again.digest.check() == "2026-W49"
    await eventually(lambda: _posts(slack, 2))
    assert "30 Nov 2026" in posts(slack)[1]["text"]
    assert await count(again, select(func.count()).select_from(Outbox).where(
        Outbox.kind == KIND)) == 2


async def _posts(slack: FakeSlack, n: int = 1) -> list[dict[str, Any]] | None:
    found = posts(slack)
    return found if len(found) >= n else None


async def test_two_checks_at_once_queue_one(make_settings: Any, daemon_factory: Any,
                                            slack: FakeSlack, database_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances looking at the same moment: the week's key is inserted once; the other
    insert does nothing (and writes no event)."""
    settings = digest_settings(make_settings, slack, database_url=database_url,
                               digest={"channel": DIGEST, "day": "monday", "time": "09:30"})
    clock = FakeClock(NOW - timedelta(hours=1))  # before the moment: the start queues nothing
    d = await start(daemon_factory, settings, clock)
    assert await d.digest.check() is None
    clock.advance(hours=1)

    async def never(_week: str) -> bool:
        return False  # as if both looked before either wrote

    monkeypatch.setattr(d.digest, "_queued", never)
    results = await asyncio.gather(d.digest.check(), d.digest.check())
    assert sorted(results, key=str) == ["2026-W48", None]
    assert await count(d, select(func.count()).select_from(Outbox).where(
        Outbox.kind == KIND)) == 1
    assert await count(d, select(func.count()).select_from(Event).where(
        Event.kind == EVENT)) == 1
    await eventually(lambda: _posts(slack))


async def test_nothing_without_a_digest_channel(make_settings: Any, daemon_factory: Any,
                                                slack: FakeSlack,
                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = digest_settings(make_settings, slack)
    caplog.set_level(logging.DEBUG, logger="frontdesk.daemon.process.digest")
    d = await start(daemon_factory, settings, FakeClock(NOW))
    assert await d.digest.check() is None
    await asyncio.sleep(1.2)
    assert posts(slack) == [] and d.digest.active is False
    assert await count(d, select(func.count()).select_from(Outbox).where(
        Outbox.kind == KIND)) == 0
    lines = [r.getMessage() for r in caplog.records
             if r.name == "frontdesk.daemon.process.digest"]
    assert lines == ["weekly digest off ([digest] channel is not set)"]


async def test_not_without_slack_and_not_days_late(make_settings: Any, daemon_factory: Any,
                                                   slack: FakeSlack) -> None:
    no_slack = make_settings(digest={"channel": DIGEST})
    d = await daemon_factory(no_slack, clock=FakeClock(NOW))
    assert d.digest.active is False and await d.digest.check() is None
    d.request_stop()
    await d.stop()
    # Wednesday: Monday's moment is more than a day gone; next Monday's comes
    clock = FakeClock(NOW + timedelta(days=2))
    late = await start(daemon_factory, digest_settings(make_settings, slack,
                                                       digest={"channel": DIGEST}), clock)
    assert await late.digest.check() is None
    clock.advance(days=5)
    assert await late.digest.check() == "2026-W49"


async def test_the_moment_is_in_the_sla_time_zone(make_settings: Any, daemon_factory: Any,
                                                  slack: FakeSlack) -> None:
    settings = digest_settings(make_settings, slack, sla={"timezone": "America/New_York"},
                               digest={"channel": DIGEST, "day": "friday", "time": "17:30"})
    d = await daemon_factory(settings, clock=FakeClock(NOW))
    moment = d.digest.moment(NOW)  # Monday 05:00 in New York: last Friday's 17:30 there
    assert moment == at(2026, 11, 20, 22, 30)
    assert d.digest.moment(at(2026, 11, 20, 22, 30)) == moment
    assert d.digest.moment(at(2026, 11, 20, 22, 29)) == moment - timedelta(days=7)
