#!/usr/bin/env python3
"""REST API throughput (issue 17): ``/api/v1`` of ``frontdesk run`` against a bare aiohttp handler.

Workloads (every request with ``Authorization: Bearer <a write token>``):

* ``list``: ``GET /api/v1/conversations?limit=50`` (the newest 50 summaries, a page of 200);
* ``show``: ``GET /api/v1/conversations/FD-n``, the seeded conversations in turn (each then
  holds its one customer message);
* ``reply``: ``POST /api/v1/conversations/FD-n/replies`` with ``{"text", "author"}`` (no
  ``Idempotency-Key``), the seeded conversations in turn, each text with a run id and a sequence
  number; every answer must be 202. The outbox sends each reply as an email to
  ``email.outbound``, here an SMTP sink on 127.0.0.1 (``tests.fakes.smtp_sink.SmtpSink`` on
  its own event loop in a thread of this process) that accepts everything: the sends succeed,
  and they run in the daemon while the load goes on, as they would in production.

For each of ``--rounds`` rounds (3) it

1. starts ``frontdesk run`` (a fresh SQLite store in a temp dir; ``[api] enabled = true`` with
   ``rate_limit = "1000000/1m"``; inbox ``support@example.com`` on an SMTP listener of its own;
   scheduler and acknowledgements off; the per-client connection cap raised since all load is
   from 127.0.0.1; log level warning) and waits for ``GET /readyz`` == 200;
2. makes a write token with ``frontdesk token create bench --scope write --json -c CONFIG``
   and seeds ``--conversations`` (200) conversations by mailing the daemon's SMTP listener
   (smtplib, one mail per session, each from its own customer), then polls
   ``GET /api/v1/conversations?limit=200`` (following ``next_cursor``) until all are there;
3. starts the bare peer: an aiohttp server in its own process answering the same three routes
   with a small fixed JSON body (200, or 202 for a reply, after reading the body) once the
   Authorization header equals the expected string, 401 otherwise: no token lookup, no
   validation, no store;
4. for each workload sends pre-encoded keep-alive HTTP/1.1 requests from C concurrent
   connections spread over P client processes (raw asyncio streams, so the client costs
   little), timing every request -> answer, to frontdesk (``--requests``, 1,200; ``reply``
   half that) and to the bare server (``--bare-requests``, 10,000: it is some 50 times faster,
   and a run of a tenth of a second would say little), which one going first flipping every
   round; after frontdesk's ``reply`` run it reads every seeded conversation back through
   ``GET /api/v1/conversations/FD-n``, checks that each reply sent is stored once, in its
   conversation, and notes how far the outbox got (delivery states, mails at the sink, and
   what it sends in up to 5 s more with no API load). The daemon is stopped (SIGTERM -> exit
   0) before the bare peer's run of the last workload, so its outbox backlog does not compete
   with it.

The table shows the median round of each workload (by the ratio); the ratio column is the
median of the rounds' ratios of request rates (frontdesk / bare). The issue sets no target:
the figures are printed for what they are. The CPU columns (a share of one core over the
send, from /proc) say which side was the limit: frontdesk near 100 % is its event loop
saturated. A check table follows (every answer 200 / 202, every reply stored, SIGTERM -> exit
0, the bare handler's answers, no traceback), then the daemon logs' warnings grouped. The
defaults take about 1-2 minutes on a 2-core machine; other work on the machine moves the
figures (the load average is printed at the start and the end).

Usage (from the repository root, with the venv's python)::

    python -m benchmarks.api_requests [--requests 1200] [--reply-requests N]
                                      [--bare-requests 10000] [--conversations 200]
                                      [--concurrency 20] [--clients 2] [--rounds 3]
                                      [--workloads list,show,reply] [--keep]

Exit code 0 when every check passed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from benchmarks._common import (
    InThread,
    code_version,
    free_port,
    frontdesk_executable,
    ms,
    start_frontdesk,
    stop_process,
    wait_http,
)
from benchmarks._load import chosen_workloads, load_options, log_summary, send, table

PREFIX = "/api/v1"
INBOX = "support@example.com"
RATE_LIMIT = "1000000/1m"
WORKLOADS = ("list", "show", "reply")
OK = {"list": 200, "show": 200, "reply": 202}
LIST_LIMIT = 50
TEXTS = [
    "Hi, my order 1234 has not arrived yet, can you check?",
    "The parcel came but the box was crushed and one glass is broken.",
    "Can I change the delivery address to my office for tomorrow?",
    "I was charged twice for the same order, please refund one of them.",
    "Thanks, that solved it! \u00e4\u00f6\u00fc / 100 % happy",
]
REPLY_TEXT = ("Thanks for writing. We have looked at your order and a replacement is on its "
              "way; you will get the tracking number by email tomorrow.")
REPLY = re.compile(r"^bench ([0-9a-f]{8})-(\d+) ")
DRAIN = 5.0  # seconds the outbox is watched sending replies after the reply run, at most
SEED_TIMEOUT = 120.0  # seconds for the seeded mails to become conversations, at most


# --- the requests -------------------------------------------------------------------------------

def build_requests(workload: str, n: int, port: int, token: str, refs: list[str],
                   run: str) -> tuple[list[bytes], dict[int, str]]:
    """N complete keep-alive HTTP/1.1 requests of ``workload``; for ``reply`` also sequence
    number -> the conversation it answers."""
    auth = f"Authorization: Bearer {token}\r\n"
    common = (f"Host: 127.0.0.1:{port}\r\n{auth}Accept: application/json\r\n"
              "User-Agent: bench-api/1.0\r\n")
    requests: list[bytes] = []
    replies: dict[int, str] = {}
    if workload == "list":
        one = f"GET {PREFIX}/conversations?limit={LIST_LIMIT} HTTP/1.1\r\n{common}\r\n".encode()
        requests = [one] * n
    elif workload == "show":
        by_ref = {ref: f"GET {PREFIX}/conversations/{ref} HTTP/1.1\r\n{common}\r\n".encode()
                  for ref in refs}
        requests = [by_ref[refs[i % len(refs)]] for i in range(n)]
    else:
        for i in range(n):
            ref = refs[i % len(refs)]
            body = json.dumps({"text": f"bench {run}-{i} {REPLY_TEXT}", "author": "Bench"},
                              separators=(",", ":")).encode()
            head = (f"POST {PREFIX}/conversations/{ref}/replies HTTP/1.1\r\n{common}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            requests.append(head.encode() + body)
            replies[i] = ref
    return requests, replies


# --- the client (separate processes) ------------------------------------------------------------

# the client processes, the send and the log summary: benchmarks._load

def bare_main(port: int, token: str) -> None:
    from aiohttp import web

    expected = f"Bearer {token}"
    listed = json.dumps({"items": [], "next_cursor": None}).encode()
    shown = json.dumps({"id": 1, "reference": "FD-1", "status": "open", "messages": []}).encode()
    queued = json.dumps({"id": 1, "direction": "out", "delivery_status": "queued"}).encode()
    refused = json.dumps({"error": "a valid token is needed"}).encode()

    def answer(request: web.Request, status: int, body: bytes) -> web.Response:
        if request.headers.get("Authorization") != expected:
            status, body = 401, refused
        return web.Response(status=status, body=body, content_type="application/json")

    async def conversations(request: web.Request) -> web.Response:
        return answer(request, 200, listed)

    async def show(request: web.Request) -> web.Response:
        return answer(request, 200, shown)

    async def reply(request: web.Request) -> web.Response:
        await request.read()
        return answer(request, 202, queued)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(f"{PREFIX}/conversations", conversations)
    app.router.add_get(f"{PREFIX}/conversations/{{ref}}", show)
    app.router.add_post(f"{PREFIX}/conversations/{{ref}}/replies", reply)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Bare:
    """The bare peer in a process of its own; ``stop`` is idempotent."""

    def __init__(self, token: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.api_requests", "--bare", "--port",
             str(self.port), "--token", token],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SinkThread(InThread):
    """``SmtpSink`` (the outbound relay: accepts every mail) in a thread of this process."""

    def __init__(self) -> None:
        from tests.fakes.smtp_sink import SmtpSink

        self.sink = SmtpSink(hostname="relay.test")
        super().__init__(self.sink, "smtp-sink")

    def start(self) -> int:  # the port (InThread.start says nothing)
        super().start()
        return int(self.sink.port)

    def received(self) -> int:
        return len(self.sink.messages)


class Daemon:
    """``frontdesk run`` with the API on, a fresh SQLite store in ``tmp``; ``stop`` is
    idempotent."""

    def __init__(self, tmp: Path, relay_port: int, concurrency: int) -> None:
        self.tmp = tmp
        self.http_port, self.smtp_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp / 'frontdesk.db'}"
[http]
listen = "127.0.0.1:{self.http_port}"
max_connections_per_client = {max(1000, concurrency + 100)}
[email]
inbox_addresses = ["{INBOX}"]
[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "frontdesk.test"
[email.outbound]
host = "127.0.0.1"
port = {relay_port}
from = "Example Support <{INBOX}>"
starttls = "off"
[api]
enabled = true
rate_limit = "{RATE_LIMIT}"
[scheduler]
enabled = false
[acknowledgement]
enabled = false
[daemon]
data_dir = "{tmp / 'data'}"
log_level = "warning"
""")
        self.log = tmp / "frontdesk.log"
        self.process = start_frontdesk(self.config, self.http_port, self.log)
        self.pid = self.process.pid
        self.exit_code: int | None = None
        self._stopped = False

    def stop(self) -> int | None:
        if not self._stopped:
            self._stopped = True
            self.exit_code = stop_process(self.process)
        return self.exit_code

    def create_token(self) -> str:
        done = subprocess.run([frontdesk_executable(), "token", "create", "bench", "--scope",
                               "write", "--json", "-c", str(self.config)],
                              capture_output=True, text=True, timeout=120, cwd=self.tmp)
        if done.returncode != 0:
            raise SystemExit(f"frontdesk token create failed (exit {done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
        return str(json.loads(done.stdout)["token"])

    def get(self, token: str, path: str) -> Any:
        """One API GET, its JSON (raises on anything but 200)."""
        request = urllib.request.Request(self.base + path,
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())

    def references(self, token: str) -> list[str]:
        """Every conversation's reference through the API, oldest first."""
        refs: list[str] = []
        cursor = None
        while True:
            page = self.get(token, f"{PREFIX}/conversations?limit=200"
                            + (f"&cursor={cursor}" if cursor else ""))
            refs += [item["reference"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                return refs[::-1]


def seed(daemon: Daemon, token: str, n: int, run: str) -> tuple[list[str], float]:
    """``n`` customers mail the inbox, each from an address of its own; returns the
    conversations' references once the API lists all ``n``, and the seconds it took."""
    began = time.monotonic()
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = f"Customer {i:04d} <customer{i:04d}.{run}@example.org>"
        msg["To"] = INBOX
        msg["Subject"] = f"Order {1000 + i} question"
        msg["Message-ID"] = f"<bench.{run}.{i}@example.org>"
        msg.set_content(TEXTS[i % len(TEXTS)] + f"\n\nCustomer {i}\n")
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as s:
            s.sendmail(f"customer{i:04d}.{run}@example.org", [INBOX],
                       msg.as_bytes(policy=SMTP_POLICY))
    refs: list[str] = []
    while time.monotonic() - began < SEED_TIMEOUT:
        refs = daemon.references(token)
        if len(refs) >= n:
            return refs, time.monotonic() - began
        time.sleep(0.2)
    raise SystemExit(f"only {len(refs)} of {n} seeded conversations listed within "
                     f"{SEED_TIMEOUT:.0f} s:\n" + daemon.log.read_text())


async def stored_replies(daemon: Daemon, token: str, refs: list[str],
                         run: str) -> tuple[dict[int, list[str]], Counter[str]]:
    """Every reply of ``run`` the API shows in the seeded conversations (sequence number ->
    the conversations it is in), and their delivery states."""
    import aiohttp

    found: dict[int, list[str]] = {}
    states: Counter[str] = Counter()
    gate = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async def one(ref: str) -> None:
            async with gate, http.get(f"{daemon.base}{PREFIX}/conversations/{ref}") as r:
                if r.status != 200:
                    raise SystemExit(f"GET {ref} answered {r.status}: {await r.text()}")
                detail = await r.json()
            for m in detail["messages"]:
                match = REPLY.match(m.get("text") or "")
                if m["direction"] == "out" and match and match.group(1) == run:
                    found.setdefault(int(match.group(2)), []).append(ref)
                    states[str(m.get("delivery_status"))] += 1

        await asyncio.gather(*(one(ref) for ref in refs))
    return found, states


# --- one run ------------------------------------------------------------------------------------

@dataclass
class Result:
    workload: str
    server: str
    requests: int
    elapsed: float
    latencies: list[float]
    statuses: dict[str, int]
    server_cpu: float  # seconds, over the send
    client_cpu: float  # seconds, all client processes

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed

    def pct(self, q: float) -> float | None:
        lat = self.latencies
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None


@dataclass
class Checks:
    answers: list[str] = field(default_factory=list)  # frontdesk: not every answer 200 / 202
    stored: list[str] = field(default_factory=list)  # replies not stored once, where sent
    exits: list[str] = field(default_factory=list)
    bare: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fd_requests: int = 0
    replies: int = 0
    reply_runs: int = 0


def run_frontdesk(workload: str, n: int, args: argparse.Namespace, daemon: Daemon, token: str,
                  refs: list[str], round_no: int, checks: Checks, sink: SinkThread) -> Result:
    run = secrets.token_hex(4)
    requests, replies = build_requests(workload, n, daemon.http_port, token, refs, run)
    sent_before = sink.received()
    sent = send(daemon.http_port, requests, args.concurrency, args.clients, daemon.tmp,
                daemon.pid)
    result = Result(workload, "frontdesk", n, sent["elapsed"], sent["latencies"],
                    sent["statuses"], sent["server_cpu"], sent["client_cpu"])
    want = str(OK[workload])
    checks.fd_requests += n
    if sent["statuses"] != {want: n}:
        checks.answers.append(f"round {round_no} {workload}: answers {sent['statuses']}, not "
                              f"{n} x {want} (e.g. {sent['samples']})")
    if workload == "reply":
        began = time.monotonic()
        found, states = asyncio.run(stored_replies(daemon, token, refs, run))
        missing = [i for i in replies if i not in found]
        twice = [i for i, where in found.items() if len(where) > 1]
        misplaced = [i for i, where in found.items() if replies.get(i) not in where]
        checks.replies += len(replies)
        checks.reply_runs += 1
        if missing or twice or misplaced:
            checks.stored.append(f"round {round_no}: {len(found)} of {len(replies)} replies "
                                 f"stored; {len(missing)} missing, {len(twice)} twice, "
                                 f"{len(misplaced)} in another conversation")
        read_back = time.monotonic() - began
        at_sink = sink.received() - sent_before
        drained, drain = drain_outbox(sink, sent_before + len(replies))
        checks.notes.append(
            f"round {round_no} reply: {len(found):,} of {len(replies):,} stored (read back in "
            f"{read_back:.1f} s); their delivery states then {dict(states.most_common())}, "
            f"{at_sink:,} at the relay sink; the outbox then sent {drained:,} more in "
            f"{drain:.1f} s ({drained / drain if drain else 0:,.0f}/s with no API load)")
    return result


def drain_outbox(sink: SinkThread, total: int) -> tuple[int, float]:
    """Until the sink has ``total`` mails, or ``DRAIN`` seconds: how many arrived meanwhile,
    and the seconds."""
    before, began = sink.received(), time.monotonic()
    while sink.received() < total and time.monotonic() - began < DRAIN:
        time.sleep(0.1)
    return sink.received() - before, time.monotonic() - began


def run_bare(workload: str, args: argparse.Namespace, bare: Bare, token: str,
             refs: list[str], tmp: Path, checks: Checks) -> Result:
    n = args.bare_requests
    requests, _ = build_requests(workload, n, bare.port, token, refs, secrets.token_hex(4))
    sent = send(bare.port, requests, args.concurrency, args.clients, tmp, bare.process.pid)
    want = str(OK[workload])
    if sent["statuses"] != {want: n}:
        checks.bare.append(f"{workload}: bare answers {sent['statuses']} "
                           f"(e.g. {sent['samples']})")
    return Result(workload, "bare", n, sent["elapsed"], sent["latencies"], sent["statuses"],
                  sent["server_cpu"], sent["client_cpu"])


def run_round(i: int, workloads: list[str], sizes: dict[str, int], args: argparse.Namespace,
              tmp: Path, sink: SinkThread, checks: Checks,
              pairs: dict[str, list[tuple[Result, Result]]]) -> None:
    daemon = Daemon(tmp, sink.sink.port, args.concurrency)
    bare: Bare | None = None
    try:
        token = daemon.create_token()
        refs, seeded = seed(daemon, token, args.conversations, secrets.token_hex(4))
        print(f"  round {i + 1}: {len(refs)} conversations seeded in {seeded:.1f} s",
              flush=True)
        bare = Bare(token)
        for workload in workloads:
            n = sizes[workload]
            if i % 2 == 0:
                ours = run_frontdesk(workload, n, args, daemon, token, refs, i + 1, checks,
                                     sink)
                if workload == workloads[-1]:  # its outbox backlog is not the bare run's load
                    daemon.stop()
                theirs = run_bare(workload, args, bare, token, refs, tmp, checks)
            else:
                theirs = run_bare(workload, args, bare, token, refs, tmp, checks)
                ours = run_frontdesk(workload, n, args, daemon, token, refs, i + 1, checks,
                                     sink)
            pairs[workload].append((ours, theirs))
            print(f"  round {i + 1} {workload:5}: frontdesk {ours.rate:6,.0f} req/s (p50 "
                  f"{ms(ours.pct(0.5))}, p99 {ms(ours.pct(0.99))}), bare {theirs.rate:6,.0f} "
                  f"req/s, ratio {ours.rate / theirs.rate:.3f}", flush=True)
    finally:
        if bare is not None:
            bare.stop()
        code = daemon.stop()
    if code != 0:
        checks.exits.append(f"round {i + 1}: exit {code} on SIGTERM")


# --- the report ---------------------------------------------------------------------------------

NAMES = {"list": f"GET {PREFIX}/conversations?limit={LIST_LIMIT}",
         "show": f"GET {PREFIX}/conversations/FD-n",
         "reply": f"POST {PREFIX}/conversations/FD-n/replies"}


def report(pairs: dict[str, list[tuple[Result, Result]]], checks: Checks,
           logs: list[Path]) -> bool:
    rows: list[list[str]] = []
    lines: list[str] = []
    for workload, runs in pairs.items():
        ratios = [o.rate / b.rate for o, b in runs]
        ratio = statistics.median(ratios)
        ours, bare = sorted(runs, key=lambda p: p[0].rate / p[1].rate)[len(runs) // 2]
        for r in (ours, bare):
            name = ("frontdesk (token, validation, store)" if r.server == "frontdesk"
                    else "bare aiohttp (header compare, fixed JSON)")
            rows.append([workload if r is ours else "", name, f"{r.rate:,.0f}",
                         ms(r.pct(0.5)), ms(r.pct(0.99)),
                         f"{100 * r.server_cpu / r.elapsed:.0f} %",
                         f"{100 * r.client_cpu / r.elapsed:.0f} %",
                         f"{ratio:.3f}" if r is ours else ""])
        lines.append(
            f"{workload} ({NAMES[workload]}): ratios {', '.join(f'{x:.3f}' for x in ratios)} "
            f"-> median {ratio:.3f}; frontdesk {', '.join(f'{o.rate:,.0f}' for o, _ in runs)}"
            f" req/s, bare {', '.join(f'{b.rate:,.0f}' for _, b in runs)}")
    print("\nThe median round of each workload (by ratio); ratio = frontdesk req/s / bare "
          "req/s, median over the rounds; p50/p99 per request; CPU as a share of one core over "
          "the send (server: all its threads; client: all client processes)\n")
    table(["workload", "server", "req/s", "p50", "p99", "server CPU", "client CPU", "ratio"],
          rows)
    print()
    for line in lines:
        print(f"- {line}")
    notes, tracebacks = log_summary(logs)
    results = [
        (f"every frontdesk answer 200 (list, show) / 202 (reply) ({checks.fd_requests:,} "
         "requests)", not checks.answers),
        (f"every reply stored once, in its conversation ({checks.replies:,} over "
         f"{checks.reply_runs} run(s), read back through the API)", not checks.stored),
        ("frontdesk exits 0 on SIGTERM", not checks.exits),
        ("the bare handler answered every request 200 / 202", not checks.bare),
        ("no traceback in the daemon logs", tracebacks == 0),
    ]
    print("\n| check | result |\n|---|---|")
    for name, ok in results:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} |")
    for line in checks.answers + checks.stored + checks.exits + checks.bare:
        print(f"  {line}")
    print()
    for line in checks.notes:
        print(f"note: {line}")
    print("daemon log (level warning): "
          + ("nothing logged" if not notes and not tracebacks else
             f"{tracebacks} traceback(s)" + "".join(f"\n  {n}" for n in notes)))
    return all(ok for _, ok in results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=1200,
                   help="requests to frontdesk per list and show run (1200)")
    p.add_argument("--reply-requests", type=int,
                   help="requests to frontdesk per reply run (default: half of --requests)")
    p.add_argument("--bare-requests", type=int, default=10000,
                   help="requests to the bare peer per run (10000)")
    p.add_argument("--conversations", type=int, default=200,
                   help="conversations seeded by mail per round (200)")
    load_options(p, WORKLOADS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        bare_main(args.port, args.token)
        return 0
    workloads = chosen_workloads(p, args, WORKLOADS)  # reply last: it leaves outbox work
    reply_requests = args.reply_requests or max(1, args.requests // 2)
    if min(args.requests, reply_requests, args.bare_requests, args.conversations) < 1:
        p.error("--requests, --reply-requests, --bare-requests and --conversations must be >= 1")
    sizes = {"list": args.requests, "show": args.requests, "reply": reply_requests}
    started = time.monotonic()
    print("the REST API (issue 17): "
          + ", ".join(f"{w} {sizes[w]:,}" for w in workloads)
          + f" requests per frontdesk run, {args.bare_requests:,} per bare run; "
          f"{args.conversations} conversations; {args.concurrency} connections over "
          f"{min(args.clients, args.concurrency)} client processes; {args.rounds} round(s)")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"code: {code_version()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fd-api-bench-"))
    sink = SinkThread()
    checks = Checks()
    pairs: dict[str, list[tuple[Result, Result]]] = {w: [] for w in workloads}
    logs: list[Path] = []
    try:
        sink.start()
        for i in range(args.rounds):
            run_dir = tmp / f"round-{i}"
            run_dir.mkdir()
            logs.append(run_dir / "frontdesk.log")
            run_round(i, workloads, sizes, args, run_dir, sink, checks, pairs)
            if not args.keep:
                for name in ("frontdesk.db", "frontdesk.db-wal", "frontdesk.db-shm"):
                    (run_dir / name).unlink(missing_ok=True)
        ok = report(pairs, checks, logs)
    finally:
        sink.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\nload average at the end (1, 5, 15 min; this run's own processes included): "
          + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f"; took {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
