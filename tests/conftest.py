"""Shared fixtures: settings on a temp dir, the store on SQLite and (when named) PostgreSQL,
and a daemon running on the test's own event loop with loopback ports chosen by the kernel."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frontdesk.daemon.process.registry import Settings
from tests.support.helpers import FakeClock, settings_for

POSTGRES_ENV = "FRONTDESK_TEST_POSTGRES_URL"
PG_SKIP = (f"PostgreSQL tests need {POSTGRES_ENV} "
           "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test); .ci/run sets it")



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _pg_admin_url(url: str) -> str:
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"fd_test_{secrets.token_hex(4)}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Store tests run on both backends (PostgreSQL when FRONTDESK_TEST_POSTGRES_URL is set)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db"
    return request.getfixturevalue("postgres_url")




@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **kw: settings_for(tmp_path, **kw)


@pytest.fixture
async def daemon_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start daemons on this loop; every one still running is stopped at the end."""
    from frontdesk.daemon.process.app import Daemon

    started: list[Daemon] = []

    async def start(settings: Settings, **kwargs: Any) -> Daemon:
        d = Daemon(settings, **kwargs)
        await d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        if not d._stop.is_set():
            d.request_stop()
            await d.stop()


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Dovecot on loopback for the whole session (tests/dovecot.py); each test takes its
    own user with ``dovecot.add_user()``. Skipped, saying why, where Dovecot is not installed."""
    from tests.support import dovecot as dovecot_module

    if not dovecot_module.available():
        pytest.skip(dovecot_module.SKIP_REASON)
    # Not under pytest's private (0700) temp dir: Dovecot's auth and mail processes run as
    # other users and must reach the passwd file and the Maildirs.
    root = Path(tempfile.mkdtemp(prefix="frontdesk-dovecot-"))
    root.chmod(0o755)
    server = dovecot_module.Dovecot(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
