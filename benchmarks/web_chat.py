#!/usr/bin/env python3
"""The website chat under load (issue 15): open streams, live replies, visitor messages a second.

One ``frontdesk run`` (a fresh SQLite store in a temp dir, or with ``--database-url`` a fresh
PostgreSQL database ``fd_bench_web`` created on that server and dropped afterwards), the website
channel on (``allowed_origins = ["http://shop.test"]``, visitor and address rate limits at
1,000,000 a minute: every visitor here comes from 127.0.0.1), ``http.max_connections`` and
``max_connections_per_client`` raised to 5,000 (or the visitors + 1,000), acknowledgements off,
``daemon.outbox_poll = "1s"`` (the default), its log in the temp dir at level info. Every request
carries ``Origin: http://shop.test`` and ``Authorization: Bearer <43 base64url characters of 32
random bytes>``, as the widget does.

1. **Open streams.** N visitors (``--visitors``, 2,000) each send one message
   (``POST /web/api/messages``, 201 once journaled) from one aiohttp session, 50 at a time; the
   store is polled until every one is a message of a web conversation (that maps each visitor to
   its conversation). The daemon's RSS (``/proc/PID/status`` VmRSS) and open fds
   (``/proc/PID/fd``) are read with no connection open; then 20 streams are opened as a warm-up
   (``GET /web/api/stream`` from one aiohttp session, ``TCPConnector(limit=0)``) and, 2 s later,
   RSS and fds read again; then the other visitors' streams are opened, 100 at a time, a stream
   counting as open when its first event (the visitor's own message, the history) has arrived;
   2 s after the last one, RSS and fds once more. Memory per open stream = (RSS with all N - RSS
   with the warm-up's 20) / (N - 20): what the first stream costs once (code run for the first
   time, the hub starting) is not counted per stream.
2. **Reply latency.** With the N streams held, a replier in a process of its own commits
   ``--rate`` (100) staff replies a second for ``--seconds`` (30), open loop (reply i is due at
   start + i/rate, whatever happened to the earlier ones; up to 8 in flight; one not begun by
   1 s after the last was due is skipped, so the run ends on time), each to the conversation
   of a visitor drawn at random, through ``frontdesk.domain.conversations.add_staff_reply`` on
   the daemon's store, as ``frontdesk reply`` does. Its text carries a run id and a sequence
   number (and the time its transaction began); the replier notes ``time.monotonic()`` right
   after each commit returns. The stream readers (this process) note ``time.monotonic()`` when
   the event is parsed: one clock for the machine on Linux, so latency = arrival - commit
   returned. Reported: p50/p90/p99/max, how many arrived of how many were committed (missing,
   at another visitor's stream, twice), the rate the replier reached (checked: at least 95 % of
   ``--rate``), the daemon's CPU, and this process's event-loop lag (a 10 ms ticker: were the
   readers behind, it would show here). The streams are then closed, and the benchmark waits
   18 s: the daemon notices a visitor has gone only when it next writes to the stream (its
   heartbeat, every 15 s), and the next measurement should not pay for that.
3. **Visitor messages a second.** ``--messages`` (5,000) messages, a new visitor token every
   100, from ``--concurrency`` (50) keep-alive connections spread over ``--clients`` (1) client
   processes (raw asyncio streams, requests pre-encoded, as in ``benchmarks.webhook_ingest``),
   against the daemon and then against a bare aiohttp handler in a process of its own that
   reads the JSON body and answers 201 with the same JSON and nothing else; ``--rounds`` (3)
   alternating rounds, each daemon round followed by a wait until the processor has stored all
   of it (so the next round does not compete with that backlog). Reported: messages/s (201s /
   first connect -> last answer), p50 and p99 per request, the server's and the clients' CPU as
   a share of one core, of the median round (of an even number of rounds, the lower of the
   middle two); its ratio is the verdict, against the target of 0.4.

What dominates reply latency: the replier's commit does not wake the daemon. On SQLite the
reply is found by whichever comes first, the stream hub's own poll of the store (every 1 s while
a stream is open) or the outbox worker's poll (``daemon.outbox_poll``, 1 s), whose delivery of a
web reply wakes the hub: about 0-1 s, half a second on average, plus the hub's read. On
PostgreSQL the outbox insert's NOTIFY wakes the outbox worker at once, its delivery wakes the
hub, and what remains is the daemon's own work. On SQLite the replier, another process, also
competes with the daemon for the store's one write lock (SQLite's busy handler, which sleeps and
retries, no queue), so the rate asked for may not be reached: the table gives the rate reached,
how far behind its schedule the replier fell, and how many replies it skipped for that.

Usage (from the repository root, with the venv's python)::

    python -m benchmarks.web_chat [--visitors 2000] [--seconds 30] [--rate 100]
                                  [--messages 5000] [--concurrency 50] [--clients 1]
                                  [--rounds 3] [--database-url postgresql+asyncpg://...]
                                  [--process-timeout 120] [--keep]

Checks (exit code 1 if one fails): every visitor's message 201 and stored; every stream open
with its history; the daemon's fds back once the streams closed; the replier reached 95 % of
``--rate`` and no reply failed; every committed reply arrived once, at its own visitor's
stream; no stream ended by the server; every visitor message of part 3 answered 201, journaled
and stored; no dead letter; frontdesk >= 0.4 x the bare handler (the median round); SIGTERM ->
exit 0; no traceback in the daemon's log (the notes group its warnings, errors and tracebacks).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    asyncpg_dsn,
    code_version,
    free_port,
    ms,
    start_frontdesk,
    stop_process,
    wait_http,
)

TARGET_RATIO = 0.4
SITE = "http://shop.test"
PAGE = f"{SITE}/pricing"
BENCH_DB = "fd_bench_web"
MESSAGES_PATH = "/web/api/messages"
PER_TOKEN = 100  # part 3: a new visitor token every this many messages
POST_CONCURRENCY = 50  # part 1: visitors sending their first message at once
OPEN_CONCURRENCY = 100  # part 1: streams being opened at once (the listener's backlog is 100)
WARM_UP_STREAMS = 20
FD_SLACK = 30  # fds the daemon may have opened besides the streams (its store's pool grows)
REPLIES_IN_FLIGHT = 8  # part 2: replier transactions at once
LATE_START = 1.0  # part 2: a reply not begun this long after the last one was due is skipped
RATE_SHARE = 0.95  # part 2: the replier must reach this share of --rate
DRAIN = 15.0  # part 2: seconds to wait for the last replies after the replier is done
HEARTBEAT = 15.0  # frontdesk.channels.web.api.VisitorApi.heartbeat
REAP = HEARTBEAT + 3.0
"""After streams close: the daemon's handler of a stream notices that its visitor went away
only when it next writes (the next heartbeat at the latest), so closed streams are waited out
before the next measurement."""
REPLY = re.compile(r"^bench ([0-9a-f]{6})-(\d+) ")
TEXTS = [
    "Hi! Is the blue jacket in size M still in stock?",
    "My order 1234 says delivered but I have nothing, can you check?",
    "Do you ship to Norway, and how long does it take?",
    "Can I change the delivery address of an order I placed an hour ago?",
    "Thanks, that helps a lot.",
]


def new_token() -> str:
    """A visitor token as the widget makes one: 32 random bytes, base64url, 43 characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of sorted ``values``; None if there are none."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# --- the daemon and its store ------------------------------------------------------------------

