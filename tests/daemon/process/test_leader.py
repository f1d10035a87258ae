"""Leader election for the single consumers (daemon/leader.py): IMAP polling and Telegram
getUpdates run in exactly one instance on one PostgreSQL database.

Electors here are real: real PostgreSQL advisory locks on dedicated connections, a real
``kill -9`` of a leader process, a real ``pg_terminate_backend``, and a TCP proxy on loopback
between an elector and PostgreSQL that the tests cut (a server restart: every connection
closed, new ones refused) or silence (a network partition: sockets open, nothing passes).
Each consumer records when it ran, so a test can check that two never ran at once.
The PostgreSQL tests skip, saying why, without FRONTDESK_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from frontdesk.daemon.process.leader import Leadership, lock_key
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.registry import Settings
from frontdesk.storage.models import InboundJournal, Message, TelegramOffset
from tests.fakes import serve
from tests.fakes.telegram import BOT_TOKEN, FakeTelegram
from tests.support.helpers import REPO_ROOT, eventually

QUICK = {"heartbeat": 1.0, "retry": 1.0}
"""The shortest durations the config allows ("1s"), so hand-overs take a second or two."""


# -- what the consumers did -------------------------------------------------------------------

class Runs:
    """Consumers that run until cancelled, each run recorded as (who, started, ended)."""

    def __init__(self) -> None:
        self.runs: list[list[Any]] = []

    def consumer(self, who: str, *, fail: bool = False) -> Callable[
            [], Coroutine[Any, Any, None]]:
        async def run() -> None:
            record = [who, time.monotonic(), None]
            self.runs.append(record)
            try:
                if fail:
                    raise RuntimeError(f"{who} broke")
                await asyncio.Event().wait()
            finally:
                record[2] = time.monotonic()
        return run

    def running(self) -> list[str]:
        return [who for who, _, ended in self.runs if ended is None]

    def assert_never_two_at_once(self) -> None:
        ordered = sorted(self.runs, key=lambda r: r[1])
        for before, after in itertools.pairwise(ordered):
            assert before[2] is not None and before[2] <= after[1], (
                f"{before[0]} still ran when {after[0]} started: {ordered}")


def gauge(metrics: Metrics, consumer: str) -> float:
    wanted = f'frontdesk_leader{{consumer="{consumer}"}} '
    for line in metrics.render().decode().splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    raise AssertionError(f"no frontdesk_leader series for {consumer}")


async def admin(url: str, sql: str, *args: Any) -> Any:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


HOLDER = """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = $1"""
"""The backend holding a bigint advisory lock (pg_locks splits the key into two oids)."""


def via(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


class Proxy:
    """A TCP proxy on loopback in front of PostgreSQL that a test can cut or silence."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode = "up"  # "down": nothing accepted, every connection closed; "partition"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.mode = "up"
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """A server restart: refuse new connections, close every open one."""
        self.mode = "down"
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def partition(self) -> None:
        """The network between goes silent: sockets stay open, no byte passes either way."""
        self.mode = "partition"

    async def close(self) -> None:
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "up":
            return  # partition: accepted, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if self.mode == "up":
                    sink.write(data)
            if self.mode == "up":  # an end passes on only while the network is there
                sink.transport.abort()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[Proxy]:
    target = make_url(postgres_url)
    p = Proxy(target.host or "127.0.0.1", target.port or 5432)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


