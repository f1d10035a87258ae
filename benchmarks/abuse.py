#!/usr/bin/env python3
"""Hostile input against a running ``frontdesk run`` over real sockets (issue 14).

One daemon on a fresh SQLite store in a temp dir (free ports, acknowledgements off,
``email.smtp_server.data_timeout = "5s"`` instead of the default 10m so that the trickle test
is short; every other limit at its default, ``http.header_timeout`` included: 10 s). Then:

1. Connection exhaustion. Quiet figures first (after a warm-up, with nothing left to process):
   20 ``GET /healthz`` one after the other from 127.0.0.1 (p50, max), 5 legitimate mails from
   127.0.0.1 with smtplib, each once the one before is processed (connect -> 250, p50), the
   daemon's open file descriptors (``/proc/PID/fd``) and RSS. Then N idle SMTP connections
   (default 5,000; they read the greeting and send nothing) and N idle HTTP connections (half
   send nothing, half half a request line), alternately from 127.0.0.2 and 127.0.0.3.
   Reported: SMTP greetings 220 vs 421, /healthz while the connections are being opened, the
   HTTP connections the server still keeps open 2 s after the last one opened; with the attack
   held, the same /healthz and legitimate-mail figures (as ratios to the quiet ones) and the
   daemon's fds and RSS. Then, the attack still held, a slowloris HTTP client (one header byte
   a second) and an SMTP client trickling its DATA (one byte a second), both from 127.0.0.1:
   the time until the daemon cuts them (``http.header_timeout``, ``data_timeout``), and how
   many of the attack's connections are still open by then.
2. Hostile mail. The issue's ~4 MB mail of 100,000 MIME parts, sent over SMTP: connect -> 250,
   250 -> its conversation exists (the SQLite file polled read-only every 10 ms), the daemon's
   peak RSS growth while it is received (connect -> 250) and while it is processed (250 ->
   conversation), from VmRSS sampled every 5 ms, and VmHWM after resetting it through
   ``/proc/PID/clear_refs``; the attachments stored (``frontdesk show --json``) and the slowest
   /healthz while the mail was received and while it was processed. Then a mail nested 1,000
   multipart levels deep, the same figures: stored with its innermost text;
   ``frontdesk journal --failed --json`` must be empty.

/healthz during the flood and the hostile mails is polled from a separate process (every 20 and
10 ms): this one's own work (thousands of connects, a 4 MB send) would otherwise delay it. The
mails are the ones ``tests/channels/email/test_parse_limits.py`` asserts on
(``tests/support/hostile_mail.py``).

Usage (from the repository root, with the venv's python)::

    python -m benchmarks.abuse [--connections 5000] [--keep]

Checks (exit code 1 if one fails): some SMTP connections got 421; /healthz p50 under attack <
5 x quiet p50 + 50 ms; the legitimate mails got 250 under attack; the slowloris client was cut
within header_timeout (+1 s) and the DATA trickle with a 421 within data_timeout (+1 s); at most
100 attachments stored; the nested mail stored with its text and no dead letter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO,
    code_version,
    free_port,
    frontdesk_executable,
    ms,
    start_frontdesk,
    stop_process,
)
from benchmarks.smtp_ingest import MAIL_FROM, RCPT_TO, _open_ro, _percentile, _reply
from tests.support.hostile_mail import many_parts_mail, nested_mail

ATTACKERS = ("127.0.0.2", "127.0.0.3")
HEADER_TIMEOUT = 10.0  # http.header_timeout: the default, not set in the config
DATA_TIMEOUT = 5.0  # email.smtp_server.data_timeout: set in the config (default 10m)
SLACK = 1.0  # what a cut may come later than its bound (timer and poll granularity)
CONNECT_CONCURRENCY = 100  # connects in flight at once (the listeners' backlog is 100)
MB = 1024 * 1024
NESTED_TEXT = "the words at the bottom of 1,000 levels"  # innermost in the nested mail


# --- the daemon ----------------------------------------------------------------------------------

class Daemon:
    """``frontdesk run`` on a fresh SQLite store in ``tmp``; ``stop`` is idempotent."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.smtp_port, self.http_port, relay_port = free_port(), free_port(), free_port()
        self.db = tmp / "frontdesk.db"
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{self.db}"
[http]
listen = "127.0.0.1:{self.http_port}"
[email]
inbox_addresses = ["{RCPT_TO}"]
[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "frontdesk.test"
data_timeout = "{DATA_TIMEOUT:g}s"
[email.outbound]
host = "127.0.0.1"
port = {relay_port}
from = "Example Support <{RCPT_TO}>"
starttls = "off"
[acknowledgement]
enabled = false
[daemon]
data_dir = "{tmp}/data"
shutdown_timeout = "20s"
[sla]
business_hours = "always"
""")
        self.log = tmp / "frontdesk.log"
        self.process = start_frontdesk(self.config, self.http_port, self.log)
        self.pid = self.process.pid
        self.exit_code: int | None = None
        self._stopped = False

    def stop(self) -> int | None:
        if not self._stopped:
            self._stopped = True
            self.exit_code = stop_process(self.process, timeout=30)
        return self.exit_code

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status_kb(self, key: str) -> int:
        """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0, our own child)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def settle(self, timeout: float = 15.0, pause: float = 0.2) -> None:
        """Wait until the journal has no pending row (what was sent is processed), and
        ``pause`` seconds more."""
        db = _open_ro(self.db)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and db.execute(
                    "SELECT count(*) FROM inbound_journal WHERE state = 'pending'").fetchone()[0]:
                time.sleep(0.02)
        finally:
            db.close()
        time.sleep(pause)

    def cli(self, *args: str) -> Any:
        """``frontdesk ARGS --json -c CONFIG``, its output parsed."""
        done = subprocess.run([frontdesk_executable(), *args, "--json", "-c", str(self.config)],
                              capture_output=True, text=True, timeout=120, cwd=self.tmp)
        if done.returncode != 0:
            raise RuntimeError(f"frontdesk {' '.join(args)}: exit {done.returncode}: "
                               f"{done.stderr[-1000:]}")
        return json.loads(done.stdout)