class PgDatabase:
    """``fd_bench_web`` on the server of ``url`` (dropped first if a failed run left it), made
    through asyncpg connected to the database of ``url``; :meth:`drop` removes it."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self.admin = url
        try:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)',
                                    f'CREATE DATABASE "{BENCH_DB}"'))
        except Exception as exc:  # noqa: BLE001 - any connection or permission problem
            sys.exit(f"cannot create the database {BENCH_DB} with {make_url(url)!r}: {exc}")
        self.url = make_url(url).set(database=BENCH_DB).render_as_string(hide_password=False)

    async def _admin(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(asyncpg_dsn(self.admin), timeout=10)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))


class Daemon:
    """``frontdesk run`` with the website channel on; ``stop`` is idempotent."""

    def __init__(self, tmp: Path, url: str, max_connections: int) -> None:
        self.tmp = tmp
        self.url = url
        self.http_port, smtp_port, relay_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "{url}"
[http]
listen = "127.0.0.1:{self.http_port}"
max_connections = {max_connections}
max_connections_per_client = {max_connections}
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{smtp_port}"
[email.outbound]
host = "127.0.0.1"
port = {relay_port}
starttls = "off"
[web]
enabled = true
allowed_origins = ["{SITE}"]
title = "Example Shop"
visitor_rate_limits = ["1000000/1m"]
address_rate_limits = ["1000000/1m"]
[acknowledgement]
enabled = false
[daemon]
data_dir = "{tmp}/data"
outbox_poll = "1s"
log_level = "info"
""")
        self.log = tmp / "frontdesk.log"
        self.process = start_frontdesk(self.config, self.http_port, self.log)
        self.pid = self.process.pid
        self.exit_code: int | None = None
        self._stopped = False

    def stop(self) -> int | None:
        if not self._stopped:
            self._stopped = True
            self.exit_code = stop_process(self.process, timeout=60)
        return self.exit_code

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise KeyError("VmRSS")

    def cpu(self) -> float:
        return process_cpu(self.pid)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_settings_of(config: Path) -> Any:
    """The daemon's settings from its config file, loaded as the command line loads them."""
    from frontdesk.config.loader import load_settings
    from frontdesk.daemon.process.registry import Settings
    from frontdesk.domain.notices import check_template

    return load_settings(config, Settings, check_template=check_template)


class StoreView:
    """What the benchmark reads from the daemon's store (its own engine; on SQLite a reader
    never holds up the daemon's writers)."""

    def __init__(self, config: Path) -> None:
        from frontdesk.storage.db import Store

        self.store = Store.from_settings(load_settings_of(config).database)

    async def scalar(self, statement: Any) -> int:
        async with self.store.reader() as s:
            return int((await s.execute(statement)).scalar() or 0)

    async def web_messages(self, like: str = "%") -> int:
        from sqlalchemy import func, select

        from frontdesk.storage.models import Message

        return await self.scalar(select(func.count()).select_from(Message).where(
            Message.channel == "web", Message.direction == "in", Message.external_id.like(like)))

    async def journal(self) -> tuple[int, int, int]:
        """(web journal rows, pending, failed): every channel's pending and failed."""
        from sqlalchemy import func, select

        from frontdesk.storage.models import InboundJournal as J

        return (await self.scalar(select(func.count()).select_from(J).where(J.channel == "web")),
                await self.scalar(select(func.count()).select_from(J)
                                  .where(J.state == "pending")),
                await self.scalar(select(func.count()).select_from(J)
                                  .where(J.state == "failed")))

    async def conversations_of(self, run: str) -> dict[str, int]:
        """client_id -> conversation id of the web messages of part 1."""
        from sqlalchemy import select

        from frontdesk.storage.models import Message

        async with self.store.reader() as s:
            rows = (await s.execute(select(Message.external_id, Message.conversation_id).where(
                Message.channel == "web", Message.direction == "in",
                Message.external_id.like(f"%:open-{run}-%")))).all()
        return {str(external).split(":", 1)[1]: conversation for external, conversation in rows}

    async def wait_processed(self, expected: int, like: str, timeout: float) -> float | None:
        """Seconds until ``expected`` web messages matching ``like`` are stored and the journal
        has no pending row; None if not within ``timeout``."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if await self.web_messages(like) >= expected and (await self.journal())[1] == 0:
                return time.monotonic() - began
            await asyncio.sleep(0.2)
        return None

    async def dispose(self) -> None:
        await self.store.dispose()


# --- part 1: visitors, their messages, their streams ---------------------------------------------

@dataclass
class Visitor:
    index: int
    token: str
    client_id: str
    conversation: int | None = None

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Origin": SITE, **extra}


@dataclass
class Stream:
    """One visitor's open ``/web/api/stream``, read by a task of this process."""
    visitor: Visitor
    status: int | None = None
    opened_at: float | None = None  # its first event (the history) arrived
    history_ok: bool = False  # that event was the visitor's own message
    events: int = 0
    pings: int = 0
    ended_by_server: bool = False
    error: str = ""
    task: asyncio.Task[None] | None = None
    first: asyncio.Event = field(default_factory=asyncio.Event)