class Electors:
    """Runs electors as tasks; whatever is still running at the end is cancelled."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, elector: Leadership, consumer: Callable[[], Coroutine[Any, Any, None]],
              stop: asyncio.Event | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(elector.run(consumer, stop=stop))
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def electors() -> AsyncIterator[Electors]:
    e = Electors()
    try:
        yield e
    finally:
        await e.close()


async def state_is(elector: Leadership, state: str) -> bool:
    return elector.state == state


# -- without PostgreSQL ---------------------------------------------------------------------------

def test_lock_key_is_a_stable_signed_64_bit_hash_per_consumer() -> None:
    key = lock_key("telegram:123456789")
    assert key == lock_key("telegram:123456789") == 2529257596054534266
    assert -(2 ** 63) <= lock_key("imap:support@imap.example.com/INBOX") < 2 ** 63
    names = [f"imap:user{n}@example.com/INBOX" for n in range(1000)] + ["telegram:1"]
    assert len({lock_key(n) for n in names}) == len(names)


async def test_sqlite_grants_leadership_at_once_without_a_lock(tmp_path: Path,
                                                               electors: Electors) -> None:
    metrics = Metrics()
    runs = Runs()
    elector = Leadership(f"sqlite+aiosqlite:///{tmp_path}/fd.db", "imap:box", metrics=metrics)
    assert not elector.elected and gauge(metrics, "imap:box") == 0
    stop = asyncio.Event()
    task = electors.start(elector, runs.consumer("only"), stop)
    await eventually(lambda: state_is(elector, "leader"), timeout=1)
    assert runs.running() == ["only"] and gauge(metrics, "imap:box") == 1
    assert elector.backend_pid is None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert runs.running() == [] and elector.state == "stopped"
    assert gauge(metrics, "imap:box") == 0


async def test_sqlite_consumer_that_fails_is_started_again(tmp_path: Path, electors: Electors,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    attempts: list[float] = []

    async def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("mailbox exploded")
        await asyncio.Event().wait()

    caplog.set_level(logging.ERROR, logger="frontdesk.daemon.process.leader")
    elector = Leadership(f"sqlite+aiosqlite:///{tmp_path}/fd.db", "imap:box", retry=0.1)
    electors.start(elector, flaky)
    await eventually(lambda: _at_least(attempts, 2), timeout=3)
    assert elector.is_leader and elector.terms == 2
    assert "mailbox exploded" in caplog.text


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_postgresql_away_is_retried_with_backoff_and_never_raises(
        electors: Electors, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = Metrics()
    runs = Runs()
    elector = Leadership(f"postgresql+asyncpg://frontdesk:s3cret-pw@127.0.0.1:{port}/fd",
                         "telegram:1", retry=0.1, retry_max=0.4, metrics=metrics)
    caplog.set_level(logging.WARNING, logger="frontdesk.daemon.process.leader")
    task = electors.start(elector, runs.consumer("never"))
    await eventually(lambda: _logged(caplog, "cannot reach PostgreSQL", 3), timeout=5)
    assert elector.state == "unreachable" and not elector.following
    assert not task.done() and runs.runs == [] and gauge(metrics, "telegram:1") == 0
    assert "s3cret-pw" not in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str, times: int = 1) -> bool:
    return caplog.text.count(text) >= times


def test_config_keys_defaults_and_validation(tmp_path: Path) -> None:
    from pydantic import ValidationError

    defaults = Settings.model_validate({})
    assert defaults.database.leader_heartbeat.total_seconds() == 2
    assert defaults.database.leader_retry.total_seconds() == 2
    with pytest.raises(ValidationError) as error:
        Settings.model_validate({"database": {"leader_heartbeat": "0s", "leader_retry": "2x"}})
    text = str(error.value)
    assert "database.leader_heartbeat" in text and 'at least "1s"' in text
    assert "database.leader_retry" in text and "not a duration" in text
    example = REPO_ROOT / "config" / "frontdesk.example.toml"
    database = tomllib.loads(example.read_text())["database"]
    assert database["leader_heartbeat"] == "2s" and database["leader_retry"] == "2s"


# -- on PostgreSQL -----------------------------------------------------------------------------

async def test_two_electors_one_leads_and_a_killed_connection_hands_over(
        postgres_url: str, electors: Electors) -> None:
    runs = Runs()
    ma, mb = Metrics(), Metrics()
    a = Leadership(postgres_url, "imap:box", metrics=ma, **QUICK)
    b = Leadership(postgres_url, "imap:box", metrics=mb, **QUICK)
    electors.start(a, runs.consumer("a"))
    await eventually(lambda: state_is(a, "leader"), timeout=5)
    electors.start(b, runs.consumer("b"))
    await eventually(lambda: state_is(b, "follower"), timeout=5)
    assert runs.running() == ["a"] and gauge(ma, "imap:box") == 1 and gauge(mb, "imap:box") == 0
    holder = await admin(postgres_url, HOLDER, a.key)
    assert holder == a.backend_pid

    killed = time.monotonic()
    assert await admin(postgres_url, "SELECT pg_terminate_backend($1)", a.backend_pid)
    await eventually(lambda: state_is(b, "leader"), timeout=5)
    took = time.monotonic() - killed
    assert took < 3.5, f"the follower took {took:.1f} s to lead"

    async def b_runs() -> bool:  # its consumer starts a moment after it leads
        return runs.running() == ["b"]
    await eventually(b_runs, timeout=2)
    assert gauge(ma, "imap:box") == 0 and gauge(mb, "imap:box") == 1
    runs.assert_never_two_at_once()
    # The former leader competes again and stands by.
    await eventually(lambda: state_is(a, "follower"), timeout=5)
    assert runs.running() == ["b"] and a.terms == 1 and b.terms == 1


async def test_different_consumers_may_lead_in_different_instances(
        postgres_url: str, electors: Electors) -> None:
    runs = Runs()
    imap_a = Leadership(postgres_url, "imap:box", **QUICK)
    telegram_b = Leadership(postgres_url, "telegram:42", **QUICK)
    electors.start(imap_a, runs.consumer("imap in a"))
    electors.start(telegram_b, runs.consumer("telegram in b"))
    await eventually(lambda: state_is(imap_a, "leader"), timeout=5)
    await eventually(lambda: state_is(telegram_b, "leader"), timeout=5)
    assert sorted(runs.running()) == ["imap in a", "telegram in b"]


async def test_kill_9_of_the_leader_process_hands_over_within_seconds(
        postgres_url: str, electors: Electors) -> None:
    script = (
        "import asyncio, sys\n"
        "from frontdesk.daemon.process.leader import Leadership\n"
        "async def consumer():\n"
        "    print('leading', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(Leadership(sys.argv[1], 'telegram:7', heartbeat=1, retry=1)"
        ".run(consumer))\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, postgres_url, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"leading"
        runs = Runs()
        here = Leadership(postgres_url, "telegram:7", **QUICK)
        electors.start(here, runs.consumer("here"))
        await eventually(lambda: state_is(here, "follower"), timeout=5)
        killed = time.monotonic()
        proc.kill()  # SIGKILL: no cleanup in the leader; its socket closes with the process
        await proc.wait()
        await eventually(lambda: state_is(here, "leader"), timeout=5)
        took = time.monotonic() - killed
        assert took < 3.0, f"took {took:.1f} s"
        assert runs.running() == ["here"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_partitioned_leader_stops_before_another_starts(
        postgres_url: str, proxy: Proxy, electors: Electors,
        caplog: pytest.LogCaptureFixture) -> None:
    """The leader's network goes silent: its heartbeat fails and it stops its consumer within
    about two heartbeats; PostgreSQL ends the silent session (idle_session_timeout) and frees
    the lock only later, so the standby starts after the old consumer stopped."""
    caplog.set_level(logging.INFO, logger="frontdesk.daemon.process.leader")
    runs = Runs()
    a = Leadership(via(postgres_url, proxy.port), "imap:box", **QUICK)
    b = Leadership(postgres_url, "imap:box", **QUICK)
    electors.start(a, runs.consumer("a"))
    await eventually(lambda: state_is(a, "leader"), timeout=5)
    electors.start(b, runs.consumer("b"))
    await eventually(lambda: state_is(b, "follower"), timeout=5)
    silenced = time.monotonic()
    proxy.partition()
    await eventually(lambda: _stopped(runs, "a"), timeout=5)
    a_stopped = time.monotonic() - silenced
    await eventually(lambda: state_is(b, "leader"), timeout=a.idle_session_timeout + 5)
    b_started = time.monotonic() - silenced
    assert a_stopped < 2.5, f"the silenced leader ran on for {a_stopped:.1f} s"
    assert b_started < a.idle_session_timeout + 2.5
    runs.assert_never_two_at_once()
    assert "did not answer the heartbeat" in caplog.text
    assert runs.running() == ["b"] and not a.is_leader


async def _stopped(runs: Runs, who: str) -> bool:
    return any(r[0] == who and r[2] is not None for r in runs.runs)


async def test_postgresql_restart_one_instance_leads_again_afterwards(
        postgres_url: str, proxy: Proxy, electors: Electors) -> None:
    runs = Runs()
    ma, mb = Metrics(), Metrics()
    url = via(postgres_url, proxy.port)
    a = Leadership(url, "telegram:42", metrics=ma, **QUICK)
    b = Leadership(url, "telegram:42", metrics=mb, **QUICK)
    tasks = [electors.start(a, runs.consumer("a"))]
    await eventually(lambda: state_is(a, "leader"), timeout=5)
    tasks.append(electors.start(b, runs.consumer("b")))
    await eventually(lambda: state_is(b, "follower"), timeout=5)

    await proxy.down()
    await eventually(lambda: _stopped(runs, "a"), timeout=2)
    await eventually(lambda: _both(a, b, "unreachable"), timeout=5)
    assert runs.running() == [] and gauge(ma, "telegram:42") == gauge(mb, "telegram:42") == 0
    await asyncio.sleep(1.5)  # the server stays away a while; both keep retrying
    await proxy.start()
    back = time.monotonic()
    await eventually(lambda: _one_leads(a, b), timeout=10)
    assert time.monotonic() - back < 8
    await eventually(lambda: _one_follows(a, b), timeout=10)
    assert len(runs.running()) == 1
    assert gauge(ma, "telegram:42") + gauge(mb, "telegram:42") == 1
    runs.assert_never_two_at_once()
    assert not any(t.done() for t in tasks)


async def _both(a: Leadership, b: Leadership, state: str) -> bool:
    return a.state == b.state == state


async def _one_leads(a: Leadership, b: Leadership) -> bool:
    return [a.is_leader, b.is_leader].count(True) == 1


async def _one_follows(a: Leadership, b: Leadership) -> bool:
    return sorted((a.state, b.state)) == ["follower", "leader"]


async def test_a_failing_consumer_gives_the_lock_to_another_instance(
        postgres_url: str, electors: Electors, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="frontdesk.daemon.process.leader")
    runs = Runs()
    a = Leadership(postgres_url, "imap:box", **QUICK)
    b = Leadership(postgres_url, "imap:box", **QUICK)
    electors.start(a, runs.consumer("a", fail=True))
    await eventually(lambda: _stopped(runs, "a"), timeout=5)
    electors.start(b, runs.consumer("b"))
    await eventually(lambda: state_is(b, "leader"), timeout=5)
    assert runs.running() == ["b"] and "a broke" in caplog.text
    runs.assert_never_two_at_once()


async def test_stop_releases_the_lock_at_once_for_a_leader_and_a_follower(
        postgres_url: str, electors: Electors) -> None:
    runs = Runs()
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = Leadership(postgres_url, "imap:box", **QUICK)
    b = Leadership(postgres_url, "imap:box", **QUICK)

    def returning(who: str, stop: asyncio.Event) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:  # a consumer that watches its owner's stop event
            record = [who, time.monotonic(), None]
            runs.runs.append(record)
            await stop.wait()
            record[2] = time.monotonic()
        return run

    task_a = electors.start(a, returning("a", stop_a), stop_a)
    await eventually(lambda: state_is(a, "leader"), timeout=5)
    task_b = electors.start(b, returning("b", stop_b), stop_b)
    await eventually(lambda: state_is(b, "follower"), timeout=5)
    began = time.monotonic()
    stop_b.set()
    await asyncio.wait_for(task_b, 1)  # a follower stops waiting at once
    stop_a.set()
    await asyncio.wait_for(task_a, 2)
    assert time.monotonic() - began < 2 and a.state == b.state == "stopped"
    assert await admin(postgres_url, HOLDER, a.key) is None


# -- two daemons, one Telegram bot ---------------------------------------------------------------

class Tap:
    """A pass-through in front of the fake Telegram API for one daemon, so a test sees which
    instance called what: (monotonic time, method, offset)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[tuple[float, str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get_updates(self, since: float = 0.0) -> list[tuple[float, str, Any]]:
        return [c for c in self.calls if c[1] == "getUpdates" and c[0] >= since]

    async def __aenter__(self) -> Tap:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner, self.port = await serve(app, shutdown_timeout=0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        method = request.path.rsplit("/", 1)[-1]
        offset: Any = None
        if method == "getUpdates":
            if request.content_type == "application/json":
                params = json.loads(body or b"{}")
            else:
                params = dict(await request.post())
            offset = params.get("offset")
        self.calls.append((time.monotonic(), method, None if offset is None else int(offset)))
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type",)}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                          data=body, headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(),
                                content_type=r.content_type)


def _leader_settings(make_settings: Any, postgres_url: str, api: str) -> Settings:
    settings: Settings = make_settings(
        database_url=postgres_url,
        database={"leader_heartbeat": "1s", "leader_retry": "1s"},
        telegram={"bot_token": BOT_TOKEN, "api_base_url": api, "poll_timeout": "1s"})
    return settings


async def _journaled(d: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(InboundJournal)
                                    .where(InboundJournal.channel == "telegram"))).scalar_one())


