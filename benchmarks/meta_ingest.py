#!/usr/bin/env python3
"""Meta webhook ingest throughput (issue 16): ``frontdesk run`` against a bare aiohttp handler.

Workloads (each a separate run, every message under a fresh id):

* ``messenger``: single-message POSTs, a ``page`` object with one entry of one Messenger text
  event (``mid`` fresh per request, a few hundred senders);
* ``whatsapp``: single-message POSTs, a ``whatsapp_business_account`` object with one text
  message (fresh ``id``) and its contact;
* ``batch10``: a ``page`` object with 10 entries of one Messenger text event each, i.e. 10
  messages per POST, as Meta batches events under load (``--batch-requests`` POSTs, by
  default a quarter of ``--requests``).

Every body is compact JSON as Meta writes it (``tests.fakes.meta.meta_json``) and signed as Meta
signs it: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body with the app secret>``
(plus the legacy SHA-1 ``X-Hub-Signature``).

For each of ``--rounds`` rounds (3) and each workload it

1. starts ``frontdesk run`` (fresh SQLite store in a temp dir, the ``[meta]`` section with
   Messenger and WhatsApp on, its Graph API the loopback ``FakeGraph`` of ``tests.fakes.meta``
   running in this process so the background profile jobs have somewhere to go; scheduler and
   acknowledgements off, the per-client connection cap raised since all load is from 127.0.0.1)
   and waits for ``GET /readyz`` == 200;
2. sends N pre-encoded signed POSTs to ``/webhooks/meta`` from C concurrent keep-alive HTTP/1.1
   connections spread over P client processes (raw asyncio streams, so the client costs little),
   timing every POST -> answer;
3. checks, with the daemon still running, that every answer was 200 and that the journal holds
   exactly the message ids sent (``inbound_journal``, ``channel = 'meta'``): the daemon answers
   200 only after the POST's messages are committed, so this is "every message journaled before
   its 200"; then stops the daemon (SIGTERM -> exit 0) with its processing backlog;
4. sends the same kind of load to a bare aiohttp server in its own process whose handler reads
   the body, checks the same HMAC with ``hmac.compare_digest`` and answers 200 without parsing
   or storing anything.

Frontdesk and bare alternate (which goes first flips every round). The table shows the median
round of each workload (by the ratio); the ratio column is the median of the rounds' ratios
of request rates, the verdict against the target of 0.4. The CPU columns (a share of one core
over the send, from /proc) say which side was the limit: frontdesk near 100 % is its event loop
saturated. A check table follows (every id journaled, SIGTERM -> exit 0, the bare handler's
answers, no traceback), then the daemon logs' warnings grouped. The defaults take about 2-3
minutes on a 2-core machine; other work on the machine moves the figures (the load average is
printed at the start and the end).

Usage (from the repository root, with the venv's python)::

    python -m benchmarks.meta_ingest [--requests 60000] [--batch-requests N] [--concurrency 20]
                                     [--clients 2] [--rounds 3]
                                     [--workloads messenger,whatsapp,batch10] [--keep]

Exit code 0 when every workload meets the target and every check passed, else 1.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import (
    InThread,
    code_version,
    free_port,
    ms,
    start_frontdesk,
    stop_process,
    wait_http,
)
from benchmarks._load import chosen_workloads, load_options, log_summary, send, table

TARGET_RATIO = 0.4
PATH = "/webhooks/meta"
VERIFY_TOKEN = "bench"
CUSTOMERS = 397  # distinct senders per workload (a prime, so batches mix them)
BATCH = 10
WORKLOADS = ("messenger", "whatsapp", "batch10")
TEXTS = [
    "Hi, my order 1234 has not arrived yet, can you check?",
    "The parcel came but the box was crushed and one glass is broken.",
    "Can I change the delivery address to my office for tomorrow?",
    "I was charged twice for the same order, please refund one of them.",
    "Thanks, that solved it! \u00e4\u00f6\u00fc / 100 % happy",
]


def _psid(k: int) -> str:
    return f"{24_700_000_000_000_000 + k % CUSTOMERS}"


def _wa_id(k: int) -> str:
    return f"49151{10_000_000 + k % CUSTOMERS}"


# --- the requests -------------------------------------------------------------------------------

def build_requests(workload: str, n: int, port: int) -> tuple[list[bytes], list[str]]:
    """N complete keep-alive HTTP/1.1 POSTs of ``workload``, signed, and every message id in
    them (all fresh: a run id no other run shares)."""
    from tests.fakes.meta import (
        APP_SECRET,
        PAGE_ID,
        PHONE_NUMBER_ID,
        messenger_event,
        meta_json,
        page_payload,
        sign,
        wa_text,
        whatsapp_payload,
    )

    run = secrets.token_hex(4)
    requests: list[bytes] = []
    ids: list[str] = []
    secret = APP_SECRET.encode()
    for i in range(n):
        if workload == "whatsapp":
            wamid = f"wamid.bench{run}{i:08d}"
            payload = whatsapp_payload(PHONE_NUMBER_ID, messages=[
                wa_text(_wa_id(i), wamid, TEXTS[i % len(TEXTS)])])
            ids.append(wamid)
        else:
            size = BATCH if workload == "batch10" else 1
            events = []
            for j in range(size):
                k = i * size + j
                mid = f"m_bench{run}.{k:08d}"
                events.append(messenger_event(_psid(k), PAGE_ID, text=TEXTS[k % len(TEXTS)],
                                              mid=mid))
                ids.append(mid)
            payload = page_payload(PAGE_ID, *events)  # one entry per event
        body = meta_json(payload)
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nUser-Agent: facebookexternalua\r\n"
                f"X-Hub-Signature: sha1={hmac.new(secret, body, hashlib.sha1).hexdigest()}\r\n"
                f"X-Hub-Signature-256: {sign(APP_SECRET, body)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests, ids


# --- the client (separate processes) ------------------------------------------------------------

# the client processes, the send and the log summary: benchmarks._load

def bare_main(port: int) -> None:
    from aiohttp import web

    from tests.fakes.meta import APP_SECRET

    secret = APP_SECRET.encode()

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        given = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.Response(status=403, text="bad signature\n")
        return web.Response(text="ok\n")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(PATH, handler)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class GraphThread(InThread):
    """The loopback ``FakeGraph`` in a thread of this process, with a profile for every
    customer (the daemon's background profile jobs ask for them)."""

    def __init__(self) -> None:
        from tests.fakes.meta import FakeGraph

        self.graph = FakeGraph()
        for k in range(CUSTOMERS):
            self.graph.profiles[_psid(k)] = {"first_name": "Customer", "last_name": f"{k:03d}"}
        super().__init__(self.graph, "fake-graph")

    def start(self) -> str:  # the base URL (InThread.start says nothing)
        super().start()
        return str(self.graph.base_url)

    def requests_seen(self) -> int:
        return len(self.graph.requests)


# --- one run ------------------------------------------------------------------------------------

@dataclass
class Result:
    workload: str
    server: str
    requests: int
    messages: int
    elapsed: float
    latencies: list[float]
    statuses: dict[str, int]
    server_cpu: float  # seconds, over the send
    client_cpu: float  # seconds, all client processes
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed

    @property
    def msg_rate(self) -> float:
        return self.messages / self.elapsed

    def pct(self, q: float) -> float | None:
        lat = self.latencies
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None


@dataclass
class Checks:
    journaled: list[str] = field(default_factory=list)  # failures of "every id journaled"
    exits: list[str] = field(default_factory=list)
    bare: list[str] = field(default_factory=list)
    fd_runs: int = 0
    fd_messages: int = 0


def _journal(db: Path) -> tuple[int, set[str], int]:
    """(rows of channel 'meta', their remote ids, rows in ``messages``) read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        count = conn.execute(
            "SELECT count(*) FROM inbound_journal WHERE channel='meta'").fetchone()[0]
        ids = {row[0] for row in conn.execute(
            "SELECT remote_id FROM inbound_journal WHERE channel='meta'")}
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()
    return count, ids, messages


def _config(tmp: Path, port: int, graph_url: str, concurrency: int) -> Path:
    from tests.fakes.meta import APP_SECRET, PAGE_ID, PHONE_NUMBER_ID

    config = tmp / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp / 'frontdesk.db'}"
[http]
listen = "127.0.0.1:{port}"
public_url = "https://support.example.com"
max_connections_per_client = {max(1000, concurrency + 100)}
[email.smtp_server]
listen = "127.0.0.1:{free_port()}"
[meta]
app_secret = "{APP_SECRET}"
verify_token = "{VERIFY_TOKEN}"
api_base_url = "{graph_url}"
page_id = "{PAGE_ID}"
page_access_token = "PAGE-TOKEN"
whatsapp_phone_number_id = "{PHONE_NUMBER_ID}"
whatsapp_access_token = "WA-TOKEN"
[scheduler]
enabled = false
[acknowledgement]
enabled = false
[daemon]
data_dir = "{tmp / 'data'}"
log_level = "warning"
""")
    return config


