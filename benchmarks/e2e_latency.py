#!/usr/bin/env python3
"""End-to-end: a customer's email accepted (its SMTP 250) -> its Slack root post, in a burst and
at a fixed rate (issue 18).

For each store (SQLite; PostgreSQL when a URL is given) the benchmark runs, each on a fresh
daemon and store:

* a **burst** per workload (``plain-2k``, a ~2 KB plain text mail; ``html-30k``, a ~30 KB
  multipart mail with an HTML body and an ~8 KB PDF attachment; both built by
  ``benchmarks/smtp_ingest.py``): N messages (3000) sent as fast as the daemon takes them, closed
  loop: each of C SMTP sessions (20) sends its next message as soon as the previous one's 250
  arrives;
* an **open-loop** level per offered rate (100 messages a second for 20 s by default): message i
  is due at start + i/rate whatever happened to the earlier ones.

Each level

1. starts a "remote" process holding the loopback Slack fake (``tests/fakes/slack.py``, the real
   slack_sdk client is pointed at it with ``slack.api_base_url``) and an SMTP sink as the outbound
   relay (``tests/smtp_sink.py``; it takes the acknowledgements);
2. starts ``frontdesk run`` as a subprocess on a fresh store (a temp SQLite file, or a fresh
   PostgreSQL database that is dropped afterwards), with the Slack desk configured against the
   fake, and waits for ``GET /readyz`` == 200 (``--instances 2`` on PostgreSQL starts two
   processes on one database, the client's sessions split between them);
3. sends customer emails over SMTP from a separate client process; each comes from a new
   customer, so each opens a conversation, gets an acknowledgement and a root post. The moment
   its ``250`` reply is read is "accepted";
4. polls the store read-only every 100 ms (conversations, and acknowledgements queued: rows of
   ``acknowledgements``, written with the acknowledgement's message and its outbox row) and the
   fake; the fake records the moment each root ``chat.postMessage`` (no ``thread_ts``) arrives;
   the message is found by the token ``[run-i]`` in its subject, which the root's text repeats;
5. latency = post time - accepted time (both ``time.monotonic()``, one clock for the whole
   machine on Linux); waits until every accepted message has its conversation, its
   acknowledgement queued and its root post (or ``--drain-timeout`` after sending ends), reads
   the daemon's peak RSS (``VmHWM``, its journal writer process's added) and stops it, then
   checks: every message answered 250, exactly one root post per message and per conversation,
   no root post for an unknown message, at most one acknowledgement per customer at the sink,
   inbound messages == conversations == journal == acknowledgements (when on) == sent in the
   store, no failed or pending journal row, SIGTERM -> exit 0, no traceback in the log.

A burst reports its accept rate (250s / (first connect -> last 250)), its processing rate
(N / (first connect -> the last conversation stored with its acknowledgement queued and its root
post at the fake)), their ratio, the root-post rate (first -> last root post) and 250 -> root
p50/p99. Its target is the ratio: >= 1.0 for plain-2k (below 0.5 is below the floor), >= 0.5 for
html-30k. The open loop's target: at 100 new customers a second for 20 s, p99 250 -> root < 1 s.

After the bursts (with acknowledgements on), the **send floor**: the same three sends for as many
new conversations (root post, acknowledgement mail, its line in the thread) through frontdesk's
own Slack and SMTP clients with no store at all (``benchmarks/_send_floor.py``), against a Slack
fake and relay of their own. Its rate divided by a burst's accept rate is the highest ratio any
processing could reach on this machine.

Slack's real limit (about one post a second per channel) is not what is measured: the daemon
runs with ``slack.post_interval = "0s"``, so it posts as fast as it can. Acknowledgements are on
(the default), so each message also costs an acknowledgement email and its mirror in the thread;
``--no-acks`` turns them off.

An open-loop rate is "sustained" when roots were posted at >= 90 % of the offered rate and the
backlog (accepted but not yet posted) when sending ended was under one second's worth of
messages. When a rate cannot be sustained the latency grows with the backlog; the table says so
(the backlog at the end of sending and how long draining it took) instead of hiding it.

Usage (with the venv's python, from the repository root)::

    python -m benchmarks.e2e_latency [--burst 3000] [--workload plain-2k|html-30k|all]
                                     [--connections 20] [--rates 100] [--duration 20] [--quick]
                                     [--postgres-url URL | --no-postgres] [--instances 1]
                                     [--no-acks] [--drain-timeout 600] [--keep]

``--postgres-url`` defaults to ``$FRONTDESK_TEST_POSTGRES_URL`` (a server where the user may
CREATE DATABASE); without either, only SQLite runs. Exit code 1 when a check fails; a missed
performance target prints FAIL in its verdict but does not change the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PgDatabase,
    code_version,
    free_port,
    ms,
    peak_rss_kib,
    start_frontdesk,
    stop_process,
)
from benchmarks.smtp_ingest import WORKLOADS, PgProbe, SqliteProbe, StoreProbe

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
POSTGRES_ENV = "FRONTDESK_TEST_POSTGRES_URL"
RCPT_TO = "support@example.com"
SLACK_CHANNEL = "C0BENCH"
SUSTAINED_SHARE = 0.9
BURST_TARGETS = {"plain-2k": 1.0, "html-30k": 0.5}  # processing / accept rate a burst should reach
BURST_FLOOR = 0.5  # plain-2k below this is below the floor
OPEN_TARGET_RATE, OPEN_TARGET_DURATION, OPEN_TARGET_P99 = 100.0, 20.0, 1.0
TOKEN = re.compile(r"\[([0-9a-f]{8})-(\d+)\]")
FROM_LINE = re.compile(rb"(?m)^From: [^\r\n]*")
SUBJECT_LINE = re.compile(rb"(?m)^Subject: [^\r\n]*")
BODY = (
    "Hello,\r\n\r\nI ordered a pair of walking boots on the 14th and the tracking page has said\r\n"
    "\"label created\" for nine days now. Could you check with the courier what is happening?\r\n"
    "If the parcel is lost I would rather have a refund than wait for a replacement.\r\n\r\n"
    "Kind regards,\r\n"
)


# --- the client (a separate process): SMTP, open or closed loop ---------------------------------

def customer_mail(i: int, run_id: str) -> tuple[str, bytes]:
    """(envelope sender, DATA ending in CRLF.CRLF) of customer i's first email: the open loop's
    short (~0.7 KB) plain text mail."""
    addr = f"customer{i}.{run_id}@example.org"
    lines = [
        f"From: Customer {i} <{addr}>",
        f"To: Example Support <{RCPT_TO}>",
        f"Subject: Where is my order {100000 + i}? [{run_id}-{i}]",
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}",
        f"Message-ID: <e2e.{run_id}.{i}@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
    ]
    return addr, ("\r\n".join(lines) + "\r\n").encode() + BODY.encode() + b".\r\n"


def burst_mail(workload: str, i: int, run_id: str) -> tuple[str, bytes]:
    """(envelope sender, DATA) of customer i's first email in a burst: smtp_ingest's ``workload``
    mail (plain-2k, html-30k), from a new customer, with ``[run-i]`` at the end of its Subject."""
    addr = f"customer{i}.{run_id}@example.org"
    head, blank, rest = WORKLOADS[workload][1](i, run_id).partition(b"\r\n\r\n")
    head = FROM_LINE.sub(f"From: Customer {i} <{addr}>".encode(), head, count=1)
    head = SUBJECT_LINE.sub(lambda m: m.group(0) + f" [{run_id}-{i}]".encode(), head, count=1)
    return addr, head + blank + rest


def mail_builder(mail: str) -> Callable[[int, str], tuple[str, bytes]]:
    """The builder of ``--mail``: "short" (the open loop's) or a burst workload."""
    return customer_mail if mail == "short" else functools.partial(burst_mail, mail)


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _send(ports: list[int], rate: float, n: int, run_id: str, sessions: int,
                mail: str) -> dict[str, Any]:
    """Open loop at ``rate`` messages a second; closed loop when ``rate`` is 0 (each session
    sends its next message as soon as the previous one's 250 arrives)."""
    build = mail_builder(mail)
    mails = [build(i, run_id) for i in range(n)]
    todo = iter(range(n))
    records: list[list[Any]] = []  # [i, due, started, accepted or None, code, port]
    errors: list[str] = []
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, int]] = []
    first_connect = time.monotonic()
    for k in range(sessions):
        port = ports[k % len(ports)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        code, line = await _reply(reader)
        if code != 220:
            raise ConnectionError(f"greeting {line!r}")
        writer.write(b"EHLO client.example.org\r\n")
        code, line = await _reply(reader)
        if code != 250:
            raise ConnectionError(f"EHLO {line!r}")
        conns.append((reader, writer, port))
    t0 = time.monotonic() + 0.2 if rate else time.monotonic()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      port: int) -> None:
        for i in todo:
            due = t0 + i / rate if rate else time.monotonic()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.monotonic()
            sender, data = mails[i]
            accepted, code = None, 0
            try:
                for command, want in ((f"MAIL FROM:<{sender}>\r\n".encode(), 250),
                                      (f"RCPT TO:<{RCPT_TO}>\r\n".encode(), 250),
                                      (b"DATA\r\n", 354)):
                    writer.write(command)
                    code, line = await _reply(reader)
                    if code != want:
                        errors.append(f"#{i} {command[:4].decode()}: {line!r}")
                        break
                else:
                    writer.write(data)
                    code, line = await _reply(reader)
                    if code == 250:
                        accepted = time.monotonic()
                    else:
                        errors.append(f"#{i} end of DATA: {line!r}")
                if code not in (250, 354) and accepted is None:
                    writer.write(b"RSET\r\n")
                    await _reply(reader)
            except (OSError, ConnectionError, ValueError) as exc:
                errors.append(f"#{i}: {exc!r}")
                records.append([i, due, started, None, 0, port])
                return
            records.append([i, due, started, accepted, code, port])
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()

    await asyncio.gather(*(session(r, w, p) for r, w, p in conns))
    return {"first_connect": first_connect, "t0": t0, "records": records,
            "errors": errors[:20], "n_errors": len(errors),
            "avg_bytes": sum(len(data) for _, data in mails) / max(1, n)}


