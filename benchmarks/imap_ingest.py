#!/usr/bin/env python3
"""IMAP backlog ingest: N messages waiting in a real Dovecot, read by `frontdesk run` and by
django-helpdesk 2.6.1's `manage.py get_email`.

1. starts a stand-alone Dovecot (tests/support/dovecot.py: loopback, TLS with its own CA) and
   builds N messages (~2 KB plain text, one in five a reply with quoted history);
2. frontdesk, per store (SQLite; PostgreSQL too with ``--postgres-url``): writes the N messages
   into a new user's Maildir, starts ``frontdesk run`` as a subprocess on a fresh store, reading
   that mailbox over implicit TLS with the certificate verified, and polls the store until the
   journal holds N rows (everything read) and ``messages`` holds N rows (everything a
   conversation), timing both from the start; reads the daemon's peak resident memory (VmHWM,
   its journal writer process's added) and checks that SIGTERM exits 0, that no message is
   stored twice and that Dovecot reports every message \\Seen;
3. django-helpdesk (unless ``--no-peer``): the same N messages into another new user's Maildir,
   a Django project with a fresh SQLite database and one Queue on that mailbox (same Dovecot,
   same implicit-TLS port), then ``manage.py get_email`` timed from its start to its exit, its
   peak resident memory (ru_maxrss of that process), and checks that it made N tickets with one
   follow-up each and left no message in the mailbox (it deletes what it read). Its venv is
   made once (benchmarks/_helpdesk_peer.py) and reused;
4. prints a table and, per frontdesk store, the verdict against the targets: frontdesk reads the
   backlog >= 20x as fast as django-helpdesk, in less peak memory.

Usage (with the venv's python; needs Dovecot: apt-get install dovecot-imapd)::

    python -m benchmarks.imap_ingest [--messages 1000] [--batch 100] [--no-peer]
                                     [--peer-venv PATH] [--postgres-url URL] [--keep]

``--postgres-url`` defaults to ``$FRONTDESK_TEST_POSTGRES_URL`` (a server where the user may
CREATE DATABASE); without either, frontdesk runs on SQLite only. Exit code 1 when a check or a
verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from benchmarks import _helpdesk_peer as peer
from benchmarks._common import (
    PgDatabase,
    asyncpg_dsn,
    code_version,
    free_port,
    peak_rss_kib,
)
from tests.support import dovecot  # the same Dovecot the tests run

HERE = Path(__file__).resolve()

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")
POSTGRES_ENV = "FRONTDESK_TEST_POSTGRES_URL"

SPEED_TARGET = 20.0  # frontdesk's rate >= 20 x django-helpdesk's, in less peak memory


def make_mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n % 997}@example.org>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Order {100000 + n} has not arrived"
    msg["Message-ID"] = f"<bench-{n}@example.org>"
    body = (f"Hello,\n\nmy order {100000 + n} was due last week and has not arrived. "
            "Could you tell me where it is? " * 12 + "\n\nThanks,\nCustomer\n")
    if n % 5 == 0:
        msg["In-Reply-To"] = f"<earlier-{n}@example.com>"
        body = ("Still nothing, I am afraid.\n\nOn Mon, 23 Nov 2026 at 10:00, Example Support "
                "<support@example.com> wrote:\n" + "".join(f"> {line}\n"
                                                           for line in body.splitlines()))
    msg.set_content(body)
    return msg.as_bytes()


COUNTS = "SELECT (SELECT count(*) FROM inbound_journal), (SELECT count(*) FROM messages)"


def store_counts(url: str) -> tuple[int, int]:
    """(journal rows, messages) in frontdesk's store; (0, 0) while it cannot be read."""
    if url.startswith("sqlite"):
        try:
            conn = sqlite3.connect(f"file:{url.split('///', 1)[1]}?mode=ro", uri=True,
                                   timeout=5)
            try:
                journal, messages = conn.execute(COUNTS).fetchone()
            finally:
                conn.close()
        except sqlite3.OperationalError:
            return 0, 0
        return int(journal), int(messages)
    import asyncpg

    async def query() -> tuple[int, int]:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
        try:
            row = await conn.fetchrow(COUNTS)
        finally:
            await conn.close()
        return int(row[0]), int(row[1])

    return asyncio.run(query())