def run_frontdesk(workload: str, n: int, args: argparse.Namespace, tmp: Path,
                  graph: GraphThread, checks: Checks) -> Result:
    port = free_port()
    config = _config(tmp, port, graph.graph.base_url, args.concurrency)
    graph_before = graph.requests_seen()
    proc = start_frontdesk(config, port, tmp / "frontdesk.log")
    try:
        requests, ids = build_requests(workload, n, port)
        sent = send(port, requests, args.concurrency, args.clients, tmp, proc.pid)
        count, journaled, processed = _journal(tmp / "frontdesk.db")
    finally:
        code = stop_process(proc)
    result = Result(workload, "frontdesk", n, len(ids), sent["elapsed"], sent["latencies"],
                    sent["statuses"], sent["server_cpu"], sent["client_cpu"])
    problems = []
    if sent["statuses"] != {"200": n}:
        problems.append(f"answers {sent['statuses']}, not {n} x 200 (e.g. {sent['samples']})")
    missing = len(set(ids) - journaled)
    if count != len(ids) or missing:
        problems.append(f"journal holds {count} meta rows for {len(ids)} ids sent, "
                        f"{missing} of them missing")
    if problems:
        checks.journaled.append(f"{workload} ({tmp.name}): " + "; ".join(problems))
    if code != 0:
        checks.exits.append(f"{workload} ({tmp.name}): exit {code} on SIGTERM")
    checks.fd_runs += 1
    checks.fd_messages += len(ids)
    result.notes.append(f"journal {count}/{len(ids)}, {processed} made messages by the end of "
                        f"the send, {graph.requests_seen() - graph_before} Graph requests")
    return result


