"""PostgreSQL going away and coming back, and the ``[database]`` pool and timeout settings.

A daemon with every inbound road (its SMTP server, Twilio and Telegram webhooks), the Slack desk
and the scheduler runs on a real PostgreSQL reached through a loopback proxy (tests/tcp_proxy.py).
The test cuts the proxy as a server restart would (every connection dropped, new ones refused),
or leaves connections unanswered as a silent host would: senders get temporary answers at once
(SMTP 451, HTTP 503), /readyz says 503, the background loops log the outage once and wait; when
the proxy forwards again the same messages are taken, processed, acknowledged, mirrored to Slack,
and a staff reply reaches the customer. No test touches the server itself.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from frontdesk.config.schema import DatabaseConfig
from frontdesk.daemon.process.registry import Settings
from frontdesk.storage.db import Store, store_unavailable
from frontdesk.storage.models import Conversation, InboundJournal, Message
from tests.fakes.slack import BOT_TOKEN as SLACK_TOKEN
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, thread_message
from tests.fakes.smtp_sink import SmtpSink
from tests.fakes.telegram import BOT_TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio
from tests.support.helpers import REPO_ROOT, eventually, mail, send, settings_for, smtp_send
from tests.support.tcp_proxy import TcpProxy

SUPPORT = "C0SUPPORT"
SECRET = "webhook-secret_0123456789"
TELEGRAM_USER = 987654321
OURS = "+15550001111"
FRONTDESK = str(Path(sys.executable).parent / "frontdesk")
LOOPS = ("processing the journal", "the outbox", "the scheduler's sweep",
         "refreshing Slack root messages")


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as p:
        yield p


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, Any]]:
    async with FakeTwilio() as twilio, FakeTelegram() as telegram, FakeSlack() as slack, \
            SmtpSink() as sink:
        yield {"twilio": twilio, "telegram": telegram, "slack": slack, "sink": sink}


def outage_settings(tmp_path: Path, url: str, fakes: dict[str, Any]) -> Settings:
    return settings_for(
        tmp_path, database_url=url,
        # short bounds so a test waits seconds, not the defaults' 10 s and 5 s
        database={"pool_size": 3, "max_overflow": 2, "pool_timeout": "2s",
                  "connect_timeout": "1s", "statement_timeout": "10s"},
        http={"public_url": PUBLIC_URL},
        email={"outbound": {"port": fakes["sink"].port}},
        twilio={"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "sms_from": OURS,
                "api_base_url": fakes["twilio"].base_url},
        telegram={"bot_token": TELEGRAM_TOKEN, "api_base_url": fakes["telegram"].base_url,
                  "mode": "webhook", "webhook_secret": SECRET},
        slack={"bot_token": SLACK_TOKEN, "signing_secret": SIGNING_SECRET,
               "channel_id": SUPPORT, "api_base_url": fakes["slack"].base_url,
               "post_interval": "0s"},
        scheduler={"enabled": True, "interval": "1s"},
    )


async def http_get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


async def ready(d: Any) -> bool:
    return (await http_get(d.http.port, "/readyz"))[0] == 200


def smtp_refusal(port: int, message: Any) -> tuple[int, str, float]:
    """Send one message that must be refused at DATA: (code, text, seconds it took)."""
    began = time.monotonic()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(port, message)
    return refused.value.smtp_code, refused.value.smtp_error.decode(), \
        time.monotonic() - began


async def timed(coro: Any) -> tuple[Any, float]:
    began = time.monotonic()
    result = await coro
    return result, time.monotonic() - began


def alive(d: Any) -> None:
    """The daemon did not crash, exit or lose a background task."""
    assert not d._stop.is_set()
    desk = next(s for s in d.services if s.name == "slack")
    refresh = desk._tasks[0]  # the other one signs in to Slack and ends
    for task in (d.processor._task, d.outbox._task, d.scheduler._task, d.journal._task,
                 refresh):
        assert task is not None and not task.done(), task


async def journal_settled(d: Any, count: int) -> bool:
    async with d.store.reader() as s:
        states = dict((await s.execute(select(InboundJournal.state, func.count())
                                       .group_by(InboundJournal.state))).all())
    return states == {"done": count}


async def conversation_channels(d: Any) -> list[str]:
    async with d.store.reader() as s:
        return sorted((await s.execute(select(Conversation.channel))).scalars())


# -- a restart: connections dropped, new ones refused --------------------------------------------

async def test_postgres_restart_is_survived(tmp_path: Path, postgres_url: str, proxy: TcpProxy,
                                            fakes: dict[str, Any], daemon_factory: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    twilio, telegram, slack, sink = (fakes[k] for k in ("twilio", "telegram", "slack", "sink"))
    d = await daemon_factory(outage_settings(tmp_path, proxy.url_for(postgres_url), fakes))
    twilio.daemon_port = d.http.port
    await eventually(lambda: ready(d))
    # one message before the outage, so the pool holds connections the outage then breaks
    await send(d.email.smtp.port, mail(msgid="<before@example.org>", subject="Before"))
    await eventually(lambda: journal_settled(d, 1))
    assert proxy.connections > 0

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="frontdesk")
    proxy.stop()  # PostgreSQL restarting: every connection gone, connects refused
    cut = len(caplog.records)

    email = mail(msgid="<during@example.org>", subject="During the outage")
    code, reply, took = await asyncio.to_thread(smtp_refusal, d.email.smtp.port, email)
    assert code == 451 and reply.startswith("4."), (code, reply)
    assert took < 3, took
    sms = twilio.inbound("Sent while the store was away")
    (status, _), took = await timed(twilio.post("/webhooks/twilio/sms", sms))
    assert status == 503 and took < 3
    update = telegram.message_update(TELEGRAM_USER, "Telegram while the store was away")
    status, took = await timed(telegram.deliver_webhook(d.http.port, update, SECRET))
    assert status == 503 and took < 3
    (status, body), took = await timed(http_get(d.http.port, "/readyz"))
    assert status == 503 and body["checks"]["store"] == "unreachable" and took < 4
    status, _ = await http_get(d.http.port, "/healthz")
    assert status == 200  # the process itself is fine

    # Let every background loop meet the outage a few times: the outbox polls, the sweeps run
    # each second, the desk refreshes, and the processor is woken as a commit would.
    for _ in range(6):
        d.processor.kick()
        d.outbox.kick()
        d.scheduler.wake()
        await asyncio.sleep(0.5)
    alive(d)
    during = caplog.records[cut:]
    tracebacks = [r for r in during if r.exc_info]
    assert not tracebacks, [(r.name, r.getMessage()) for r in tracebacks]
    for loop in LOOPS:
        warned = [r for r in during if r.levelno >= logging.WARNING
                  and r.getMessage().startswith(f"{loop}: the store is unavailable")]
        assert len(warned) <= 1, (loop, [r.getMessage() for r in warned])
    assert any(r.getMessage().startswith("the outbox: the store is unavailable")
               for r in during)
    assert any(r.getMessage().startswith("processing the journal: the store is unavailable")
               for r in during)
    assert len([r for r in during if r.levelno >= logging.WARNING]) < 20, \
        [r.getMessage() for r in during if r.levelno >= logging.WARNING]

    proxy.start()  # PostgreSQL is back
    await eventually(lambda: ready(d), timeout=15)
    back = len(caplog.records)
    # the same messages again, as the senders retry them
    assert await send(d.email.smtp.port, email) == {}
    assert (await twilio.post("/webhooks/twilio/sms", sms))[0] == 200
    assert await telegram.deliver_webhook(d.http.port, update, SECRET) == 200
    await eventually(lambda: journal_settled(d, 4), timeout=15)
    assert await conversation_channels(d) == ["email", "email", "sms", "telegram"]
    # the desk mirrors all four, the scheduler acknowledges the new ones on their channels
    await eventually(lambda: _true(len(slack.roots(SUPPORT)) == 4), timeout=15)
    await eventually(lambda: _true(any("FD-" in m["Body"] for m in twilio.messages)),
                     timeout=15)
    await eventually(lambda: _true(len(sink.messages) >= 2), timeout=15)  # both mails acked
    # a staff reply in the SMS conversation's Slack thread, after the outage, reaches the phone
    sms_root = next(r for r in slack.roots(SUPPORT) if "Sent while the store" in str(r))
    # (the reply may come before the daemon has recorded the root's ts with the rest of that
    # round of sends: the thread is still known as this conversation's)
    event = thread_message(SUPPORT, sms_root["ts"], "Back online: your parcel ships today.")
    assert (await slack.event(f"http://127.0.0.1:{d.http.port}/slack/events", event))[0] == 200
    await eventually(lambda: _true(any(m["Body"] == "Back online: your parcel ships today."
                                       for m in twilio.messages)), timeout=15)
    await eventually(lambda: staff_statuses(d, ["sent"]))
    alive(d)
    recovered = [r.getMessage() for r in caplog.records[cut:]
                 if "the store answers again" in r.getMessage()]
    assert any(m.startswith("the outbox: the store answers again") for m in recovered), recovered
    assert not [r for r in caplog.records[back:] if r.exc_info]


async def _true(value: bool) -> bool:
    return value


async def staff_statuses(d: Any, expected: list[str]) -> bool:
    async with d.store.reader() as s:
        return list((await s.execute(select(Message.delivery_status)
                                     .where(Message.author == "staff"))).scalars()) == expected


# -- a silent host: connections accepted, never answered ------------------------------------------

async def test_a_silent_store_is_bounded_by_the_connect_timeout(
        tmp_path: Path, postgres_url: str, proxy: TcpProxy, fakes: dict[str, Any],
        daemon_factory: Any) -> None:
    twilio = fakes["twilio"]
    d = await daemon_factory(outage_settings(tmp_path, proxy.url_for(postgres_url), fakes))
    twilio.daemon_port = d.http.port
    await eventually(lambda: ready(d))
    proxy.hold()  # TCP connects succeed, PostgreSQL never answers: only the timeouts end it
    email = mail(msgid="<silent@example.org>")
    code, _, took = await asyncio.to_thread(smtp_refusal, d.email.smtp.port, email)
    # connect_timeout 1 s, pool_timeout 2 s: a few seconds at most, never the sender's timeout
    assert code == 451 and took < 5, (code, took)
    sms = twilio.inbound("Anyone there?")
    (status, _), took = await timed(twilio.post("/webhooks/twilio/sms", sms))
    assert status == 503 and took < 5, (status, took)
    (status, _), took = await timed(http_get(d.http.port, "/readyz"))
    assert status == 503 and took < 5, (status, took)
    alive(d)
    proxy.start()
    await eventually(lambda: ready(d), timeout=15)
    assert await send(d.email.smtp.port, email) == {}
    assert (await twilio.post("/webhooks/twilio/sms", sms))[0] == 200
    await eventually(lambda: journal_settled(d, 2), timeout=15)


async def test_sigterm_with_a_silent_store_still_stops_within_the_shutdown_timeout(
        tmp_path: Path, postgres_url: str, proxy: TcpProxy, fakes: dict[str, Any],
        daemon_factory: Any) -> None:
    """The store goes silent while messages are still being processed and sent: the stop
    (SIGTERM) ends within daemon.shutdown_timeout all the same; what is not done stays in the
    store for the next start."""
    settings = outage_settings(tmp_path, proxy.url_for(postgres_url), fakes)
    settings.daemon.shutdown_timeout = timedelta(seconds=4)
    d = await daemon_factory(settings)
    fakes["twilio"].daemon_port = d.http.port
    await eventually(lambda: ready(d))
    for i in range(5):
        assert await send(d.email.smtp.port, mail(msgid=f"<stop-{i}@example.org>")) == {}
    proxy.hold()
    d.request_stop()
    _, took = await timed(d.stop())
    assert took < 4.5, f"stopping took {took:.1f} s (shutdown_timeout 4s)"


# -- the settings ---------------------------------------------------------------------------------

async def test_statement_timeout_and_application_name_are_set(postgres_url: str) -> None:
    store = Store.from_settings(DatabaseConfig(url=postgres_url, statement_timeout="7s"))
    try:
        async with store.session() as s:
            assert (await s.execute(text("SHOW statement_timeout"))).scalar() == "7s"
            assert (await s.execute(text("SHOW application_name"))).scalar() == "frontdesk"
        pool: Any = store.engine.pool
        assert (pool.size(), pool.timeout(), pool._max_overflow) == (10, 10.0, 5)
    finally:
        await store.dispose()
    store = Store.from_settings(DatabaseConfig(url=postgres_url, statement_timeout="1s",
                                               pool_size=2, pool_timeout="3s"))
    try:
        pool = store.engine.pool
        assert (pool.size(), pool.timeout()) == (2, 3.0)
        with pytest.raises(DBAPIError) as cancelled:
            async with store.session() as s:
                await s.execute(text("SELECT pg_sleep(3)"))
        assert "statement timeout" in str(cancelled.value)
        assert not store_unavailable(cancelled.value)  # a slow statement, not an outage
        async with store.session() as s:  # the connection is still good
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await store.dispose()
    store = Store.from_settings(DatabaseConfig(url=postgres_url, statement_timeout="0s"))
    try:
        async with store.session() as s:  # "0s": frontdesk sets none, the server's own applies
            assert (await s.execute(text("SHOW statement_timeout"))).scalar() == "0"
    finally:
        await store.dispose()


async def test_migrations_are_not_cut_by_the_statement_timeout(postgres_url: str) -> None:
    store = Store.from_settings(DatabaseConfig(url=postgres_url, statement_timeout="1s"))
    try:
        await store.upgrade()
        async with store.engine.begin() as other:
            # another instance migrating: ours waits on its lock longer than the timeout
            await other.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            waiter = asyncio.create_task(store.upgrade())
            await asyncio.sleep(1.5)
            assert not waiter.done()
        await waiter  # the lock is free: ours finds the schema current
        assert await store.current_revisions()
    finally:
        await store.dispose()


def test_sqlite_ignores_the_pool_settings(tmp_path: Path) -> None:
    from frontdesk.storage.db import engine_options

    config = DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/f.db", pool_size=1,
                            statement_timeout="1s", pool_timeout="3s", connect_timeout="2s")
    assert engine_options(config) == {}
    store = Store.from_settings(config)
    pool: Any = store.engine.pool
    assert store.dialect == "sqlite" and pool.size() == 5  # SQLAlchemy's own default
    assert store.ping_timeout == 5.0  # /readyz still answers within pool + connect timeout
    assert asyncio.run(store.ping())
    asyncio.run(store.dispose())


def test_the_example_file_documents_the_defaults() -> None:
    example = (REPO_ROOT / "config" / "frontdesk.example.toml").read_text()
    section = example.split("[database]", 1)[1].split("\n[", 1)[0]
    keys = {}
    for line in section.splitlines():
        line = line.strip().removeprefix("# ")
        if " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            keys[key.strip()] = value.split("#", 1)[0].strip().strip('"')
    defaults = DatabaseConfig().model_dump(mode="json")
    for key in ("pool_size", "max_overflow", "pool_timeout", "statement_timeout",
                "connect_timeout", "pool_recycle"):
        assert str(defaults[key]) == keys[key], (key, defaults[key], keys.get(key))


def test_check_names_a_bad_database_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[database]\nurl = "postgresql+asyncpg://fd@db.example/fd"\n'
                   'pool_size = 0\nmax_overflow = -1\npool_timeout = "soon"\n'
                   'statement_timeout = 30\nconnect_timeout = "0s"\npool_recycle = "30x"\n')
    r = subprocess.run([FRONTDESK, "check", "-c", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stdout
    assert "Traceback" not in r.stderr
    for key in ("database.pool_size", "database.max_overflow", "database.pool_timeout",
                "database.statement_timeout", "database.connect_timeout",
                "database.pool_recycle"):
        assert key in r.stderr, (key, r.stderr)
    good = tmp_path / "good.toml"
    good.write_text('[database]\nurl = "postgresql+asyncpg://fd@db.example/fd"\n'
                    'pool_size = 20\nstatement_timeout = "0s"\npool_recycle = "1h"\n')
    r = subprocess.run([FRONTDESK, "check", "-c", str(good)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


# -- what counts as the store being away, and how a loop reports it --------------------------------

def test_store_unavailable_tells_an_outage_from_a_bug() -> None:
    import asyncpg
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    def wrapped(inner: BaseException) -> BaseException:
        try:
            raise RuntimeError("adapted") from inner
        except RuntimeError as exc:
            return exc

    away = [ConnectionRefusedError(111, "Connect call failed"), TimeoutError(),
            PoolTimeout("QueuePool limit of size 3 overflow 2 reached"),
            OperationalError("SELECT 1", None, RuntimeError("database is locked")),
            wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation")),
            wrapped(asyncpg.exceptions.CannotConnectNowError("the database system is starting"))]
    for exc in away:
        assert store_unavailable(exc), exc
    bugs = [ValueError("bad data"), KeyError("x"), FileNotFoundError(2, "no such file"),
            wrapped(asyncpg.exceptions.QueryCanceledError("statement timeout")),
            wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key"))]
    for exc in bugs:
        assert not store_unavailable(exc), exc


def test_backoff_reports_an_outage_once_and_grows(caplog: pytest.LogCaptureFixture) -> None:
    from frontdesk.storage.db import Backoff

    log = logging.getLogger("frontdesk.test.loop")
    caplog.set_level(logging.DEBUG, logger="frontdesk.test.loop")
    backoff = Backoff("the loop", log, initial=0.5, maximum=4)
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    delays = [backoff.failed(refused) for _ in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in loud] == [
        "the loop: the store is unavailable (ConnectionRefusedError: [Errno 111] Connect call "
        "failed ('127.0.0.1', 5432)); retrying with backoff (up to every 4 s) until it answers"]
    assert not any(r.exc_info for r in caplog.records)
    caplog.clear()
    backoff.succeeded()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("the loop: the store answers again (unavailable for ")
    caplog.clear()
    backoff.succeeded()  # nothing to report when nothing was wrong
    assert not caplog.records
    assert backoff.failed(ValueError("a bug")) == 0.5  # from the start again
    [bug, traceback] = caplog.records
    assert bug.levelno == logging.ERROR and not bug.exc_info
    assert bug.getMessage() == "the loop failed (ValueError: a bug); retrying in 0.5 s"
    assert traceback.levelno == logging.DEBUG and traceback.exc_info
    caplog.clear()
    backoff.failed(ValueError("a bug"))  # the same again: the line, not the traceback
    assert [(r.levelno, bool(r.exc_info)) for r in caplog.records] == [(logging.ERROR, False)]