def sender_main(args: argparse.Namespace) -> None:
    ports = [int(p) for p in args.ports.split(",")]
    result = asyncio.run(_send(ports, args.rate, args.count, args.run_id, args.sessions,
                               args.mail))
    print(json.dumps(result))


# --- the remote side (a separate process): Slack fake + SMTP relay sink --------------------------

def remote_main() -> None:
    from aiohttp import web

    from tests.fakes.slack import FakeSlack
    from tests.fakes.smtp_sink import SmtpSink

    class TimedSlack(FakeSlack):
        """The fake, noting when each chat.postMessage arrives."""

        def __init__(self) -> None:
            super().__init__()
            self.roots_seen: list[dict[str, Any]] = []
            self.thread_posts = 0

        def _chat_postMessage(self, args: dict[str, Any]) -> Any:
            arrived = time.monotonic()
            before = len(self.messages)
            result = super()._chat_postMessage(args)
            if len(self.messages) > before:
                posted = self.messages[-1]
                if posted.get("thread_ts"):
                    self.thread_posts += 1
                else:
                    payload = (posted.get("metadata") or {}).get("event_payload") or {}
                    self.roots_seen.append({"t": arrived, "text": posted["text"],
                                            "channel": posted["channel"],
                                            "conversation_id": payload.get("conversation_id"),
                                            "reference": payload.get("reference")})
            return result

    async def main() -> None:
        slack = TimedSlack()
        await slack.start(0)
        sink = SmtpSink(hostname="relay.test")
        await sink.start()

        async def stats(request: web.Request) -> web.Response:
            tokens = {m.group(0) for r in slack.roots_seen if (m := TOKEN.search(r["text"]))}
            return web.json_response({"roots": len(slack.roots_seen), "distinct": len(tokens),
                                      "thread_posts": slack.thread_posts,
                                      "calls": Counter(c.method for c in slack.calls),
                                      "acks": len(sink.messages)})

        async def posts(request: web.Request) -> web.Response:
            return web.json_response({"roots": slack.roots_seen,
                                      "ack_rcpts": [r for _, rcpts, _ in sink.messages
                                                    for r in rcpts]})

        control = web.Application()
        control.router.add_get("/stats", stats)
        control.router.add_get("/posts", posts)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        control_port = runner.addresses[0][1]
        print(json.dumps({"slack_base_url": slack.base_url, "bot_token": slack.bot_token,
                          "signing_secret": slack.signing_secret, "relay_port": sink.port,
                          "control_port": control_port}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()
        await sink.stop()
        await slack.stop()

    asyncio.run(main())


class Remote:
    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "remote.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.e2e_latency", "--remote"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            sys.exit("the Slack fake / relay process did not start:\n" + self.log.read_text())
        info = json.loads(line)
        self.slack_base_url: str = info["slack_base_url"]
        self.bot_token: str = info["bot_token"]
        self.signing_secret: str = info["signing_secret"]
        self.relay_port: int = info["relay_port"]
        self.control = f"http://127.0.0.1:{info['control_port']}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.control + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the daemon and its store ------------------------------------------------------------------

# An acknowledgement is queued when its row in `acknowledgements` is written: in the same
# transaction as its message and the outbox row that delivers it.
PROGRESS_SQL = ("SELECT (SELECT count(*) FROM conversations),"
                " (SELECT count(*) FROM acknowledgements)")
STORE_COUNTS = ("SELECT (SELECT count(*) FROM messages WHERE direction = 'in'),"
                " (SELECT count(*) FROM conversations),"
                " (SELECT count(*) FROM inbound_journal),"
                " (SELECT count(*) FROM inbound_journal WHERE state = 'failed'),"
                " (SELECT count(*) FROM inbound_journal WHERE state = 'pending'),"
                " (SELECT count(*) FROM acknowledgements)")


def open_probe(database_url: str) -> StoreProbe:
    """Read-only queries on the store while the daemon runs: sqlite3 with ``mode=ro``, or one
    asyncpg connection (smtp_ingest's probes)."""
    if database_url.startswith("sqlite"):
        return SqliteProbe(Path(database_url.split("///", 1)[1]))
    return PgProbe(database_url)


class Frontdesk:
    """One ``frontdesk run`` process, its config and log in a temp dir."""

    def __init__(self, tmp: Path, database_url: str, remote: Remote, acks: bool) -> None:
        tmp.mkdir(parents=True)
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "{database_url}"
[http]
listen = "127.0.0.1:{self.http_port}"
public_url = "http://127.0.0.1:{self.http_port}"
[email]
inbox_addresses = ["{RCPT_TO}"]
[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "frontdesk.test"
[email.outbound]
host = "127.0.0.1"
port = {remote.relay_port}
from = "Example Support <{RCPT_TO}>"
starttls = "off"
[slack]
bot_token = "{remote.bot_token}"
signing_secret = "{remote.signing_secret}"
channel_id = "{SLACK_CHANNEL}"
api_base_url = "{remote.slack_base_url}"
post_interval = "0s"
[acknowledgement]
enabled = {"true" if acks else "false"}
global_rate_limits = ["1000000/10m"]  # every simulated customer is real: no flood cap
[daemon]
data_dir = "{tmp}/data"
shutdown_timeout = "20s"
[sla]
business_hours = "always"
""")
        self.log = tmp / "frontdesk.log"
        self.process = start_frontdesk(self.config, self.http_port, self.log)

    def stop(self) -> int | None:
        return stop_process(self.process)


# --- one level -----------------------------------------------------------------------------------

@dataclass
class Level:
    backend: str
    instances: int
    rate: float  # offered messages a second; 0: a burst (closed loop)
    workload: str  # the mail: "short" (the open loop's), "plain-2k" or "html-30k"
    sessions: int
    sent: int
    duration: float = 0.0  # the open loop's seconds of sending
    accepted: int = 0
    accept_rate: float | None = None
    post_rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    worst: float | None = None
    backlog_at_end: int | None = None
    drain_s: float | None = None
    sender_late_p99: float | None = None
    sustained: bool = False
    unposted: int = 0  # accepted messages still without a root post when the wait ended
    last_post: float | None = None  # when the last root post arrived (monotonic)
    send_s: float | None = None  # first connect -> last 250
    stored_s: float | None = None  # first connect -> every conversation, acknowledgement queued
    processed_s: float | None = None  # first connect -> the above and every root post
    peak_rss: list[int] = field(default_factory=list)  # KiB, one per instance
    avg_bytes: float | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def burst(self) -> bool:
        return self.rate == 0

    @property
    def label(self) -> str:
        what = f"burst {self.workload}" if self.burst else f"{self.rate:g}/s"
        return f"{self.backend}, {self.instances} instance(s), {what}"

    @property
    def processing_rate(self) -> float | None:
        return self.sent / self.processed_s if self.processed_s else None

    @property
    def ratio(self) -> float | None:
        if self.processing_rate is None or not self.accept_rate:
            return None
        return self.processing_rate / self.accept_rate


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sessions_for(rate: float) -> int:
    return max(2, min(50, math.ceil(rate / 10)))


def run_level(level: Level, url: str | None, tmp: Path, acks: bool,
              drain_timeout: float, keep: bool = False) -> Level:
    n = level.sent
    pg = PgDatabase(url) if url else None
    database_url = pg.url if pg else f"sqlite+aiosqlite:///{tmp}/frontdesk.db"
    remote: Remote | None = None
    daemons: list[Frontdesk] = []
    probe: StoreProbe | None = None
    try:
        remote = Remote(tmp)
        for k in range(level.instances):
            daemons.append(Frontdesk(tmp / f"frontdesk-{k}", database_url, remote, acks))
        probe = open_probe(database_url)
        run_id = secrets.token_hex(4)
        out_path, err_path = tmp / "sender.json", tmp / "sender.err"
        with out_path.open("w") as out, err_path.open("w") as err:
            sender = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.e2e_latency", "--sender", "--ports",
                 ",".join(str(d.smtp_port) for d in daemons), "--rate", str(level.rate),
                 "--count", str(n), "--run-id", run_id, "--sessions", str(level.sessions),
                 "--mail", level.workload],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        send_timeout = 300 + (n / 5 if level.burst else level.duration * 20)
        # Poll the store and the fake every 100 ms, while sending and after, until every
        # accepted message has its conversation, its acknowledgement queued (when on) and its
        # root post, or the drain timeout.
        started = time.monotonic()
        sending_ended: float | None = None
        stored_at: float | None = None
        sent: dict[str, Any] | None = None
        want = n  # the sent messages; the accepted ones once the client is done
        while True:
            now = time.monotonic()
            if sending_ended is None and sender.poll() is not None:
                sending_ended = now
                if sender.returncode != 0 or not out_path.read_text().strip():
                    level.checks.append(f"the SMTP client failed (exit {sender.returncode}): "
                                        f"{err_path.read_text()[-1500:]}")
                    return level
                sent = json.loads(out_path.read_text())
                want = sum(1 for r in sent["records"] if r[3] is not None)
            if sending_ended is None and now - started > send_timeout:
                sender.kill()
                sender.wait()
                level.checks.append(f"the SMTP client did not finish within "
                                    f"{send_timeout:.0f} s")
                return level
            try:
                conversations, acknowledged = probe.rows(PROGRESS_SQL)[0]
            except probe.errors as exc:
                level.checks.append(f"cannot read the store: {exc!r}")
                break
            if stored_at is None and conversations >= want and (acknowledged >= want or not acks):
                stored_at = now
            if sending_ended is not None:
                if stored_at is not None and remote.get("/stats")["distinct"] >= want:
                    break
                if now - sending_ended > drain_timeout:
                    break
            dead = [d for d in daemons if d.process.poll() is not None]
            if dead:
                level.checks.append(f"frontdesk exited during the run (log: {dead[0].log})")
                break
            time.sleep(0.1)
        if sent is None:  # the wait ended before the client did
            sender.kill()
            sender.wait()
            return level
        records = sent["records"]
        accepted_at = {r[0]: r[3] for r in records if r[3] is not None}
        level.accepted = len(accepted_at)
        level.avg_bytes = sent["avg_bytes"]
        if sent["n_errors"] or level.accepted != n:
            level.checks.append(f"{level.accepted} of {n} messages got 250; "
                                f"{sent['n_errors']} error(s): {sent['errors'][:3]}")
        late = [r[2] - r[1] for r in records]
        level.sender_late_p99 = _percentile(late, 0.99)
        time.sleep(1.0)  # a late duplicate would still arrive
        stats = remote.get("/stats")
        posted = remote.get("/posts")
        if stats["distinct"] < level.accepted:
            level.checks.append(
                f"only {stats['distinct']} of {level.accepted} messages had a root post "
                f"{drain_timeout:.0f} s after sending ended (--drain-timeout)")
        level.notes.append(f"the fake saw {stats['roots']} root posts, {stats['thread_posts']} "
                           f"thread posts, Web API calls {dict(stats['calls'])}; the relay took "
                           f"{stats['acks']} acknowledgement(s)")
        _analyse(level, run_id, accepted_at, posted)
        if accepted_at:
            first, last = min(accepted_at.values()), max(accepted_at.values())
            if level.burst:
                level.send_s = last - sent["first_connect"]
                level.accept_rate = level.accepted / level.send_s
            else:
                level.accept_rate = ((len(accepted_at) - 1) / (last - first) if last > first
                                     else None)
        if stored_at is not None:
            level.stored_s = stored_at - sent["first_connect"]
            if level.last_post is not None and not level.unposted:
                level.processed_s = max(stored_at, level.last_post) - sent["first_connect"]
        try:
            inbound, conversations, journal, failed, pending, acknowledged = \
                probe.rows(STORE_COUNTS)[0]
        except probe.errors as exc:
            level.checks.append(f"cannot read the store: {exc}")
        else:
            got = (inbound, conversations, journal, failed, pending, acknowledged)
            want_counts = (n, n, n, 0, 0, n if acks else 0)
            if got != want_counts:
                level.checks.append(
                    f"store: inbound messages {inbound}, conversations {conversations}, journal "
                    f"{journal}, failed {failed}, pending {pending}, acknowledgements "
                    f"{acknowledged} (want {', '.join(map(str, want_counts))})")
    finally:
        for d in daemons:
            rss = peak_rss_kib(d.process.pid) if d.process.poll() is None else None
            if rss is not None:
                level.peak_rss.append(rss)
        if probe is not None:
            probe.close()
        for d in daemons:
            code = d.stop()
            if code != 0:
                level.checks.append(f"frontdesk exit code {code} after SIGTERM (want 0)")
            try:
                if "Traceback" in d.log.read_text(errors="replace"):
                    level.checks.append(f"Traceback in {d.log}")
            except OSError as exc:
                level.checks.append(f"cannot read the daemon's log: {exc}")
        if remote is not None:
            remote.stop()
        if pg is not None:
            if keep:
                print(f"  kept the database {pg.name}", flush=True)
            else:
                pg.drop()
    return level


def _analyse(level: Level, run_id: str, accepted_at: dict[int, float],
             posted: dict[str, Any]) -> None:
    by_message: dict[int, list[float]] = {}
    by_conversation: Counter[Any] = Counter()
    strangers = 0
    for root in posted["roots"]:
        by_conversation[root["conversation_id"]] += 1
        m = TOKEN.search(root["text"])
        if m is None or m.group(1) != run_id:
            strangers += 1
            continue
        by_message.setdefault(int(m.group(2)), []).append(root["t"])
    missing = [i for i in accepted_at if i not in by_message]
    level.unposted = len(missing)
    doubled = {i: len(ts) for i, ts in by_message.items() if len(ts) > 1}
    unknown = [i for i in by_message if i not in accepted_at]
    if missing:
        level.checks.append(f"{len(missing)} accepted message(s) have no root post "
                            f"(first: #{sorted(missing)[:5]})")
    if doubled:
        level.checks.append(f"{len(doubled)} message(s) have more than one root post "
                            f"({sum(doubled.values()) - len(doubled)} extra): "
                            f"{dict(list(doubled.items())[:5])}")
    if unknown or strangers:
        level.checks.append(f"{len(unknown) + strangers} root post(s) for no accepted message")
    per_conversation = {c: k for c, k in by_conversation.items() if k > 1}
    if per_conversation:
        level.checks.append(f"{len(per_conversation)} conversation(s) with more than one root "
                            f"post: {dict(list(per_conversation.items())[:5])}")
    acks = Counter(posted["ack_rcpts"])
    twice = {r: k for r, k in acks.items() if k > 1}
    if twice:
        level.checks.append(f"{len(twice)} customer(s) got more than one acknowledgement: "
                            f"{dict(list(twice.items())[:3])}")
    latencies = [min(by_message[i]) - t for i, t in accepted_at.items() if i in by_message]
    if not latencies:
        return
    level.p50 = _percentile(latencies, 0.50)
    level.p99 = _percentile(latencies, 0.99)
    level.worst = max(latencies)
    posts = sorted(min(ts) for i, ts in by_message.items() if i in accepted_at)
    if len(posts) > 1 and posts[-1] > posts[0]:
        level.post_rate = (len(posts) - 1) / (posts[-1] - posts[0])
    end = max(accepted_at.values())
    level.backlog_at_end = len(accepted_at) - sum(1 for t in posts if t <= end)
    level.drain_s = max(0.0, posts[-1] - end)
    level.last_post = posts[-1]
    level.sustained = (not level.burst and not missing and level.post_rate is not None
                       and level.post_rate >= SUSTAINED_SHARE * level.rate
                       and level.backlog_at_end < max(1.0, level.rate))
    if len(latencies) >= 20:
        tenth = len(latencies) // 10
        order = sorted(accepted_at.items(), key=lambda kv: kv[1])
        first = [min(by_message[i]) - t for i, t in order[:tenth] if i in by_message]
        last = [min(by_message[i]) - t for i, t in order[-tenth:] if i in by_message]
        if first and last:
            level.notes.append(f"median latency of the first tenth {ms(_percentile(first, .5))}"
                               f", of the last tenth {ms(_percentile(last, .5))}")


# --- the report ----------------------------------------------------------------------------------

def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rss(lv: Level) -> str:
    return f"{max(lv.peak_rss) / 1024:,.0f} MiB" if lv.peak_rss else "-"


def verdict(lv: Level) -> tuple[bool, str] | None:
    """Whether the level met its performance target, and a sentence saying so; None when the
    level has no target (an open-loop rate other than 100/s)."""
    if lv.burst:
        target = BURST_TARGETS[lv.workload]
        want = f"processing/accept >= {target:.1f}"
        if lv.ratio is None:
            return False, (f"{want}: FAIL, not known (not everything was processed within "
                           "--drain-timeout)")
        if lv.ratio >= target:
            return True, f"{want}: {lv.ratio:.2f}, PASS"
        floor = (f", below the floor of {BURST_FLOOR:g}"
                 if lv.workload == "plain-2k" and lv.ratio < BURST_FLOOR else "")
        return False, f"{want}: {lv.ratio:.2f}, FAIL{floor}"
    if lv.rate != OPEN_TARGET_RATE:
        return None
    want = f"p99 250 -> root < {ms(OPEN_TARGET_P99)} at {OPEN_TARGET_RATE:g}/s"
    short = (f" (a {lv.duration:g} s run; the target is for {OPEN_TARGET_DURATION:g} s)"
             if lv.duration != OPEN_TARGET_DURATION else "")
    if lv.p99 is None:
        return False, f"{want}: FAIL, no root post{short}"
    met = lv.p99 < OPEN_TARGET_P99 and not lv.unposted
    return met, (f"{want}: {'>' if lv.unposted else ''}{ms(lv.p99)}, "
                 f"{'PASS' if met else 'FAIL'}{short}")


def print_table(header: list[str], rows: list[list[str]], left: int) -> None:
    """Columns before ``left`` left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) if k < left else h.rjust(w)
                    for k, (h, w) in enumerate(zip(header, widths, strict=True))))
    print(line)
    for r in rows:
        print("  ".join(v.ljust(w) if k < left else v.rjust(w)
                        for k, (v, w) in enumerate(zip(r, widths, strict=True))))
    print(line)