class Replies:
    """Part 2's arrivals: sequence number -> [(time.monotonic(), visitor index), ...]."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.arrivals: dict[int, list[tuple[float, int]]] = {}
        self.foreign = 0  # a staff message that is none of this run's replies

    def seen(self, text: str, visitor: int) -> None:
        at = time.monotonic()
        match = REPLY.match(text)
        if match is None or match.group(1) != self.run:
            self.foreign += 1
            return
        self.arrivals.setdefault(int(match.group(2)), []).append((at, visitor))


async def read_stream(http: Any, base: str, st: Stream, gate: asyncio.Semaphore,
                      replies: Replies) -> None:
    """Open the stream (holding ``gate`` until its first event) and read it until cancelled or
    the server ends it. Parses Server-Sent Events line by line: ``data:`` lines are kept until
    the blank line that ends the event; ``:`` lines are heartbeats."""
    import aiohttp

    held = True
    await gate.acquire()
    try:
        async with http.get(f"{base}/web/api/stream",
                            headers=st.visitor.headers(Accept="text/event-stream"),
                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60,
                                                          sock_read=None)) as r:
            st.status = r.status
            if r.status != 200:
                st.error = f"HTTP {r.status}"
                return
            data: bytes | None = None
            async for raw in r.content:
                line = raw.rstrip(b"\r\n")
                if not line:
                    if data is None:
                        continue
                    event = json.loads(data)
                    data = None
                    st.events += 1
                    if st.opened_at is None:
                        st.opened_at = time.monotonic()
                        st.history_ok = event.get("client_id") == st.visitor.client_id
                        st.first.set()
                        gate.release()
                        held = False
                    elif event.get("author") == "staff":
                        replies.seen(event.get("text", ""), st.visitor.index)
                elif line.startswith(b":"):
                    st.pings += 1
                elif line.startswith(b"data:"):
                    data = line[5:].lstrip(b" ")
            st.ended_by_server = True
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported per stream
        st.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if held:
            gate.release()
        st.first.set()


async def open_streams(http: Any, base: str, visitors: list[Visitor],
                       replies: Replies, timeout: float) -> tuple[list[Stream], float]:
    """Open one stream per visitor; returns them and the seconds until the last first event (or
    until ``timeout``)."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    streams = [Stream(v) for v in visitors]
    began = time.monotonic()
    for st in streams:
        st.task = asyncio.create_task(read_stream(http, base, st, gate, replies))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(st.first.wait() for st in streams))
    return streams, time.monotonic() - began


