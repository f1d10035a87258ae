#!/usr/bin/env python3
"""IMAP backlog ingest: N messages waiting in a real Dovecot, `frontdesk run` reads them all.

1. starts a stand-alone Dovecot (tests/dovecot.py: loopback, TLS with its own CA) and writes N
   messages (~2 KB plain text, one in five a reply with quoted history) into a user's Maildir;
2. starts ``frontdesk run`` as a subprocess on a fresh SQLite store, reading that mailbox
   over implicit TLS with the certificate verified;
3. polls the store until the journal holds N rows (everything read from the mailbox) and
   ``messages`` holds N rows (everything a conversation), timing both from the start;
4. reads the daemon's peak resident memory (VmHWM) and checks that SIGTERM exits 0, that no
   message is stored twice and that Dovecot reports every message \\Seen.

Usage (with the venv's python; needs Dovecot: apt-get install dovecot-imapd)::

    python -m benchmarks.imap_ingest [--messages 5000] [--batch 100] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from benchmarks._common import free_port
from tests.support import dovecot  # the same Dovecot the tests run

HERE = Path(__file__).resolve()

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


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


def count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100, help="email.imap.fetch_batch")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if not dovecot.available():
        print(dovecot.SKIP_REASON, file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="frontdesk-imap-bench-"))
    root.chmod(0o755)
    server = dovecot.Dovecot(root)
    proc: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        box = server.add_user()
        started = time.perf_counter()
        box.deliver_many([make_mail(n) for n in range(args.messages)])
        print(f"wrote {args.messages} messages into the Maildir in "
              f"{time.perf_counter() - started:.1f} s")
        db = root / "frontdesk.db"
        url = f"sqlite+aiosqlite:///{db}"
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
fetch_batch = {args.batch}
[acknowledgement]
enabled = false
[daemon]
data_dir = "{root}/data"
log_level = "warning"
""")
        subprocess.run([FRONTDESK, "db", "upgrade", "-c", str(config)], check=True,
                       stdout=subprocess.DEVNULL)
        log = (root / "frontdesk.log").open("wb")
        started = time.perf_counter()
        proc = subprocess.Popen([FRONTDESK, "run", "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=root)
        read_at = done_at = None
        while done_at is None:
            if proc.poll() is not None:
                raise SystemExit("frontdesk exited:\n" + (root / "frontdesk.log").read_text())
            journal, messages = count(db, "inbound_journal"), count(db, "messages")
            now = time.perf_counter() - started
            if read_at is None and journal >= args.messages:
                read_at = now
            if messages >= args.messages:
                done_at = now
            time.sleep(0.1)
        peak = peak_rss_mb(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        proc = None
        fetched = next((line.split()[1] for line in metrics.splitlines()
                        if line.startswith("frontdesk_imap_fetched_total ")), "?")
        unseen = box.status()["unseen"]
        assert read_at is not None
        n = args.messages
        print(f"messages:              {n} (fetch_batch {args.batch})")
        print(f"all read (journaled):  {read_at:6.1f} s  {n / read_at:7.0f} msg/s")
        print(f"all conversations:     {done_at:6.1f} s  {n / done_at:7.0f} msg/s")
        print(f"peak memory (VmHWM):   {peak:6.0f} MB")
        print(f"fetched from IMAP:     {fetched}; unseen left in Dovecot: {unseen}; "
              f"exit code after SIGTERM: {code}")
        stored = count(db, "messages")
        assert stored == n, f"{stored} messages stored, expected {n}"
        assert unseen == 0 and code == 0
        return 0
    finally:
        if proc is not None:
            proc.kill()
        server.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