def _target(lv: Level) -> str:
    v = verdict(lv)
    return "-" if v is None else ("PASS" if v[0] else "FAIL")


def send_floor(tmp: Path, count: int) -> dict[str, float] | None:
    """The three sends of ``count`` new conversations alone, no store (benchmarks/_send_floor.py),
    against a Slack fake and relay of their own: what no processing can beat here."""
    where = tmp / "send-floor"
    where.mkdir()
    print(f"\n[send floor] the sends of {count} new conversations alone (no store) ...",
          flush=True)
    remote = Remote(where)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks._send_floor", "--slack", remote.slack_base_url,
             "--token", remote.bot_token, "--relay-port", str(remote.relay_port),
             "--count", str(count)], capture_output=True, text=True, timeout=600)
    finally:
        remote.stop()
    if done.returncode != 0:
        print(f"  failed (exit code {done.returncode}): {done.stderr[-2000:]}")
        return None
    floor: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    print(f"  {floor['rate']:,.0f} conversations/s, {floor['cpu_ms']:.2f} ms of CPU each",
          flush=True)
    return floor


def print_floor(floor: dict[str, float], bursts: list[Level]) -> None:
    print("\nSend floor: each new conversation's three sends alone (its Slack root post, the "
          "acknowledgement mail, its line in the thread), through frontdesk's own Slack and SMTP "
          f"clients, {floor['lanes']:.0f} at a time per remote as the outbox sends, "
          "with no store: "
          f"{floor['rate']:,.0f} conversations/s, {floor['cpu_ms']:.2f} ms of CPU each "
          f"({floor['count']:,.0f} conversations).")
    for lv in bursts:
        if lv.accept_rate:
            print(f"  {lv.label}: at most {floor['rate'] / lv.accept_rate:.2f} of its accept rate "
                  f"({lv.accept_rate:,.0f}/s) whatever the processing costs; measured "
                  f"{'-' if lv.ratio is None else f'{lv.ratio:.2f}'}")