async def close_streams(streams: list[Stream]) -> None:
    tasks = [st.task for st in streams if st.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Part1:
    visitors: int
    post_statuses: Counter[str] = field(default_factory=Counter)
    post_seconds: float = 0.0
    processed_seconds: float | None = None  # last 201 -> every message stored
    mapped: int = 0
    open_seconds: float = 0.0
    opened: int = 0
    history_ok: int = 0
    open_errors: Counter[str] = field(default_factory=Counter)
    rss_none_kb: int = 0  # no stream open
    fds_none: int = 0
    rss_before_kb: int = 0  # the warm-up's streams open
    fds_before: int = 0
    rss_open_kb: int = 0
    fds_open: int = 0
    counted: int = 0  # streams opened after the warm-up's
    cpu_opening: float = 0.0  # daemon CPU seconds while they were opened
    rss_closed_kb: int = 0
    fds_closed: int = 0


async def send_first_messages(http: Any, base: str, visitors: list[Visitor],
                              result: Part1) -> None:
    """Every visitor's first message, ``POST_CONCURRENCY`` at a time."""
    gate = asyncio.Semaphore(POST_CONCURRENCY)

    async def one(v: Visitor) -> None:
        body = {"client_id": v.client_id, "text": TEXTS[v.index % len(TEXTS)], "page": PAGE}
        async with gate:
            try:
                async with http.post(f"{base}{MESSAGES_PATH}", json=body,
                                     headers=v.headers()) as r:
                    await r.read()
                    result.post_statuses[str(r.status)] += 1
            except Exception as exc:  # noqa: BLE001 - counted, reported
                result.post_statuses[type(exc).__name__] += 1

    began = time.monotonic()
    await asyncio.gather(*(one(v) for v in visitors))
    result.post_seconds = time.monotonic() - began


# --- part 2: the replier (a process of its own) and the latency ---------------------------------

def replier_main(config: str, conversations_file: str, rate: float, seconds: float,
                 run: str) -> None:
    """Commit ``rate`` x ``seconds`` staff replies, open loop, after "go" on stdin; print one
    JSON object: every commit (seq, conversation, began, committed, due), errors, timing."""
    asyncio.run(_replier(Path(config), json.loads(Path(conversations_file).read_text()),
                         rate, seconds, run))


async def _replier(config: Path, conversations: list[int], rate: float, seconds: float,
                   run: str) -> None:
    from sqlalchemy import text

    from frontdesk.daemon.process.registry import reply_composer
    from frontdesk.domain.conversations import add_staff_reply, get_conversation
    from frontdesk.storage.db import Store

    settings = load_settings_of(config)
    store = Store.from_settings(settings.database)
    composer = reply_composer(settings)
    pick = random.Random(run).choice
    async with store.reader() as s:  # the engine connects before the clock starts
        await s.execute(text("SELECT 1"))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    total = max(1, round(rate * seconds))
    gate = asyncio.Semaphore(REPLIES_IN_FLIGHT)
    committed: list[tuple[int, int, float, float, float]] = []
    errors: Counter[str] = Counter()
    skipped = 0
    start = deadline = 0.0

    async def reply(seq: int, conversation: int, due: float) -> None:
        nonlocal skipped
        async with gate:
            began = time.monotonic()
            if began > deadline:  # fell this far behind: the run ends on time all the same
                skipped += 1
                return
            try:
                async with store.session() as s:
                    c = await get_conversation(s, conversation)
                    await add_staff_reply(s, c, f"bench {run}-{seq} t={began:.6f}",
                                          author="Bench", replies=composer,
                                          now=datetime.now(UTC))
                committed.append((seq, conversation, began, time.monotonic(), due))
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors[f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"] += 1

    cpu0 = time.process_time()
    start = time.monotonic()
    deadline = start + seconds + LATE_START
    tasks = []
    for seq in range(total):
        due = start + seq / rate
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(reply(seq, pick(conversations), due)))
    await asyncio.gather(*tasks)
    end = time.monotonic()
    await store.dispose()
    print(json.dumps({"start": start, "end": end, "total": total, "committed": committed,
                      "skipped": skipped, "errors": dict(errors),
                      "cpu": time.process_time() - cpu0}))


@dataclass
class Part2:
    rate: float
    seconds: float
    total: int = 0
    committed: int = 0
    skipped: int = 0  # not begun by LATE_START after the last was due
    commit_rate: float = 0.0
    replier_errors: dict[str, int] = field(default_factory=dict)
    replier_cpu: float = 0.0
    window: float = 0.0
    commit_time: list[float] = field(default_factory=list)  # transaction began -> returned
    behind: list[float] = field(default_factory=list)  # due -> transaction began
    latencies: list[float] = field(default_factory=list)  # commit returned -> arrival, sorted
    missing: int = 0
    misrouted: int = 0
    repeated: int = 0
    foreign: int = 0
    drain_seconds: float = 0.0  # replier done -> last arrival (or the drain limit)
    daemon_cpu: float = 0.0
    daemon_cpu_per_s: float = 0.0
    receiver_cpu_per_s: float = 0.0
    lag: list[float] = field(default_factory=list)
    streams_lost: int = 0
    rss_end_kb: int = 0
    fds_end: int = 0


async def measure_latency(daemon: Daemon, tmp: Path, streams: list[Stream], replies: Replies,
                          rate: float, seconds: float) -> Part2:
    result = Part2(rate=rate, seconds=seconds)
    by_visitor = {st.visitor.index: st.visitor.conversation for st in streams}
    targets = sorted({st.visitor.conversation for st in streams
                      if st.opened_at is not None and st.visitor.conversation is not None})
    conversations_file = tmp / "conversations.json"
    conversations_file.write_text(json.dumps(targets))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.web_chat", "--replier", str(daemon.config),
        "--conversations-file", str(conversations_file), "--rate", str(rate),
        "--seconds", str(seconds), "--run", replies.run,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            ready = await proc.stdout.readline()
    except TimeoutError:
        ready = b""
    if ready != b"ready\n":
        proc.kill()
        await proc.wait()
        raise SystemExit(f"the replier did not start (said {ready!r})")

    lag: list[float] = []
    halt = asyncio.Event()

    async def ticker() -> None:
        while not halt.is_set():
            began = time.monotonic()
            await asyncio.sleep(0.01)
            lag.append(time.monotonic() - began - 0.01)

    tick = asyncio.create_task(ticker())
    cpu0, own0, t0 = daemon.cpu(), time.process_time(), time.monotonic()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        halt.set()
        await tick
        raise SystemExit(f"the replier failed (exit {proc.returncode})")
    report = json.loads(out)
    done = {c[0] for c in report["committed"]}
    replier_end = time.monotonic()
    while time.monotonic() - replier_end < DRAIN and not done <= replies.arrivals.keys():
        await asyncio.sleep(0.05)
    last_commit = max((c[3] for c in report["committed"]), default=replier_end)
    arrived_last = max((t for seq in done for t, _ in replies.arrivals.get(seq, ())),
                       default=last_commit)
    result.drain_seconds = max(0.0, arrived_last - last_commit)
    t1, cpu1, own1 = time.monotonic(), daemon.cpu(), time.process_time()
    halt.set()
    await tick
    result.window = t1 - t0
    result.daemon_cpu = cpu1 - cpu0
    result.daemon_cpu_per_s = result.daemon_cpu / result.window
    result.receiver_cpu_per_s = (own1 - own0) / result.window
    result.lag = sorted(lag)
    result.total = report["total"]
    result.committed = len(report["committed"])
    result.skipped = report["skipped"]
    result.replier_errors = report["errors"]
    result.replier_cpu = report["cpu"]
    span = report["end"] - report["start"]
    result.commit_rate = result.committed / span if span > 0 else 0.0
    result.commit_time = sorted(c[3] - c[2] for c in report["committed"])
    result.behind = sorted(max(0.0, c[2] - c[4]) for c in report["committed"])
    latencies = []
    for seq, conversation, _began, committed_at, _due in report["committed"]:
        got = replies.arrivals.get(seq)
        if not got:
            result.missing += 1
            continue
        mine = [t for t, visitor in got if by_visitor.get(visitor) == conversation]
        result.misrouted += sum(1 for _, visitor in got
                                if by_visitor.get(visitor) != conversation)
        if not mine:
            result.missing += 1
            continue
        result.repeated += len(mine) - 1
        latencies.append(min(mine) - committed_at)
    result.latencies = sorted(latencies)
    result.foreign = replies.foreign
    result.streams_lost = sum(1 for st in streams if st.ended_by_server or st.error)
    result.rss_end_kb = daemon.rss_kb()
    result.fds_end = daemon.fds()
    return result


# --- part 3: visitor messages a second, against a bare handler --------------------------------

def message_requests(n: int, port: int, run: str) -> list[bytes]:
    """N complete HTTP/1.1 requests (keep-alive) of the widget's ``POST /web/api/messages``,
    a new visitor token every ``PER_TOKEN``."""
    tokens = [new_token() for _ in range((n + PER_TOKEN - 1) // PER_TOKEN)]
    out = []
    for i in range(n):
        body = json.dumps({"client_id": f"rate-{run}-{i:07d}", "text": TEXTS[i % len(TEXTS)],
                           "page": PAGE}).encode()
        head = (f"POST {MESSAGES_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Origin: {SITE}\r\nAuthorization: Bearer {tokens[i // PER_TOKEN]}\r\n"
                "Content-Type: application/json\r\nAccept-Language: en-GB,en;q=0.8\r\n"
                "User-Agent: Mozilla/5.0 (benchmark)\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


def bare_main(port: int) -> None:
    from aiohttp import web

    async def message(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"client_id": data.get("client_id"), "state": "sent"},
                                 status=201)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(MESSAGES_PATH, message)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class Round:
    name: str
    n: int
    elapsed: float
    latencies: list[float]
    statuses: dict[str, int]
    server_cpu: float  # seconds
    client_cpu: float  # seconds, all client processes
    journaled: int | None = None  # daemon: web journal rows added
    processed_seconds: float | None = None  # daemon: last answer -> all stored
    processing_cpu: float = 0.0  # daemon: CPU seconds meanwhile

    @property
    def rate(self) -> float:
        return self.n / self.elapsed if self.elapsed > 0 else 0.0


async def _connection(port: int, queue: list[bytes], latencies: list[float],
                      statuses: Counter[str]) -> None:
    """One keep-alive connection sending requests from ``queue`` one after the other."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while queue:
            request = queue.pop()
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            statuses[head.split(b" ", 2)[1].decode()] += 1
    finally:
        writer.close()


def client_main(port: int, connections: int, requests_file: str) -> None:
    """A client process: its share of the requests over ``connections`` connections; prints
    its start and end (time.monotonic()), latencies, answers and CPU seconds as JSON."""
    queue = [r.encode("latin-1") for r in reversed(json.loads(Path(requests_file).read_text()))]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def run() -> None:
        await asyncio.gather(*(_connection(port, queue, latencies, statuses)
                               for _ in range(connections)))

    cpu0, start = time.process_time(), time.monotonic()
    asyncio.run(run())
    end, cpu = time.monotonic(), time.process_time() - cpu0
    print(json.dumps({"start": start, "end": end, "latencies": latencies,
                      "statuses": statuses, "cpu": cpu}))


def _load(port: int, requests: list[bytes], concurrency: int, clients: int, tmp: Path,
          server_cpu: Any) -> tuple[dict[str, Any], float]:
    """Send ``requests`` from ``clients`` processes with ``concurrency`` connections in all;
    wall time is first start to last finish. Returns the figures and the server's CPU seconds
    meanwhile."""
    per = [concurrency // clients + (1 if i < concurrency % clients else 0)
           for i in range(clients)]
    procs = []
    for i in range(clients):
        path = tmp / f"requests-{i}.json"
        path.write_text(json.dumps([r.decode("latin-1") for r in requests[i::clients]]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.web_chat", "--client", "--port", str(port),
             "--concurrency", str(max(1, per[i])), "--requests-file", str(path)],
            stdout=subprocess.PIPE, text=True))
    cpu0 = server_cpu()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"a client process failed (exit {proc.returncode})")
        results.append(json.loads(out))
    server = server_cpu() - cpu0
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    return {"elapsed": max(r["end"] for r in results) - min(r["start"] for r in results),
            "latencies": sorted(x for r in results for x in r["latencies"]),
            "statuses": dict(statuses), "client_cpu": sum(r["cpu"] for r in results)}, server


async def daemon_round(daemon: Daemon, view: StoreView, n: int, concurrency: int, clients: int,
                       tmp: Path, process_timeout: float) -> Round:
    run = secrets.token_hex(3)
    requests = message_requests(n, daemon.http_port, run)
    before = (await view.journal())[0]
    sent, server = await asyncio.to_thread(_load, daemon.http_port, requests, concurrency,
                                           clients, tmp, daemon.cpu)
    journaled = (await view.journal())[0] - before
    cpu0 = daemon.cpu()
    processed = await view.wait_processed(n, f"%:rate-{run}-%", process_timeout)
    ours = Round("frontdesk (journal commit)", n, sent["elapsed"], sent["latencies"],
                 sent["statuses"], server, sent["client_cpu"], journaled, processed)
    ours.processing_cpu = daemon.cpu() - cpu0
    return ours


def bare_round(n: int, concurrency: int, clients: int, tmp: Path) -> Round:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.web_chat", "--bare",
                             "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        sent, server = _load(port, message_requests(n, port, secrets.token_hex(3)),
                             concurrency, clients, tmp, lambda: process_cpu(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return Round("bare aiohttp handler (no storage)", n, sent["elapsed"], sent["latencies"],
                 sent["statuses"], server, sent["client_cpu"])


# --- the run -----------------------------------------------------------------------------------

@dataclass
class Results:
    part1: Part1
    part2: Part2 | None = None
    rounds: list[tuple[Round, Round]] = field(default_factory=list)
    journal: tuple[int, int, int] | None = None  # at the end: web rows, pending, failed
    notes: list[str] = field(default_factory=list)


async def run(daemon: Daemon, tmp: Path, args: argparse.Namespace) -> Results:
    import aiohttp

    view = StoreView(daemon.config)
    run_id = secrets.token_hex(3)
    visitors = [Visitor(i, new_token(), f"open-{run_id}-{i:06d}") for i in range(args.visitors)]
    p1 = Part1(visitors=args.visitors)
    results = Results(p1)
    try:
        print(f"1. {args.visitors:,} visitors send their first message ...", flush=True)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POST_CONCURRENCY)) as http:
            await send_first_messages(http, daemon.base, visitors, p1)
        p1.processed_seconds = await view.wait_processed(
            args.visitors, f"%:open-{run_id}-%", args.process_timeout)
        mapping = await view.conversations_of(run_id)
        for v in visitors:
            v.conversation = mapping.get(v.client_id)
        p1.mapped = sum(1 for v in visitors if v.conversation is not None)
        connected = [v for v in visitors if v.conversation is not None]
        replies = Replies(run_id)
        print(f"   {p1.mapped:,} stored; opening {len(connected):,} streams ...", flush=True)
        await asyncio.sleep(1.0)  # the daemon sees the first messages' connections close
        p1.rss_none_kb, p1.fds_none = daemon.rss_kb(), daemon.fds()
        streams: list[Stream] = []
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            try:
                # The first streams are opened apart, and stay open: what the first stream
                # costs once (code paths run for the first time, the hub starting) is not
                # counted per stream.
                streams, _ = await open_streams(http, daemon.base, connected[:WARM_UP_STREAMS],
                                                replies, timeout=60)
                await asyncio.sleep(2.0)
                p1.rss_before_kb, p1.fds_before = daemon.rss_kb(), daemon.fds()
                cpu0 = daemon.cpu()
                more, p1.open_seconds = await open_streams(
                    http, daemon.base, connected[WARM_UP_STREAMS:], replies,
                    timeout=60 + len(connected) / 20)
                p1.cpu_opening = daemon.cpu() - cpu0
                p1.counted = sum(1 for st in more if st.opened_at is not None)
                streams += more
                opened = [st for st in streams if st.opened_at is not None]
                p1.opened = len(opened)
                p1.history_ok = sum(1 for st in opened if st.history_ok)
                p1.open_errors = Counter(st.error or f"HTTP {st.status}" for st in streams
                                         if st.opened_at is None)
                await asyncio.sleep(2.0)
                p1.rss_open_kb, p1.fds_open = daemon.rss_kb(), daemon.fds()
                print(f"   {p1.opened:,} streams open; 2. {args.rate:g} replies/s for "
                      f"{args.seconds:g} s ...", flush=True)
                if opened:
                    results.part2 = await measure_latency(daemon, tmp, opened, replies,
                                                          args.rate, args.seconds)
            finally:
                await close_streams(streams)
        print(f"   streams closed; waiting {REAP:.0f} s for the daemon to end them ...",
              flush=True)
        await asyncio.sleep(REAP)
        p1.rss_closed_kb, p1.fds_closed = daemon.rss_kb(), daemon.fds()
        print(f"3. {args.messages:,} visitor messages, {args.concurrency} connections, "
              f"{args.rounds} round(s) against frontdesk and a bare handler ...", flush=True)
        for i in range(args.rounds):
            ours = await daemon_round(daemon, view, args.messages, args.concurrency,
                                      args.clients, tmp, args.process_timeout)
            bare = await asyncio.to_thread(bare_round, args.messages, args.concurrency,
                                           args.clients, tmp)
            results.rounds.append((ours, bare))
            print(f"   round {i + 1}: frontdesk {ours.rate:,.0f}/s, bare {bare.rate:,.0f}/s, "
                  f"ratio {ours.rate / bare.rate:.2f}"
                  + ("" if ours.processed_seconds is not None else
                     f" (NOT all stored within {args.process_timeout:g} s)"), flush=True)
        results.journal = await view.journal()
    finally:
        await view.dispose()
    return results


# --- the report --------------------------------------------------------------------------------

def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB"


def _cpu(seconds: float, window: float) -> str:
    return f"{100 * seconds / window:.0f} %" if window > 0 else "-"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" if header[i] in NUMERIC else "---"
                         for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


NUMERIC = {"msgs/s", "p50", "p99", "server CPU", "client CPU", "ratio"}


def report(results: Results, args: argparse.Namespace, checks: list[tuple[str, bool]]) -> None:
    def mark(name: str, ok: bool) -> str:
        checks.append((name, ok))
        return "ok" if ok else "FAILED"

    p1 = results.part1
    n = p1.visitors
    created = p1.post_statuses.get("201", 0)
    per_stream = ((p1.rss_open_kb - p1.rss_before_kb) / p1.counted) if p1.counted else 0.0
    print(f"\n### 1. {n:,} visitors, one stream each, on one instance\n")
    table(("measurement", "value", "check"), [
        ("first messages answered 201", f"{created:,} of {n:,} in {p1.post_seconds:.1f} s"
         + ("" if created == n else f" ({dict(p1.post_statuses)})"),
         mark("every first message 201", created == n)),
        ("stored as web conversations (after the last answer)",
         f"{p1.mapped:,} of {n:,}"
         + (f" in {p1.processed_seconds:.1f} s" if p1.processed_seconds is not None else
            f", not all within {args.process_timeout:g} s"),
         mark("every first message stored", p1.mapped == n)),
        ("streams open (their history event arrived)",
         f"{p1.opened:,} of {p1.mapped:,}, all open in {p1.open_seconds:.1f} s, "
         f"{OPEN_CONCURRENCY} opening at a time"
         + (f"; not open: {dict(p1.open_errors)}" if p1.open_errors else ""),
         mark("every stream open with its history",
              p1.opened == p1.mapped == n and p1.history_ok == p1.opened)),
        (f"daemon RSS: no stream / {WARM_UP_STREAMS} / {p1.opened:,} streams open / all closed",
         f"{_mb(p1.rss_none_kb)} / {_mb(p1.rss_before_kb)} / {_mb(p1.rss_open_kb)} / "
         f"{_mb(p1.rss_closed_kb)}", "-"),
        (f"**memory per open stream** (RSS {p1.opened:,} - {WARM_UP_STREAMS} streams, "
         f"/ {p1.counted:,})", f"**{per_stream:,.1f} KB**", "-"),
        (f"daemon open fds: no stream / {WARM_UP_STREAMS} / {p1.opened:,} streams open / "
         "all closed", f"{p1.fds_none:,} / {p1.fds_before:,} / {p1.fds_open:,} / "
         f"{p1.fds_closed:,}",
         mark("fds back after the streams closed", p1.fds_closed <= p1.fds_none + FD_SLACK)),
        (f"daemon CPU while {p1.counted:,} streams opened",
         f"{p1.cpu_opening:.1f} s ({1000 * p1.cpu_opening / max(1, p1.counted):.1f} ms a stream)",
         "-"),
    ])
    p2 = results.part2
    if p2 is not None:
        lat = p2.latencies
        arrived = len(lat)
        print(f"\n### 2. Staff reply commit -> its event in the visitor's stream, "
              f"{p2.rate:g} replies/s for {p2.seconds:g} s over {p1.opened:,} open streams\n")
        errors = sum(p2.replier_errors.values())
        table(("measurement", "value", "check"), [
            ("replies committed (replier: 1 process, add_staff_reply, "
             f"{REPLIES_IN_FLIGHT} in flight)",
             f"{p2.committed:,} of {p2.total:,} due, at {p2.commit_rate:.1f}/s"
             + (f"; {p2.skipped:,} not begun {LATE_START:g} s after the last was due (the "
                "replier fell behind)" if p2.skipped else "")
             + (f"; {errors} failed: {p2.replier_errors}" if errors else ""),
             mark(f"rate reached (>= {RATE_SHARE:.0%} of {p2.rate:g}/s), no reply failed",
                  p2.commit_rate >= RATE_SHARE * p2.rate and not p2.skipped and not errors)),
            ("replier: transaction p50 / p99; start behind schedule p99",
             f"{ms(pct(p2.commit_time, 0.5))} / {ms(pct(p2.commit_time, 0.99))}; "
             f"{ms(pct(p2.behind, 0.99))}", "-"),
            ("arrived at their visitor's stream",
             f"{arrived:,} of {p2.committed:,} (missing {p2.missing}, to another visitor "
             f"{p2.misrouted}, twice {p2.repeated})",
             mark("every reply arrived once, at its visitor",
                  p2.missing == 0 and p2.misrouted == 0 and p2.repeated == 0)),
            ("**commit -> arrival p50 / p90 / p99 / max**",
             f"**{ms(pct(lat, 0.5))} / {ms(pct(lat, 0.9))} / {ms(pct(lat, 0.99))} / "
             f"{ms(lat[-1] if lat else None)}**", "-"),
            ("last commit -> last arrival", ms(p2.drain_seconds), "-"),
            ("streams the server ended or that failed during the run", f"{p2.streams_lost:,}",
             mark("no stream lost", p2.streams_lost == 0)),
            ("daemon CPU over the window (share of one core)",
             f"{_cpu(p2.daemon_cpu, p2.window)} ({p2.window:.1f} s)", "-"),
            ("daemon RSS / fds at the end", f"{_mb(p2.rss_end_kb)} / {p2.fds_end:,}", "-"),
            ("replier CPU / this process's CPU (the readers)",
             f"{_cpu(p2.replier_cpu, p2.window)} / {100 * p2.receiver_cpu_per_s:.0f} %", "-"),
            ("readers' event-loop lag p99 / max (10 ms ticker)",
             f"{ms(pct(p2.lag, 0.99))} / {ms(p2.lag[-1] if p2.lag else None)}", "-"),
        ])
    if results.rounds:
        pairs = results.rounds
        # the median round (of an even number, the lower of the middle two): its figures
        # are the table's, its ratio the verdict
        ours, bare = sorted(pairs, key=lambda p: p[0].rate / p[1].rate)[(len(pairs) - 1) // 2]
        ratio = ours.rate / bare.rate
        median = f", the median round of {len(pairs)}" if len(pairs) > 1 else ""
        print(f"\n### 3. Visitor messages (POST /web/api/messages -> 201), {args.messages:,} "
              f"per round, {args.concurrency} connections, {args.clients} client "
              f"process(es){median}\n")
        rows: list[tuple[str, ...]] = []
        for r in (ours, bare):
            rows.append((r.name, f"{r.rate:,.0f}", ms(pct(r.latencies, 0.5)),
                         ms(pct(r.latencies, 0.99)),
                         _cpu(r.server_cpu, r.elapsed), _cpu(r.client_cpu, r.elapsed),
                         f"{ratio:.2f}" if r is ours else "1"))
        table(("server", "msgs/s", "p50", "p99", "server CPU", "client CPU", "ratio"), rows)
        if len(pairs) > 1:
            print(f"\nrounds: frontdesk {', '.join(f'{o.rate:,.0f}' for o, _ in pairs)} msgs/s; "
                  f"bare {', '.join(f'{b.rate:,.0f}' for _, b in pairs)}; ratios "
                  f"{', '.join(f'{o.rate / b.rate:.2f}' for o, b in pairs)}")
        answered = all(o.statuses == {"201": o.n} and b.statuses == {"201": b.n}
                       for o, b in pairs)
        if not answered:
            results.notes.append("answers: " + "; ".join(
                f"frontdesk {o.statuses}, bare {b.statuses}" for o, b in pairs))
        mark("every visitor message answered 201", answered)
        mark("every visitor message journaled and stored",
             all(o.journaled == o.n and o.processed_seconds is not None for o, _ in pairs))
        processed = [o for o, _ in pairs if o.processed_seconds]
        if processed:
            results.notes.append(
                "part 3: last 201 -> every message of the round stored (the processor, after "
                "the send): " + ", ".join(
                    f"{o.processed_seconds:.1f} s ({o.n / (o.processed_seconds or 1):,.0f} "
                    f"msgs/s, daemon CPU {_cpu(o.processing_cpu, o.processed_seconds or 1)})"
                    for o in processed))
        verdict = mark(f"frontdesk >= {TARGET_RATIO} x bare", ratio >= TARGET_RATIO)
        which = " (the median round)" if len(pairs) > 1 else ""
        print(f"\nratio frontdesk / bare = {ratio:.2f}{which}: "
              f"{'meets' if verdict == 'ok' else 'MISSES'} the target of {TARGET_RATIO}")
    if results.journal is not None:
        web_rows, pending, failed = results.journal
        print(f"the journal at the end: {web_rows:,} web rows, {pending:,} pending, {failed:,} "
              "failed (dead letters)")
        mark("no dead letter", failed == 0)


RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) (\S+) (.*)$")
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Reset|Timeout\w*)\b.*$")


def log_summary(log: Path) -> tuple[list[str], int]:
    """Notes on the daemon's log: its warnings and errors grouped (digits as N), and each
    traceback by the exception it ended in and the last frontdesk line it passed through;
    and the number of tracebacks."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    loud: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    tracebacks = 0
    end = where = ""

    def close() -> None:
        nonlocal end, where
        if end:
            ends[f"{end[:110]} (at {where or '-'})"] += 1
        end = where = ""

    for line in lines:
        record = RECORD.match(line)
        if record:
            close()
            level, logger, text = record.groups()
            logger = logger.rstrip(":")
            if level in ("WARNING", "ERROR", "CRITICAL"):
                loud[f"{level} {logger}: {re.sub(r'[0-9]+', 'N', text)[:140]}"] += 1
        elif line.startswith("Traceback"):
            if not end and not where:
                tracebacks += 1
        elif line.startswith('  File "') and "/frontdesk/" in line \
                and "site-packages" not in line:
            path, _, rest = line.strip()[6:].partition('", ')
            where = f"{'/'.join(path.split('/')[-2:])} {rest}"
        elif EXCEPTION.match(line):
            end = line
    close()
    notes = [f"the daemon's log: {len(lines):,} lines, {sum(loud.values()):,} warnings or "
             f"errors, {tracebacks:,} tracebacks"]
    notes += [f"  {count:,} x {text}" for text, count in loud.most_common(8)]
    notes += [f"  {count:,} tracebacks end in {text}" for text, count in ends.most_common(6)]
    return notes, tracebacks


def raise_own_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        sys.exit(f"this process may open {soft} files; {needed} are needed "
                 "(raise ulimit -n, or use fewer --visitors)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visitors", type=int, default=2000, help="visitors with a stream open (2000)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of replies (30)")
    p.add_argument("--rate", type=float, default=100.0, help="staff replies a second (100)")
    p.add_argument("--messages", type=int, default=5000,
                   help="visitor messages per server and round (5000)")
    p.add_argument("--concurrency", type=int, default=50,
                   help="concurrent connections sending visitor messages (50)")
    p.add_argument("--clients", type=int, default=1,
                   help="client processes sending visitor messages (1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating frontdesk/bare rounds; the verdict is the median round's "
                        "ratio, the lower middle one of an even number (3)")
    p.add_argument("--database-url", metavar="URL",
                   help="postgresql+asyncpg://user@host/db: run on a fresh database "
                        f"{BENCH_DB} on that server (created, dropped); default SQLite")
    p.add_argument("--process-timeout", type=float, default=120.0,
                   help="seconds to wait for visitor messages to be stored (120)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, log, store)")
    p.add_argument("--replier", metavar="CONFIG", help=argparse.SUPPRESS)
    p.add_argument("--conversations-file", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--requests-file", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.replier:
        replier_main(args.replier, args.conversations_file, args.rate, args.seconds, args.run)
        return 0
    if args.bare:
        bare_main(args.port)
        return 0
    if args.client:
        client_main(args.port, args.concurrency, args.requests_file)
        return 0
    if args.visitors < WARM_UP_STREAMS or args.rate <= 0 or args.seconds <= 0 \
            or args.messages < 1 or args.concurrency < 1 or args.rounds < 1 or args.clients < 1:
        p.error(f"--visitors >= {WARM_UP_STREAMS}; --rate, --seconds, --messages, --concurrency, "
                "--clients, --rounds > 0")
    if args.database_url and not args.database_url.startswith("postgresql+asyncpg://"):
        p.error("--database-url must look like postgresql+asyncpg://user@host/db")
    raise_own_file_limit(args.visitors + args.concurrency + 200)
    started = time.monotonic()
    store_name = "PostgreSQL" if args.database_url else "SQLite"
    print(f"frontdesk's website chat under load (issue 15): one daemon, {store_name}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{os.uname().sysname} {os.uname().release}; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"code: {code_version()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="frontdesk-web-bench-"))
    database: PgDatabase | None = None
    daemon: Daemon | None = None
    checks: list[tuple[str, bool]] = []
    notes: list[str] = []
    results: Results | None = None
    try:
        if args.database_url:
            database = PgDatabase(args.database_url)
            url = database.url
        else:
            url = f"sqlite+aiosqlite:///{tmp}/frontdesk.db"
        daemon = Daemon(tmp, url, max(5000, args.visitors + 1000))
        print(f"daemon pid {daemon.pid}: HTTP {daemon.base}", flush=True)
        results = asyncio.run(run(daemon, tmp, args))
        report(results, args, checks)
        notes += results.notes
        code = daemon.stop()
        checks.append(("SIGTERM -> exit 0", code == 0))
        if code != 0:
            notes.append(f"frontdesk exit code {code} after SIGTERM (want 0)")
        notes.append("load average at the end (1, 5, 15 min; this run's own processes "
                     "included): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        log_notes, tracebacks = log_summary(daemon.log)
        notes += log_notes
        checks.append(("no traceback in the daemon's log", tracebacks == 0))
    finally:
        if daemon is not None:
            daemon.stop()
        if database is not None:
            try:
                database.drop()
            except Exception as exc:  # noqa: BLE001 - said, not hidden
                notes.append(f"could not drop the database {BENCH_DB}: {exc}")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    for note in notes:
        print(f"note: {note}")
    failed = [name for name, ok in checks if not ok]
    for name in failed:
        print(f"CHECK FAILED: {name}")
    print(f"checks: {'PASS' if not failed else 'FAIL'} ({len(checks) - len(failed)} of "
          f"{len(checks)}); run took {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