def run_bare(workload: str, n: int, args: argparse.Namespace, tmp: Path,
             checks: Checks) -> Result:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.meta_ingest", "--bare",
                             "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        requests, ids = build_requests(workload, n, port)
        sent = send(port, requests, args.concurrency, args.clients, tmp, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if sent["statuses"] != {"200": n}:
        checks.bare.append(f"{workload}: bare answers {sent['statuses']} "
                           f"(e.g. {sent['samples']})")
    return Result(workload, "bare", n, len(ids), sent["elapsed"], sent["latencies"],
                  sent["statuses"], sent["server_cpu"], sent["client_cpu"])


# --- the report ---------------------------------------------------------------------------------

def report(pairs: dict[str, list[tuple[Result, Result]]], checks: Checks,
           logs: list[Path]) -> bool:
    rows: list[list[str]] = []
    verdicts: list[str] = []
    met = True
    for workload, runs in pairs.items():
        ratios = [o.rate / b.rate for o, b in runs]
        ratio = statistics.median(ratios)
        ours, bare = sorted(runs, key=lambda p: p[0].rate / p[1].rate)[len(runs) // 2]
        per = ours.messages // ours.requests
        for r in (ours, bare):
            name = ("frontdesk (signature + journal)" if r.server == "frontdesk"
                    else "bare aiohttp (signature only)")
            rows.append([workload if r is ours else "", name, str(per), f"{r.rate:,.0f}",
                         f"{r.msg_rate:,.0f}", ms(r.pct(0.5)), ms(r.pct(0.99)),
                         f"{100 * r.server_cpu / r.elapsed:.0f} %",
                         f"{100 * r.client_cpu / r.elapsed:.0f} %",
                         f"{ratio:.2f}" if r is ours else ""])
        met = met and ratio >= TARGET_RATIO
        verdicts.append(
            f"{workload}: ratios {', '.join(f'{x:.3f}' for x in ratios)} -> median {ratio:.3f} "
            f"({'meets' if ratio >= TARGET_RATIO else 'MISSES'} {TARGET_RATIO}); frontdesk "
            f"{min(o.rate for o, _ in runs):,.0f}-{max(o.rate for o, _ in runs):,.0f} POSTs/s, "
            f"bare {min(b.rate for _, b in runs):,.0f}-{max(b.rate for _, b in runs):,.0f}")
    print("\nThe median round of each workload (by ratio); ratio = frontdesk POSTs/s / bare "
          "POSTs/s, median over the rounds; p50/p99 per POST; CPU as a share of one core over "
          "the send (server: all its threads; client: all client processes)\n")
    table(["workload", "server", "msgs/POST", "POSTs/s", "msgs/s", "p50", "p99", "server CPU",
           "client CPU", "ratio"], rows)
    print()
    for line in verdicts:
        print(f"- {line}")
    notes, tracebacks = log_summary(logs)
    results = [
        (f"every message journaled before its 200 ({checks.fd_messages:,} ids over "
         f"{checks.fd_runs} frontdesk runs: all answers 200, journal = the ids sent)",
         not checks.journaled),
        ("frontdesk exits 0 on SIGTERM", not checks.exits),
        ("the bare handler answered every POST 200", not checks.bare),
        ("no traceback in the daemon logs", tracebacks == 0),
    ]
    print("\n| check | result |\n|---|---|")
    for name, ok in results:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} |")
    for line in checks.journaled + checks.exits + checks.bare:
        print(f"  {line}")
    print("\ndaemon log (level warning): "
          + ("nothing logged" if not notes and not tracebacks else
             f"{tracebacks} traceback(s)" + "".join(f"\n  {n}" for n in notes)))
    return met and all(ok for _, ok in results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=60000,
                   help="POSTs per single-message run (60000)")
    p.add_argument("--batch-requests", type=int,
                   help="POSTs per batch10 run (default: a quarter of --requests)")
    load_options(p, WORKLOADS)
    args = p.parse_args()
    if args.bare:
        bare_main(args.port)
        return 0
    workloads = chosen_workloads(p, args, WORKLOADS)
    batch_requests = args.batch_requests or max(1, args.requests // 4)
    if min(args.requests, batch_requests) < 1:
        p.error("--requests and --batch-requests must be >= 1")
    sizes = {"messenger": args.requests, "whatsapp": args.requests, "batch10": batch_requests}
    rounds = args.rounds
    started = time.monotonic()
    print("signed Meta webhooks (issue 16): "
          + ", ".join(f"{w} {sizes[w]:,} POSTs" for w in workloads)
          + f" per run; {args.concurrency} connections over {min(args.clients, args.concurrency)}"
          f" client processes; {rounds} round(s)")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"code: {code_version()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fd-meta-bench-"))
    graph = GraphThread()
    checks = Checks()
    pairs: dict[str, list[tuple[Result, Result]]] = {w: [] for w in workloads}
    logs: list[Path] = []
    try:
        graph.start()
        for i in range(rounds):
            for workload in workloads:
                run_dir = tmp / f"{workload}-{i}"
                run_dir.mkdir()
                logs.append(run_dir / "frontdesk.log")
                n = sizes[workload]
                if i % 2 == 0:
                    ours = run_frontdesk(workload, n, args, run_dir, graph, checks)
                    bare = run_bare(workload, n, args, run_dir, checks)
                else:
                    bare = run_bare(workload, n, args, run_dir, checks)
                    ours = run_frontdesk(workload, n, args, run_dir, graph, checks)
                pairs[workload].append((ours, bare))
                if not args.keep:  # the stores of a batch run are ~100 MB; the log stays
                    for name in ("frontdesk.db", "frontdesk.db-wal", "frontdesk.db-shm",
                                 *(f.name for f in run_dir.glob("requests-*.pickle"))):
                        (run_dir / name).unlink(missing_ok=True)
                print(f"  round {i + 1} {workload:9}: frontdesk {ours.rate:6,.0f} POSTs/s "
                      f"({ours.msg_rate:6,.0f} msgs/s, p99 {ms(ours.pct(0.99))}), bare "
                      f"{bare.rate:6,.0f} POSTs/s, ratio {ours.rate / bare.rate:.2f}; "
                      f"{ours.notes[0]}", flush=True)
        ok = report(pairs, checks, logs)
    finally:
        graph.stop()
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