def print_bursts(levels: list[Level]) -> None:
    print("\nBursts (closed loop, every message from a new customer):")
    print("accepted/s: 250s / (first connect -> last 250);")
    print("stored s: first connect -> every conversation stored with its acknowledgement queued;"
          " stored/s: sent / stored s;")
    print("processed s: first connect -> stored and every root post at the fake; processed/s: "
          "sent / processed s;")
    print("ratio: processed/s / accepted/s; roots/s: root posts / (first -> last root post); "
          "p50/p99: 250 -> root post;")
    print("peak RSS: the daemon's VmHWM with its child processes' just before SIGTERM (the "
          "largest instance's);")
    print(f"target: ratio >= {BURST_TARGETS['plain-2k']:.1f} for plain-2k (below "
          f"{BURST_FLOOR:.1f}: below the floor), >= {BURST_TARGETS['html-30k']:.1f} for "
          "html-30k;")
    print("'-': not known, some message was not processed within --drain-timeout.\n")
    print_table(
        ["store", "inst", "workload", "sent", "accepted/s", "stored s", "stored/s",
         "processed s", "processed/s", "ratio", "roots/s", "p50", "p99", "peak RSS", "target"],
        [[lv.backend, str(lv.instances), lv.workload, str(lv.sent), _rate(lv.accept_rate),
          _seconds(lv.stored_s), _rate(lv.sent / lv.stored_s if lv.stored_s else None),
          _seconds(lv.processed_s), _rate(lv.processing_rate),
          "-" if lv.ratio is None else f"{lv.ratio:.2f}",
          _rate(lv.post_rate),
          *((">" if lv.unposted and v is not None else "") + ms(v) for v in (lv.p50, lv.p99)),
          _rss(lv), _target(lv)] for lv in levels],
        left=3)