# --- measurements from 127.0.0.1 -----------------------------------------------------------------

def healthz(port: int) -> float:
    """Seconds for one ``GET /healthz`` on a new connection; raises unless 200."""
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"/healthz answered {r.status}")
    return time.perf_counter() - began


def healthz_series(port: int, n: int = 20) -> list[float]:
    """``n`` requests one after the other (from a thread while the loop only holds idle
    connections)."""
    return [healthz(port) for _ in range(n)]


def send_mail(port: int, data: bytes, sender: str = MAIL_FROM) -> tuple[float, float]:
    """One mail over smtplib from 127.0.0.1: (time.monotonic() at connect, at its 250). Raises
    if the server refuses it (smtplib raises on anything but 250 after DATA)."""
    began = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail(sender, [RCPT_TO], data)
        accepted = time.monotonic()
    return began, accepted


def legit_mails(daemon: Daemon, first: int, n: int = 5) -> list[float]:
    """Seconds from connect to the 250 of ``n`` ordinary customer mails. Each is sent once the
    one before is processed: on SQLite a journal insert waits for the processor's commit, which
    is not what is measured here."""
    from tests.support.helpers import mail

    times = []
    for i in range(first, first + n):
        daemon.settle(pause=0.05)
        message = mail(frm=f"Legit Customer <legit{i}@example.org>",
                       subject=f"Order {i} is late", msgid=f"<legit.{i}@example.org>")
        began, accepted = send_mail(daemon.smtp_port, message.as_bytes(policy=SMTP_POLICY),
                                    sender=f"legit{i}@example.org")
        times.append(accepted - began)
    return times


Samples = list[tuple[float, float | None]]  # (time.monotonic() at the start, value or None)