async def _customer_messages(d: Any) -> list[str]:
    async with d.store.reader() as s:
        return [m for (m,) in (await s.execute(
            select(Message.text).where(Message.direction == "in").order_by(Message.id))).all()]


async def _offset(d: Any) -> int | None:
    async with d.store.reader() as s:
        return (await s.execute(select(TelegramOffset.next_offset))).scalar()


def _elector(d: Any) -> Leadership:
    [elector] = d.leaders
    return elector


async def _ready_over_http(d: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{d.http.port}/readyz") as r:
        return r.status, await r.json()


async def _ready_200(d: Any) -> bool:
    return (await _ready_over_http(d))[0] == 200


async def _metric_line(d: Any, name: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{d.http.port}/metrics") as r:
        text = await r.text()
    return next(line for line in text.splitlines() if line.startswith(name))


async def _messages_are(d: Any, texts: list[str]) -> bool:
    return sorted(await _customer_messages(d)) == sorted(texts)


@pytest.fixture
async def telegram_pair() -> AsyncIterator[tuple[FakeTelegram, Tap, Tap]]:
    async with FakeTelegram() as fake:
        async with Tap(fake.base_url) as tap_a, Tap(fake.base_url) as tap_b:
            yield fake, tap_a, tap_b


async def _leader_then_follower(postgres_url: str, make_settings: Any, daemon_factory: Any,
                                tap_a: Tap, tap_b: Tap) -> tuple[Any, Any]:
    """Daemon a (polling through tap a) becomes the Telegram leader, then b (tap b) follows."""
    a = await daemon_factory(_leader_settings(make_settings, postgres_url, tap_a.base_url))
    await eventually(lambda: state_is(_elector(a), "leader"), timeout=5)
    b = await daemon_factory(_leader_settings(make_settings, postgres_url, tap_b.base_url))
    await eventually(lambda: state_is(_elector(b), "follower"), timeout=5)
    return a, b


async def test_two_daemons_one_polls_and_the_other_resumes_after_it_stops(
        postgres_url: str, make_settings: Any, daemon_factory: Any,
        telegram_pair: tuple[FakeTelegram, Tap, Tap]) -> None:
    fake, tap_a, tap_b = telegram_pair
    a, b = await _leader_then_follower(postgres_url, make_settings, daemon_factory,
                                       tap_a, tap_b)
    assert _elector(a).name == "telegram:123456789"

    # The standby is healthy: /readyz 200 with the telegram check ok, and its gauge says 0.
    status, body = await _ready_over_http(b)
    assert status == 200 and body["checks"]["telegram"] == "ok"
    await eventually(lambda: _ready_200(a))  # after its first getUpdates
    assert await _metric_line(a, "frontdesk_leader{") == \
        'frontdesk_leader{consumer="telegram:123456789"} 1.0'
    assert await _metric_line(b, "frontdesk_leader{") == \
        'frontdesk_leader{consumer="telegram:123456789"} 0.0'

    texts = [f"question {n}" for n in range(6)]
    first = [await fake.push(fake.message_update(1000 + n, t)) for n, t in enumerate(texts[:3])]
    await eventually(lambda: _messages_are(a, texts[:3]))
    await eventually(lambda: _offset_is(a, first[-1]["update_id"] + 1))
    assert tap_a.get_updates() and not tap_b.get_updates()

    a.request_stop()
    await a.stop()
    saved = await _offset(b)
    assert saved == first[-1]["update_id"] + 1
    for n, t in enumerate(texts[3:], start=3):
        await fake.push(fake.message_update(1000 + n, t))
    await eventually(lambda: state_is(_elector(b), "leader"), timeout=5)
    await eventually(lambda: _messages_are(b, texts))
    assert tap_b.get_updates()[0][2] == saved  # resumed from the stored offset
    assert await _journaled(b) == len(texts)
    assert (await _ready_over_http(b))[0] == 200


async def _offset_is(d: Any, n: int) -> bool:
    return await _offset(d) == n


async def test_killed_lock_connection_moves_polling_without_loss_or_duplicates(
        postgres_url: str, make_settings: Any, daemon_factory: Any,
        telegram_pair: tuple[FakeTelegram, Tap, Tap]) -> None:
    fake, tap_a, tap_b = telegram_pair
    a, b = await _leader_then_follower(postgres_url, make_settings, daemon_factory,
                                       tap_a, tap_b)

    texts = [f"message {n}" for n in range(12)]

    async def customers_write() -> None:  # updates keep coming while the leader changes
        for n, t in enumerate(texts):
            await fake.push(fake.message_update(2000 + n, t))
            await asyncio.sleep(0.25)

    writing = asyncio.create_task(customers_write())
    await eventually(lambda: _journaled_at_least(a, 3))
    killed = time.monotonic()
    assert await admin(postgres_url, "SELECT pg_terminate_backend($1)", _elector(a).backend_pid)
    await eventually(lambda: state_is(_elector(b), "leader"), timeout=5)
    took_over = time.monotonic()
    await writing
    await eventually(lambda: _messages_are(b, texts), timeout=15)
    assert await _journaled(b) == len(texts)  # none stored twice, none lost
    assert took_over - killed < 3.5
    # The former leader stopped polling at once and now stands by, still ready.
    assert not tap_a.get_updates(since=took_over)
    assert tap_b.get_updates(since=took_over)
    await eventually(lambda: state_is(_elector(a), "follower"), timeout=5)
    assert (await _ready_over_http(a))[0] == 200


async def _journaled_at_least(d: Any, n: int) -> bool:
    return await _journaled(d) >= n


# -- two daemons, one IMAP mailbox ---------------------------------------------------------------

async def test_two_daemons_one_reads_the_mailbox_and_the_other_takes_over(
        dovecot: Any, postgres_url: str, make_settings: Any, daemon_factory: Any) -> None:
    from tests.support.imap import imap_settings, raw_mail, reader

    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(3)])

    def settings() -> Settings:
        def quick(**kw: Any) -> Settings:
            s: Settings = make_settings(database={"leader_heartbeat": "1s",
                                                  "leader_retry": "1s"}, **kw)
            return s
        s: Settings = imap_settings(quick, dovecot, box, database_url=postgres_url)
        return s

    a = await daemon_factory(settings())
    await eventually(lambda: state_is(_elector(a), "leader"), timeout=5)
    b = await daemon_factory(settings())
    await eventually(lambda: state_is(_elector(b), "follower"), timeout=5)
    await eventually(lambda: _stored_once(a, 3), timeout=15)
    assert reader(a).sessions == 1 and reader(b).sessions == 0
    assert (await b.readiness())[1]["imap"] == "ok"

    a.request_stop()
    await a.stop()
    box.deliver_many([raw_mail(n) for n in range(3, 5)])
    await eventually(lambda: state_is(_elector(b), "leader"), timeout=5)
    await eventually(lambda: _stored_once(b, 5), timeout=15)
    assert reader(b).sessions == 1 and reader(b)._last_uid == 5  # resumed at the checkpoint


async def _stored_once(d: Any, n: int) -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(func.count()).select_from(InboundJournal))).scalar_one()
        distinct = (await s.execute(select(func.count(func.distinct(
            Message.external_id))).where(Message.direction == "in"))).scalar_one()
    return int(rows) == n and int(distinct) == n