def print_open_loop(levels: list[Level]) -> None:
    print("\nOpen loop (message i due at start + i/rate, every message from a new customer):")
    print("latency: SMTP 250 read by the client -> root chat.postMessage at the Slack fake;")
    print("accepted/s: 250s over first -> last 250; posted/s: root posts over first -> last post;")
    print("backlog at end: accepted but not yet posted when the last 250 came; drain: last 250 -> "
          "last root post;")
    print(f"sustained: posted/s >= {SUSTAINED_SHARE:.0%} of offered and a backlog at the end under "
          "one second's worth;")
    print(f"target (at {OPEN_TARGET_RATE:g}/s only): p99 < {ms(OPEN_TARGET_P99)};")
    print("'>': some messages never got their root post within --drain-timeout, so the figure is "
          "over the posted ones only and the true one is higher.\n")
    print_table(
        ["store", "inst", "offered/s", "secs", "sent", "accepted/s", "posted/s", "p50", "p99",
         "max", "backlog at end", "drain s", "sustained", "peak RSS", "target"],
        [[lv.backend, str(lv.instances), f"{lv.rate:g}", f"{lv.duration:g}", str(lv.sent),
          _rate(lv.accept_rate), _rate(lv.post_rate),
          *((">" if lv.unposted and v is not None else "") + ms(v)
            for v in (lv.p50, lv.p99, lv.worst)),
          "-" if lv.backlog_at_end is None else str(lv.backlog_at_end),
          "-" if lv.drain_s is None else (">" if lv.unposted else "") + f"{lv.drain_s:.1f}",
          "yes" if lv.sustained else "NO", _rss(lv), _target(lv)] for lv in levels],
        left=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--burst", type=int, metavar="N",
                   help="messages in each burst (3000; --quick: 300); 0: no burst")
    p.add_argument("--workload", choices=("plain-2k", "html-30k", "all"), default="all",
                   help="the bursts' mail (all)")
    p.add_argument("--connections", type=int, default=20, metavar="C",
                   help="SMTP sessions of a burst, each sending its next message when the "
                        "previous one's 250 arrives (20)")
    p.add_argument("--rates", default=str(OPEN_TARGET_RATE).removesuffix(".0"),
                   help="open-loop rates in messages a second, comma-separated (100); "
                        "0: no open-loop run")
    p.add_argument("--duration", type=float,
                   help=f"seconds of sending per open-loop rate ({OPEN_TARGET_DURATION:g}; "
                        "--quick: 2)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: bursts of 300, 2 s per open-loop rate")
    p.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV, ""),
                   help=f"postgresql+asyncpg://user@host/db (default ${POSTGRES_ENV}); a fresh "
                        "database is made on that server for each run and dropped after")
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    p.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    p.add_argument("--instances", type=int, choices=(1, 2), default=1,
                   help="frontdesk processes on the one PostgreSQL database (1)")
    p.add_argument("--no-acks", action="store_true",
                   help="[acknowledgement] enabled = false (no acknowledgement emails)")
    p.add_argument("--drain-timeout", type=float, default=600, metavar="S",
                   help="after sending ends, wait at most S seconds for the processing and the "
                        "root posts (600)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir (logs, SQLite stores) and the PostgreSQL databases")
    p.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--remote", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sessions", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("--mail", default="short", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sender:
        sender_main(args)
        return 0
    if args.remote:
        remote_main()
        return 0
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates {args.rates!r}: give numbers like 10,100,500")
    if rates == [0]:
        rates = []
    elif not rates or any(r <= 0 for r in rates):
        p.error("--rates: every rate must be above 0 (or 0 alone: no open-loop run)")
    duration = args.duration if args.duration is not None else (
        2.0 if args.quick else OPEN_TARGET_DURATION)
    if duration <= 0:
        p.error("--duration must be above 0")
    burst = args.burst if args.burst is not None else (300 if args.quick else 3000)
    if burst < 0:
        p.error("--burst must be 0 (no burst) or more")
    if args.connections < 1:
        p.error("--connections must be 1 or more")
    workloads = list(BURST_TARGETS) if args.workload == "all" else [args.workload]
    if not burst:
        workloads = []
    if not workloads and not rates:
        p.error("nothing to run: --burst 0 and --rates 0")
    backends: list[tuple[str, str | None]] = []
    if not args.no_sqlite:
        if args.instances > 1:
            print("note: --instances 2 applies to PostgreSQL only; SQLite runs one instance")
        backends.append(("sqlite", None))
    pg_note = ""
    if args.no_postgres:
        pg_note = "PostgreSQL: skipped (--no-postgres)"
    elif not args.postgres_url:
        pg_note = f"PostgreSQL: skipped (no --postgres-url and no ${POSTGRES_ENV})"
    elif not args.postgres_url.startswith("postgresql+asyncpg://"):
        p.error("--postgres-url must look like postgresql+asyncpg://user@host/db")
    else:
        backends.append(("postgresql", args.postgres_url))
    if not backends:
        p.error("nothing to run: SQLite is off (--no-sqlite) and PostgreSQL is not given")
    plan: list[tuple[Level, str | None]] = []
    for backend, url in backends:
        instances = args.instances if url else 1
        for workload in workloads:
            plan.append((Level(backend, instances, 0, workload, args.connections, burst), url))
        for rate in rates:
            plan.append((Level(backend, instances, rate, "short", sessions_for(rate),
                               max(1, round(rate * duration)), duration), url))

    print("frontdesk end-to-end: SMTP 250 -> Slack root post at the fake, and processing")
    if workloads:
        print(f"bursts: {burst} messages each of {', '.join(workloads)}, closed loop over "
              f"{args.connections} SMTP sessions")
    if rates:
        print(f"open loop: {', '.join(f'{r:g}' for r in rates)} msg/s for {duration:g} s each "
              "(a ~0.7 KB plain text mail)")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{os.uname().sysname} {os.uname().release}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews the figures)")
    print(f"code: {code_version()}")
    print('slack.post_interval = "0s": Slack\'s real limit (about one post a second per channel) '
          "is not what is measured")
    print(f"acknowledgements: {'off (--no-acks)' if args.no_acks else 'on, to a loopback relay'}"
          f"; every message from a new customer (a new conversation and root post)")
    if pg_note:
        print(pg_note)
    tmp = Path(tempfile.mkdtemp(prefix="fd-e2e-bench-"))
    levels: list[Level] = []
    try:
        for k, (level, url) in enumerate(plan):
            where = tmp / f"{k}-{level.backend}-{level.workload if level.burst else level.rate}"
            where.mkdir()
            what = (f"burst of {level.sent} {level.workload} ({level.sessions} SMTP sessions)"
                    if level.burst else
                    f"{level.rate:g} msg/s for {level.duration:g} s ({level.sent} messages, "
                    f"{level.sessions} SMTP sessions)")
            print(f"\n[{level.backend}, {level.instances} instance(s)] {what} ...", flush=True)
            started = time.monotonic()
            run_level(level, url, where, not args.no_acks, args.drain_timeout, args.keep)
            levels.append(level)
            if level.burst:
                stored = level.sent / level.stored_s if level.stored_s else None
                print(f"  accepted at {_rate(level.accept_rate)}/s, stored at {_rate(stored)}/s"
                      f", processed at {_rate(level.processing_rate)}/s (ratio "
                      f"{'-' if level.ratio is None else f'{level.ratio:.2f}'}), roots posted "
                      f"at {_rate(level.post_rate)}/s, p50 {ms(level.p50)}, p99 {ms(level.p99)}"
                      f", peak RSS {_rss(level)}; ", end="")
            else:
                print(f"  p50 {ms(level.p50)}, p99 {ms(level.p99)}, accepted at "
                      f"{_rate(level.accept_rate)}/s, roots posted at {_rate(level.post_rate)}/s"
                      f", {'sustained' if level.sustained else 'NOT sustained'}; ", end="")
            print(f"{'checks pass' if not level.checks else 'CHECKS FAIL'} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
        floor = send_floor(tmp, burst) if workloads and not args.no_acks else None
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    bursts = [lv for lv in levels if lv.burst]
    open_loop = [lv for lv in levels if not lv.burst]
    if bursts:
        print_bursts(bursts)
        if floor is not None:
            print_floor(floor, bursts)
    if open_loop:
        print_open_loop(open_loop)
    print()
    for lv in levels:
        if not lv.burst and lv.sender_late_p99 is not None and lv.sender_late_p99 > 0.05:
            print(f"note ({lv.label}): the client started sends up to {ms(lv.sender_late_p99)} "
                  "(p99) behind schedule: the server's answers held it back")
        if lv.burst and lv.avg_bytes is not None:
            print(f"note ({lv.label}): {lv.avg_bytes / 1024:.1f} KiB a message on average; "
                  f"{lv.backlog_at_end} of {lv.accepted} still without a root post at the last "
                  "250")
        if len(lv.peak_rss) > 1:
            print(f"note ({lv.label}): peak RSS per instance "
                  f"{', '.join(f'{k / 1024:,.0f} MiB' for k in lv.peak_rss)}")
        for note in lv.notes:
            print(f"note ({lv.label}): {note}")
    failed = [(lv, c) for lv in levels for c in lv.checks]
    for lv, c in failed:
        print(f"CHECK FAILED ({lv.label}): {c}")
    verdicts = [(lv, v) for lv in levels if (v := verdict(lv)) is not None]
    print()
    for lv, (_, sentence) in verdicts:
        print(f"target ({lv.label}): {sentence}")
    print(f"targets: {sum(1 for _, (met, _) in verdicts if met)} of {len(verdicts)} met "
          "(performance; a missed target does not change the exit code)")
    print("checks (correctness: 250s, one root post per message and conversation, at most one "
          "acknowledgement per customer, store counts, SIGTERM -> 0, no traceback): "
          f"{'PASS' if not failed else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
