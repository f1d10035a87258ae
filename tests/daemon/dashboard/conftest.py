"""A daemon whose store holds conversations over several weeks (tests/support/seed_figures.py),
with its SLA calendar in New York, so days and weeks are local days and weeks; and API tokens."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from frontdesk.daemon.api.tokens import create_token, revoke_token
from frontdesk.storage.db import Store
from tests.support.helpers import FakeClock
from tests.support.seed_figures import Seed, seed

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
"""A Monday: 05:00 in New York (UTC-5 since 1 November)."""
TIMEZONE = "America/New_York"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


SEEDS = [
    Seed(at(2026, 11, 2, 15), "email", ["refund"], timedelta(minutes=30), 5, "resolved"),
    Seed(at(2026, 11, 3, 16), "sms", ["refund", "shipping"], timedelta(hours=2), 2, "resolved",
         escalations=1),
    Seed(at(2026, 11, 10, 14), "email", ["shipping"], timedelta(minutes=20), assignee="Grace"),
    Seed(at(2026, 11, 12, 9), "web", [], None),
    Seed(at(2026, 11, 18, 13), "email", ["refund"], timedelta(minutes=10), 4, "resolved",
         assignee="Grace"),
    # 03:00 UTC on the 20th is 22:00 on the 19th in New York: a day (and week) of New York's
    Seed(at(2026, 11, 20, 3), "telegram", ["login"], timedelta(minutes=45), status="pending"),
    Seed(at(2026, 11, 23, 8), "email", ["refund", "login"], None),
    Seed(at(2026, 9, 1, 12), "email", ["refund"], None),  # before the last 30 days: backlog only
    Seed(at(2026, 11, 23, 9, 30), "email", [], None),  # half an hour old, not yet due
]


async def make_token(store: Store, name: str, scope: str = "read") -> str:
    async with store.session() as s:
        return await create_token(s, name, scope, actor="test", now=NOW)


async def revoke(store: Store, name: str) -> None:
    async with store.session() as s:
        await revoke_token(s, name, actor="test", now=NOW)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def dashboard_settings(make_settings: Callable[..., Any]) -> Callable[..., Any]:
    def settings(**sections: Any) -> Any:
        sla = {"timezone": TIMEZONE, **sections.pop("sla", {})}
        return make_settings(sla=sla, **sections)
    return settings


@pytest.fixture
async def seeded(dashboard_settings: Callable[..., Any], daemon_factory: Callable[..., Any],
                 clock: FakeClock) -> Any:
    """The daemon, started, with :data:`SEEDS` in its store."""
    d = await daemon_factory(dashboard_settings(), clock=clock)
    await seed(d.store, SEEDS)
    return d


@pytest.fixture
async def seeded_each_store(dashboard_settings: Callable[..., Any],
                            daemon_factory: Callable[..., Any], clock: FakeClock,
                            database_url: str) -> Any:
    """As :func:`seeded`, on SQLite and (when named) PostgreSQL."""
    d = await daemon_factory(dashboard_settings(database_url=database_url), clock=clock)
    await seed(d.store, SEEDS)
    return d


def base_of(daemon: Any) -> str:
    return f"http://127.0.0.1:{daemon.http.port}"