def peak_rss_mb(pid: int) -> float:
    kib = peak_rss_kib(pid)
    return float("nan") if kib is None else kib / 1024


@dataclass
class Row:
    tool: str
    store: str
    messages: int  # stored (frontdesk) or tickets made (django-helpdesk)
    seconds: float
    peak_mb: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def write_backlog(server: dovecot.Dovecot, mails: list[bytes]) -> dovecot.Mailbox:
    """A new user whose INBOX holds ``mails``, all unseen."""
    box = server.add_user()
    started = time.perf_counter()
    box.deliver_many(mails)
    print(f"  wrote {len(mails)} messages into {box.user}'s Maildir in "
          f"{time.perf_counter() - started:.1f} s")
    return box


def run_frontdesk(server: dovecot.Dovecot, mails: list[bytes], root: Path, store: str,
                  url: str, batch: int, failures: list[str]) -> Row:
    """``frontdesk run`` on the store at ``url`` until it has stored every mail."""
    print(f"frontdesk on {store}:")
    n = len(mails)
    box = write_backlog(server, mails)
    root.mkdir()
    http = free_port()
    config = root / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "{url}"
[http]
listen = "127.0.0.1:{http}"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{free_port()}"
[email.outbound]
port = 9
starttls = "off"
[email.imap]
host = "127.0.0.1"
port = {server.imaps_port}
ca_file = "{server.ca_file}"
username = "{box.user}"
password = "{box.password}"
fetch_batch = {batch}
[acknowledgement]
enabled = false
[daemon]
data_dir = "{root}/data"
log_level = "warning"
""")
    subprocess.run([FRONTDESK, "db", "upgrade", "-c", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    log_path = root / "frontdesk.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([FRONTDESK, "run", "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        read_at = done_at = None
        while done_at is None:
            if proc.poll() is not None:
                raise SystemExit("frontdesk exited:\n" + log_path.read_text())
            journal, messages = store_counts(url)
            now = time.perf_counter() - started
            if read_at is None and journal >= n:
                read_at = now
            if messages >= n:
                done_at = now
            time.sleep(0.1)
        peak = peak_rss_mb(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    fetched = next((line.split()[1] for line in metrics.splitlines()
                    if line.startswith("frontdesk_imap_fetched_total ")), "?")
    unseen = box.status()["unseen"]
    stored = store_counts(url)[1]
    assert read_at is not None
    print(f"  all read (journaled):  {read_at:6.1f} s  {n / read_at:7.0f} msg/s")
    print(f"  all conversations:     {done_at:6.1f} s  {n / done_at:7.0f} msg/s")
    print(f"  peak memory (VmHWM, with children): {peak:6.0f} MB")
    print(f"  fetched from IMAP: {fetched}; stored: {stored}; unseen left in Dovecot: {unseen}; "
          f"exit code after SIGTERM: {code}")
    if stored != n:
        failures.append(f"frontdesk on {store}: {stored} messages stored, expected {n}")
    if unseen != 0:
        failures.append(f"frontdesk on {store}: {unseen} messages left unseen in Dovecot")
    if code != 0:
        failures.append(f"frontdesk on {store}: exit code {code} after SIGTERM")
    return Row("frontdesk", store, stored, done_at, peak)


def run_peer(server: dovecot.Dovecot, mails: list[bytes], root: Path, venv: Path,
             failures: list[str]) -> Row:
    """django-helpdesk's ``manage.py get_email`` on the same backlog, on SQLite."""
    print(f"django-helpdesk {peer.PEER_VERSION} on SQLite ({venv}):")
    n = len(mails)
    box = write_backlog(server, mails)
    project = peer.HelpdeskProject(venv, root)
    project.setup(server.imaps_port, box.user, box.password)
    result = project.get_email()
    left = box.status()["messages"]
    print(f"  get_email:             {result.seconds:6.1f} s  {n / result.seconds:7.1f} msg/s "
          "(start -> exit)")
    print(f"  peak memory (maxrss):  {result.peak_mb:6.0f} MB")
    print(f"  tickets: {result.tickets}; follow-ups: {result.followups}; messages left in "
          f"Dovecot: {left}; exit code: {result.exit_code}")
    if result.tickets != n or result.followups != n:
        failures.append(f"django-helpdesk: {result.tickets} tickets and {result.followups} "
                        f"follow-ups made, expected {n} each (see {project.log})")
    if left != 0:
        failures.append(f"django-helpdesk: {left} messages left in Dovecot")
    if result.exit_code != 0:
        failures.append(f"django-helpdesk: get_email exited {result.exit_code}")
    return Row(f"django-helpdesk {peer.PEER_VERSION}", "SQLite", result.tickets,
               result.seconds, result.peak_mb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="email.imap.fetch_batch")
    parser.add_argument("--no-peer", action="store_true", help="frontdesk only")
    parser.add_argument("--peer-venv", type=Path, default=peer.DEFAULT_VENV,
                        help="the venv with django-helpdesk 2.6.1, made there if it is not "
                             f"(default {peer.DEFAULT_VENV})")
    parser.add_argument("--postgres-url", default=os.environ.get(POSTGRES_ENV, ""),
                        help="postgresql+asyncpg://user@host/db (default "
                             f"${POSTGRES_ENV}): frontdesk also on a fresh database there")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if args.postgres_url and not args.postgres_url.startswith("postgresql+asyncpg://"):
        parser.error("--postgres-url must look like postgresql+asyncpg://user@host/db")
    if not dovecot.available():
        print(dovecot.SKIP_REASON, file=sys.stderr)
        return 2
    n = args.messages
    print(f"IMAP backlog benchmark: {n} messages (fetch_batch {args.batch} for frontdesk)")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"code: {code_version()}; load average {os.getloadavg()[0]:.2f} "
          "(other work on the machine skews every figure)")
    peer_note = "--no-peer" if args.no_peer else peer.ensure_venv(args.peer_venv)
    if peer_note and not args.no_peer:
        print(f"precondition: {peer_note}\n  django-helpdesk is not measured.")
    mails = [make_mail(i) for i in range(n)]
    root = Path(tempfile.mkdtemp(prefix="frontdesk-imap-bench-"))
    root.chmod(0o755)
    server = dovecot.Dovecot(root)
    rows: list[Row] = []
    failures: list[str] = []
    helpdesk: Row | None = None
    try:
        server.start()
        sqlite_dir = root / "frontdesk-sqlite"
        rows.append(run_frontdesk(server, mails, sqlite_dir, "SQLite",
                                  f"sqlite+aiosqlite:///{sqlite_dir}/frontdesk.db", args.batch,
                                  failures))
        if args.postgres_url:
            database = PgDatabase(args.postgres_url)
            try:
                rows.append(run_frontdesk(server, mails, root / "frontdesk-postgresql",
                                          "PostgreSQL", database.url, args.batch, failures))
            finally:
                database.drop()
        if not peer_note:
            helpdesk = run_peer(server, mails, root / "helpdesk", args.peer_venv, failures)
            rows.append(helpdesk)
    finally:
        server.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'tool':<24}{'store':<12}{'messages':>9}{'seconds':>9}{'msgs/s':>9}"
          f"{'peak RSS MB':>13}")
    for row in rows:
        print(f"{row.tool:<24}{row.store:<12}{row.messages:>9}{row.seconds:>9.1f}"
              f"{row.rate:>9.1f}{row.peak_mb:>13.0f}")
    if not args.postgres_url:
        print(f"(PostgreSQL: not run; no --postgres-url and no ${POSTGRES_ENV})")
    print()
    verdicts_ok = True
    for row in rows:
        if row.tool != "frontdesk":
            continue
        label = f"frontdesk on {row.store}"
        if helpdesk is None:
            why = peer_note if args.no_peer else "django-helpdesk could not be installed"
            print(f"{label} ÷ django-helpdesk: not measured ({why})")
            continue
        ratio = row.rate / helpdesk.rate
        passed = ratio >= SPEED_TARGET and row.peak_mb < helpdesk.peak_mb
        verdicts_ok = verdicts_ok and passed
        print(f"{label} ÷ django-helpdesk: {ratio:.2f}x the rate (target >= {SPEED_TARGET:.0f}x), "
              f"peak memory {row.peak_mb:.0f} MB vs {helpdesk.peak_mb:.0f} MB (target: less) "
              f"-> {'PASS' if passed else 'FAIL'}")
    for failure in failures:
        print(f"CHECK FAILED: {failure}")
    print(f"checks: {'FAIL' if failures else 'PASS'}")
    return 0 if verdicts_ok and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