class Sampler:
    """Calls ``probe`` every ``interval`` seconds in a thread of this process until ``stop``.
    A probe that raises is recorded as ``None``."""

    def __init__(self, probe: Callable[[], float], interval: float) -> None:
        self.samples: Samples = []
        self._probe = probe
        self._interval = interval
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                value: float | None = self._probe()
            except Exception:  # noqa: BLE001 - a failed probe is a sample too
                value = None
            self.samples.append((began, value))
            self._halt.wait(self._interval)

    def stop(self) -> Samples:
        self._halt.set()
        self._thread.join(timeout=60)
        return self.samples


class HealthProbe:
    """``GET /healthz`` from 127.0.0.1 every ``interval`` seconds, in a process of its own: what
    this one does meanwhile (opening thousands of connections, sending a 4 MB mail) holds its
    own GIL, and must not count as the daemon's latency. Times are ``time.monotonic()``, one
    clock for the machine."""

    def __init__(self, port: int, interval: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.abuse", "--probe-healthz", str(port),
             "--interval", str(interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            self.process.kill()
            raise RuntimeError("the /healthz probe did not start")

    def stop(self) -> Samples:
        """Ends the probe (its stdin closes) and returns its samples."""
        try:
            out, _ = self.process.communicate(b"", timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return [(t, None if v < 0 else v) for t, v in json.loads(out)]


def probe_main(port: int, interval: float) -> None:
    """The probe process: samples until its stdin closes, then prints them as JSON."""
    halt = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        halt.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    samples: list[tuple[float, float]] = []
    print("ready", flush=True)
    while not halt.is_set():
        began = time.monotonic()
        try:
            samples.append((began, healthz(port)))
        except Exception:  # noqa: BLE001 - recorded as a failed request
            samples.append((began, -1.0))
        halt.wait(interval)
    print(json.dumps(samples))


def between(samples: Samples, start: float, end: float) -> list[float | None]:
    return [v for t, v in samples if start <= t <= end]


# --- part 1: connection exhaustion ---------------------------------------------------------------

@dataclass
class Attack:
    smtp: list[tuple[asyncio.StreamWriter, asyncio.Task[bytes]]] = field(
        default_factory=list)  # greeted 220, then held without a command
    smtp_codes: Counter[str] = field(default_factory=Counter)
    http: list[tuple[asyncio.StreamWriter, asyncio.Task[bytes]]] = field(default_factory=list)
    http_failed: int = 0  # connects that failed outright
    opened_at: float = 0.0
    open_seconds: float = 0.0

    def http_open(self) -> int:
        return sum(1 for _, watch in self.http if not watch.done())

    def http_refused_503(self) -> int:
        return sum(1 for _, watch in self.http
                   if watch.done() and not watch.cancelled() and watch.exception() is None
                   and watch.result().startswith(b"HTTP/1.1 503"))

    def smtp_open(self) -> int:
        return sum(1 for _, watch in self.smtp if not watch.done())

    def close(self) -> None:
        for w, watch in [*self.smtp, *self.http]:
            watch.cancel()
            w.transport.abort()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes (a reset counts as closed)."""
    got = b""
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            got += chunk
    return got


async def open_attack(daemon: Daemon, n: int) -> Attack:
    attack = Attack()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def smtp(i: int) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", daemon.smtp_port, local_addr=(ATTACKERS[i % 2], 0)), 30)
            except (OSError, TimeoutError) as exc:
                attack.smtp_codes[f"connect failed ({type(exc).__name__})"] += 1
                return
            try:
                line = await asyncio.wait_for(reader.readline(), 30)
            except (OSError, TimeoutError) as exc:
                line = f"({type(exc).__name__})".encode()
        code = line[:3].decode("ascii", "replace") or "closed"
        attack.smtp_codes[code] += 1
        if code == "220":  # idle from now on: never a command
            attack.smtp.append((writer, asyncio.ensure_future(_read_all(reader))))
        else:
            writer.transport.abort()

    async def http(i: int) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", daemon.http_port, local_addr=(ATTACKERS[i % 2], 0)), 30)
            except (OSError, TimeoutError):
                attack.http_failed += 1
                return
        if i % 4 >= 2:  # half of them start a request and stop halfway through its line
            writer.write(b"GET /healthz HT")
        attack.http.append((writer, asyncio.ensure_future(_read_all(reader))))

    began = time.monotonic()
    await asyncio.gather(*(smtp(i) for i in range(n)), *(http(i) for i in range(n)))
    attack.opened_at = time.monotonic()
    attack.open_seconds = attack.opened_at - began
    return attack


@dataclass
class Cut:
    """A slow client: how long until the server cut it, and what it said."""
    seconds: float | None = None  # None: not cut within the wait
    said: bytes = b""
    sent: int = 0


async def _dribble(writer: asyncio.StreamWriter, data: bytes, until: asyncio.Future[Any],
                   wait: float, cut: Cut) -> None:
    """Write ``data`` one byte a second until ``until`` is done (the server answered or
    closed), the write fails, or ``wait`` seconds have gone by; then give ``until`` 2 s more.
    ``cut.seconds`` is taken when ``until`` finished, counted from now."""
    began = time.monotonic()
    until.add_done_callback(lambda _: setattr(cut, "seconds", time.monotonic() - began))
    for byte in data:
        if until.done() or time.monotonic() - began > wait:
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            cut.sent += 1
        except OSError:
            break
        await asyncio.wait({until}, timeout=1.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(until), 2.0)


async def slowloris(port: int, wait: float) -> Cut:
    """One header byte a second, from the moment of connecting, until the server closes."""
    cut = Cut()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    watch = asyncio.ensure_future(_read_all(reader))
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        await _dribble(writer, request, watch, wait, cut)
        if watch.done():
            cut.said = watch.result()
    finally:
        watch.cancel()
        writer.transport.abort()
    return cut


async def trickle_data(port: int, wait: float) -> Cut:
    """A whole SMTP transaction up to DATA, then the message one byte a second; ``said`` is
    the server's next reply line."""
    cut = Cut()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer: asyncio.Future[tuple[int, bytes]] | None = None
    try:
        for command, want in ((None, 220), (b"EHLO slow.example.org", 250),
                              (f"MAIL FROM:<{MAIL_FROM}>".encode(), 250),
                              (f"RCPT TO:<{RCPT_TO}>".encode(), 250), (b"DATA", 354)):
            if command is not None:
                writer.write(command + b"\r\n")
            code, line = await asyncio.wait_for(_reply(reader), 10)
            if code != want:
                cut.said = line
                return cut
        answer = asyncio.ensure_future(_reply(reader))
        body = b"Subject: slow\r\n\r\n" + b"This line arrives one byte a second. " * 40
        await _dribble(writer, body, answer, wait, cut)
        if answer.done():
            error = answer.exception()
            cut.said = (answer.result()[1] if error is None
                        else f"(closed without a reply: {error!r})".encode())
    finally:
        if answer is not None:
            answer.cancel()
        writer.transport.abort()
    return cut


@dataclass
class Exhaustion:
    quiet_health: list[float]
    quiet_mail: list[float]
    quiet_fds: int
    quiet_rss_kb: int
    attack_n: int = 0
    smtp_codes: Counter[str] = field(default_factory=Counter)
    open_seconds: float = 0.0
    flood_health: list[float | None] = field(default_factory=list)
    http_kept_2s: int = 0
    http_total: int = 0
    http_503: int = 0
    attack_fds: int = 0
    attack_rss_kb: int = 0
    attack_health: list[float] = field(default_factory=list)
    attack_mail: list[float] = field(default_factory=list)
    attack_mail_error: str = ""
    loris: Cut = field(default_factory=Cut)
    trickle: Cut = field(default_factory=Cut)
    after_cuts_smtp_open: int = 0
    after_cuts_http_open: int = 0
    after_cuts_seconds: float = 0.0


async def exhaustion(daemon: Daemon, n: int) -> Exhaustion:
    # Quiet: after a warm-up, and with nothing left to process when each series starts.
    await asyncio.to_thread(healthz_series, daemon.http_port, 3)
    await asyncio.to_thread(legit_mails, daemon, 0, 1)
    await asyncio.to_thread(daemon.settle, pause=1.0)  # and the start's own work is done
    quiet_health = await asyncio.to_thread(healthz_series, daemon.http_port)
    quiet_mail = await asyncio.to_thread(legit_mails, daemon, 1)
    await asyncio.to_thread(daemon.settle)
    result = Exhaustion(quiet_health=quiet_health, quiet_mail=quiet_mail, quiet_fds=daemon.fds(),
                        quiet_rss_kb=daemon.status_kb("VmRSS"), attack_n=n)
    attack: Attack | None = None
    try:
        flood = HealthProbe(daemon.http_port, interval=0.02)
        try:
            attack = await open_attack(daemon, n)
        finally:
            result.flood_health = [v for _, v in flood.stop()]
        result.smtp_codes = attack.smtp_codes
        result.open_seconds = attack.open_seconds

        async def kept_after_2s(held: Attack) -> int:
            await asyncio.sleep(max(0.0, held.opened_at + 2.0 - time.monotonic()))
            return held.http_open()

        kept = asyncio.ensure_future(kept_after_2s(attack))  # counted while the rest runs
        # With the attack held (everything is open; the refused ones are closed by now).
        result.attack_health = await asyncio.to_thread(healthz_series, daemon.http_port)
        try:
            result.attack_mail = await asyncio.to_thread(legit_mails, daemon, 100)
        except (OSError, smtplib.SMTPException) as exc:
            result.attack_mail_error = repr(exc)
        result.attack_fds = daemon.fds()
        result.attack_rss_kb = daemon.status_kb("VmRSS")
        result.http_kept_2s = await kept
        result.http_total = len(attack.http) + attack.http_failed
        result.http_503 = attack.http_refused_503()
        # Slow clients from 127.0.0.1, the attack still held.
        result.loris, result.trickle = await asyncio.gather(
            slowloris(daemon.http_port, HEADER_TIMEOUT + 10),
            trickle_data(daemon.smtp_port, DATA_TIMEOUT + 10))
        await asyncio.sleep(0.2)
        result.after_cuts_seconds = time.monotonic() - attack.opened_at
        result.after_cuts_http_open = attack.http_open()
        result.after_cuts_smtp_open = attack.smtp_open()
    finally:
        if attack is not None:
            attack.close()
        await asyncio.sleep(0.5)  # let the daemon see the closes before what comes next
    await asyncio.to_thread(daemon.settle)
    return result


# --- part 2: hostile mail ------------------------------------------------------------------------

@dataclass
class Hostile:
    label: str
    size: int = 0
    receive_seconds: float = 0.0  # connect -> 250 (the mail goes over the wire, is journaled)
    to_conversation: float | None = None  # 250 -> its conversation exists
    conversation_id: int | None = None
    rss_before_kb: int = 0
    rss_peak_receiving_kb: int = 0  # sampled VmRSS, connect -> 250
    rss_peak_processing_kb: int = 0  # sampled VmRSS, 250 -> conversation
    hwm_kb: int | None = None  # VmHWM after a reset before sending
    health_receiving: list[float | None] = field(default_factory=list)
    health_processing: list[float | None] = field(default_factory=list)
    attachments: int | None = None
    text: str = ""
    error: str = ""


def _conversation_of(db: sqlite3.Connection, subject: str) -> int | None:
    row = db.execute("SELECT conversation_id FROM messages WHERE direction = 'in' AND subject = ?"
                     " ORDER BY id LIMIT 1", (subject,)).fetchone()
    return None if row is None else int(row[0])


def _failed(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM inbound_journal WHERE state = 'failed'")
               .fetchone()[0])


def hostile(daemon: Daemon, label: str, raw: bytes, subject: str, timeout: float = 60) -> Hostile:
    """Send ``raw`` from 127.0.0.1 and follow it into the store (see the module's docstring)."""
    h = Hostile(label=label, size=len(raw))
    daemon.settle()
    time.sleep(0.5)  # and what the last work freed is given back, as far as it will be
    db = _open_ro(daemon.db)
    failed_before = _failed(db)
    h.rss_before_kb = daemon.status_kb("VmRSS")
    hwm_reset = daemon.reset_peak_rss()
    rss = Sampler(lambda: float(daemon.status_kb("VmRSS")), interval=0.005)
    health: HealthProbe | None = None
    began = accepted = done = time.monotonic()
    try:
        health = HealthProbe(daemon.http_port, interval=0.01)
        began, accepted = send_mail(daemon.smtp_port, raw, sender="ada@example.org")
        h.receive_seconds = accepted - began
        deadline = accepted + timeout
        while time.monotonic() < deadline:
            h.conversation_id = _conversation_of(db, subject)
            if h.conversation_id is not None:
                h.to_conversation = time.monotonic() - accepted
                break
            if _failed(db) > failed_before:
                h.error = "its journal row failed (a dead letter)"
                break
            time.sleep(0.01)
        else:
            h.error = f"no conversation {timeout:.0f} s after its 250"
        done = time.monotonic()
        time.sleep(0.05)  # the last RSS samples
    except (OSError, smtplib.SMTPException) as exc:
        h.error = f"not accepted: {exc!r}"
    finally:
        rss_samples = rss.stop()
        health_samples = health.stop() if health is not None else []
        db.close()
    h.rss_peak_receiving_kb = int(max([v or 0 for v in between(rss_samples, began, accepted)],
                                      default=h.rss_before_kb))
    h.rss_peak_processing_kb = int(max([v or 0 for v in between(rss_samples, accepted, done)],
                                       default=h.rss_before_kb))
    if hwm_reset:
        h.hwm_kb = daemon.status_kb("VmHWM")
    h.health_receiving = between(health_samples, began, accepted)
    h.health_processing = between(health_samples, accepted, done)
    if h.conversation_id is not None:
        detail = daemon.cli("show", str(h.conversation_id))
        inbound = [m for m in detail["messages"] if m["direction"] == "in"]
        h.attachments = sum(len(m["attachments"]) for m in inbound)
        h.text = inbound[0]["text"] if inbound else ""
    return h


# --- the report ----------------------------------------------------------------------------------

def _s(seconds: float | None) -> str:
    return "not cut" if seconds is None else f"{seconds:.1f} s"


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def _grown(kb: int) -> str:
    return f"{kb / 1024:+.1f} MB"


def _max(values: list[float | None]) -> str:
    ok = [v for v in values if v is not None]
    failed = len(values) - len(ok)
    text = f"{ms(max(ok)) if ok else '-'} ({len(values)} req)"
    return text + (f", {failed} FAILED" if failed else "")


def _p50(values: list[float]) -> float:
    value = _percentile(sorted(values), 0.5)
    assert value is not None
    return value


Row = tuple[str, str, str, str]  # measurement, value, reference, check ("": a heading)


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "value", "reference", "check")
    body = [r for r in rows if any(r[1:])]
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for r in rows:
        if any(r[1:]):
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        else:
            print(r[0])
    print(line)


def report(ex: Exhaustion, many: Hostile, nested: Hostile, dead: list[dict[str, Any]],
           checks: list[tuple[str, bool]]) -> list[Row]:
    """The table's rows; every check is appended to ``checks`` as (name, passed)."""
    def mark(name: str, ok: bool) -> str:
        checks.append((name, ok))
        return f"ok: {name}" if ok else f"FAILED: {name}"

    codes = ex.smtp_codes
    other = sum(v for k, v in codes.items() if k not in ("220", "421"))
    quiet_p50, attack_p50 = _p50(ex.quiet_health), _p50(ex.attack_health)
    bound = 5 * quiet_p50 + 0.050
    flood_ok = [v for v in ex.flood_health if v is not None]
    quiet_mail = _p50(ex.quiet_mail)
    attack_mail = _p50(ex.attack_mail) if ex.attack_mail else None
    loris = ex.loris
    trickle = ex.trickle
    rows: list[Row] = [
        (f"1. {ex.attack_n:,} idle SMTP + {ex.attack_n:,} idle HTTP connections from "
         f"{' and '.join(ATTACKERS)}, opened in {ex.open_seconds:.1f} s", "", "", ""),
        ("SMTP greetings 220 / 421 / other",
         f"{codes.get('220', 0):,} / {codes.get('421', 0):,} / {other:,}",
         "caps 20 per client, 200 in all", mark("421s given", codes.get("421", 0) > 0)),
        ("HTTP connections kept open 2 s after",
         f"{ex.http_kept_2s:,} of {ex.http_total:,} (the others: {ex.http_503:,} got 503)",
         "caps 100 per client, 1,000 in all", "-"),
        ("/healthz while connecting: p50 / max",
         f"{ms(_percentile(sorted(flood_ok), 0.5))} / {_max(ex.flood_health)}",
         "every 20 ms from another process", "-"),
        ("daemon open fds under attack", f"{ex.attack_fds:,}", f"quiet {ex.quiet_fds:,}", "-"),
        ("daemon RSS under attack", _mb(ex.attack_rss_kb), f"quiet {_mb(ex.quiet_rss_kb)}", "-"),
        ("/healthz p50 under attack (20 req)",
         f"{ms(attack_p50)} (x{attack_p50 / quiet_p50:.2f})", f"quiet {ms(quiet_p50)}",
         mark(f"p50 < 5 x quiet + 50 ms = {ms(bound)}", attack_p50 < bound)),
        ("/healthz max under attack (20 req)",
         f"{ms(max(ex.attack_health))} (x{max(ex.attack_health) / max(ex.quiet_health):.2f})",
         f"quiet {ms(max(ex.quiet_health))}", "-"),
        ("legit mail connect -> 250 (p50 of 5)",
         (f"{ms(attack_mail)} (x{attack_mail / quiet_mail:.2f})" if attack_mail is not None
          else f"no 250: {ex.attack_mail_error}"),
         f"quiet {ms(quiet_mail)}",
         mark("legitimate mail got 250", attack_mail is not None)),
        ("slowloris HTTP, 1 header byte/s: cut",
         f"{_s(loris.seconds)} after {loris.sent} bytes"
         + (f", said {loris.said[:12].decode('ascii', 'replace')}..." if loris.said else ""),
         f"http.header_timeout {HEADER_TIMEOUT:g} s (default)",
         mark("cut within header_timeout", loris.seconds is not None
              and loris.seconds <= HEADER_TIMEOUT + SLACK)),
        ("SMTP DATA trickled 1 byte/s: cut",
         f"{_s(trickle.seconds)} after {trickle.sent} bytes, said "
         f"{trickle.said[:9].decode('ascii', 'replace')}...",
         f"data_timeout {DATA_TIMEOUT:g} s (set here)",
         mark("421 within data_timeout", trickle.seconds is not None
              and trickle.said.startswith(b"421")
              and trickle.seconds <= DATA_TIMEOUT + SLACK)),
        (f"attack still open {ex.after_cuts_seconds:.0f} s after it opened",
         f"SMTP {ex.after_cuts_smtp_open:,}, HTTP {ex.after_cuts_http_open:,}",
         "idle_timeout 60 s, header_timeout", "-"),
    ]
    for h in (many, nested):
        size = f"{h.size / MB:.1f} MB" if h.size >= MB else f"{h.size / 1024:.0f} KB"
        rows.append((f"2. {h.label} ({size}), from 127.0.0.1 with smtplib", "", "", ""))
        if h.error:
            rows.append(("ERROR", h.error, "", "-"))
        hwm = "-" if h.hwm_kb is None else _grown(h.hwm_kb - h.rss_before_kb)
        rows += [
            ("connect -> 250 (sent, journaled)", ms(h.receive_seconds), "", "-"),
            ("250 -> its conversation exists", ms(h.to_conversation), "", "-"),
            ("RSS growth: receiving / processing",
             f"{_grown(h.rss_peak_receiving_kb - h.rss_before_kb)} / "
             f"{_grown(h.rss_peak_processing_kb - h.rss_before_kb)} (VmHWM {hwm})",
             f"from {_mb(h.rss_before_kb)}", "-"),
            ("/healthz max while receiving", _max(h.health_receiving),
             "every 10 ms from another process", "-"),
            ("/healthz max while processing", _max(h.health_processing), "", "-"),
        ]
        if h is many:
            rows.append(("attachments stored",
                         "-" if h.attachments is None else f"{h.attachments:,}",
                         "email.max_attachments 100",
                         mark("<= 100 attachments", h.attachments is not None
                              and h.attachments <= 100)))
    innermost = nested.text.startswith(NESTED_TEXT)
    rows.append(("stored with its text; dead letters",
                 f"{'yes' if innermost else 'NO'}; {len(dead)}", "journal --failed --json",
                 mark("nested stored, no dead letter", innermost and not dead)))
    return rows


# --- main ----------------------------------------------------------------------------------------

def raise_own_file_limit(needed: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        sys.exit(f"this process may open {soft} files; the attack needs about {needed} "
                 "(raise the hard limit: ulimit -Hn, or use fewer --connections)")
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft:,}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=5000, metavar="N",
                   help="idle SMTP and idle HTTP connections each (5000)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, log, store)")
    p.add_argument("--probe-healthz", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--interval", type=float, default=0.01, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe_healthz:
        probe_main(args.probe_healthz, args.interval)
        return 0
    if args.connections < 100:
        p.error("--connections: at least 100 (the HTTP per-client cap is 100)")
    limit = raise_own_file_limit(2 * args.connections + 200)
    started = time.monotonic()
    print("frontdesk under hostile input (issue 14): one daemon, SQLite, over real sockets")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{os.uname().sysname} {os.uname().release}; load average "
          f"{os.getloadavg()[0]:.2f}; this process's open-file limit {limit}")
    print(f"code: {code_version()}")
    print(f'config: email.smtp_server.data_timeout = "{DATA_TIMEOUT:g}s" (default "10m"); '
          "acknowledgements off; every other limit at its default "
          f'(http.header_timeout "{HEADER_TIMEOUT:g}s")', flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="frontdesk-abuse-"))
    daemon: Daemon | None = None
    checks: list[tuple[str, bool]] = []
    notes: list[str] = []
    try:
        daemon = Daemon(tmp)
        print(f"daemon pid {daemon.pid}: SMTP 127.0.0.1:{daemon.smtp_port}, "
              f"HTTP 127.0.0.1:{daemon.http_port}", flush=True)
        print("1. connection exhaustion ...", flush=True)
        ex = asyncio.run(exhaustion(daemon, args.connections))
        print("2. hostile mail ...", flush=True)
        many = hostile(daemon, "100,000 MIME parts", many_parts_mail(100_000, msgid="abuse-many"),
                       "Scans")
        nested = hostile(daemon, "1,000 nested multipart levels",
                         nested_mail(1000, text=NESTED_TEXT, msgid="abuse-nested"),
                         "1000 levels")
        dead = daemon.cli("journal", "--failed")
        print()
        print_table(report(ex, many, nested, dead, checks))
        code = daemon.stop()
        if code != 0:
            notes.append(f"frontdesk exit code {code} after SIGTERM (want 0)")
        log = daemon.log.read_text(errors="replace").splitlines()
        limits = [line for line in log if "frontdesk.channels.connections" in line]
        notes.append(f"the daemon's log: {len(log)} lines, {len(limits)} from the connection "
                     f"limits, {sum('Traceback' in line for line in log)} tracebacks")
        notes += [f"  {line.split(' ', 2)[-1]}" for line in limits[:6]]
    finally:
        if daemon is not None:
            daemon.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
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
