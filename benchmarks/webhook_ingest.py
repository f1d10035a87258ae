#!/usr/bin/env python3
"""Twilio webhook ingest throughput: ``frontdesk run`` against a bare aiohttp handler.

1. starts ``frontdesk run`` as a subprocess (Twilio channel on, fresh SQLite store in a temp dir)
   and waits for ``GET /readyz`` == 200;
2. sends N signed SMS webhooks (unique MessageSids, a few hundred customers, each signed with the
   twilio library's own ``RequestValidator.compute_signature`` against the public URL, as Twilio
   signs them) from C concurrent keep-alive HTTP/1.1 connections spread over P client processes
   (raw asyncio streams with pre-encoded requests, so the client is not the bottleneck), timing
   every request -> response;
3. checks that every answer was 200 and that the journal holds N rows (each one committed before
   its 200), then waits until the processor has turned them all into messages;
4. repeats the send against a bare aiohttp server in its own subprocess whose handler reads the
   body and answers 200 with empty TwiML, without checking or storing anything;
5. repeats 1-4 for ``--rounds`` alternating rounds (5), each against a fresh daemon and store;
   only the last waits for the processor (a backlog of 20,000 takes minutes to work off, and
   would compete with the next round);
6. prints requests per second, p50 and p99 latency of the median round, every round's ratio,
   and the median ratio, which is the verdict (one round's ratio swings with whatever else the
   machine runs; the median of alternating rounds much less).

Usage (with the venv's python)::

    python -m benchmarks.webhook_ingest [--requests 20000] [--connections 20] [--clients 4]
                                        [--rounds 5] [--quick] [--keep] [--process-timeout 900]

The target: frontdesk's rate >= 0.4 x the bare handler's (the median over the rounds), every
message journaled before its 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from benchmarks._common import free_port, start_frontdesk, stop_process, wait_http

HERE = Path(__file__).resolve()
TARGET_RATIO = 0.4
PUBLIC_URL = "https://support.example.com"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "benchmark-auth-token-0123456789ab"
OURS = "+15550001111"
PATH = "/webhooks/twilio/sms"
BODIES = [
    "Hi, my order 1234 has not arrived yet, can you check?",
    "The parcel came but the box was crushed and one glass is broken.",
    "Can I change the delivery address to my office for tomorrow?",
    "I was charged twice for the same order, please refund one of them.",
    "Thanks, that solved it!",
]


# --- the requests -------------------------------------------------------------------------------

def signed_requests(n: int, port: int, run_id: str) -> list[bytes]:
    """N complete HTTP/1.1 requests (keep-alive), each a signed Twilio SMS webhook."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(AUTH_TOKEN)
    url = PUBLIC_URL + PATH
    out = []
    for i in range(n):
        sid = f"SM{run_id}{i:022x}"[:34]
        form = {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
                "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "CA",
                "SmsStatus": "received", "FromCity": "", "Body": BODIES[i % len(BODIES)],
                "FromCountry": "US", "To": OURS, "ToZip": "", "NumSegments": "1",
                "MessageSid": sid, "AccountSid": ACCOUNT_SID,
                "From": f"+1555{2000000 + i % 397:07d}", "ApiVersion": "2010-04-01"}
        body = urlencode(form).encode()
        signature = validator.compute_signature(url, form)
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n"
                f"X-Twilio-Signature: {signature}\r\nUser-Agent: TwilioProxy/1.1\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


# --- the client (a separate process) -----------------------------------------------------------

async def _connection(port: int, queue: list[bytes], latencies: list[float],
                      statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def client_main(port: int, connections: int, requests_file: str) -> None:
    requests = json.loads(Path(requests_file).read_text())
    queue = [r.encode("latin-1") for r in reversed(requests)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def run() -> tuple[float, float]:
        start = time.perf_counter()
        await asyncio.gather(*(_connection(port, queue, latencies, statuses)
                               for _ in range(connections)))
        return start, time.perf_counter()

    start, end = asyncio.run(run())
    print(json.dumps({"start": time.time() - (time.perf_counter() - start),
                      "elapsed": end - start, "latencies": latencies,
                      "statuses": {str(k): v for k, v in statuses.items()}}))


def send(port: int, requests: list[bytes], connections: int, clients: int,
         tmp: Path) -> dict[str, Any]:
    """Run the load from ``clients`` processes; wall time is first start to last finish."""
    shares = [requests[i::clients] for i in range(clients)]
    per = [connections // clients + (1 if i < connections % clients else 0)
           for i in range(clients)]
    procs = []
    for i, share in enumerate(shares):
        path = tmp / f"requests-{i}.json"
        path.write_text(json.dumps([r.decode("latin-1") for r in share]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.webhook_ingest", "--client", "--port", str(port),
             "--connections", str(max(1, per[i])), "--requests-file", str(path)],
            stdout=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a client process failed (exit {p.returncode})")
        results.append(json.loads(out))
    first = min(r["start"] for r in results)
    last = max(r["start"] + r["elapsed"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {"elapsed": last - first, "latencies": latencies, "statuses": statuses}


# --- the servers --------------------------------------------------------------------------------

def bare_main(port: int) -> None:
    from aiohttp import web

    empty = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=empty, content_type="text/xml")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(PATH, handler)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class Result:
    name: str
    requests: int
    elapsed: float
    p50: float
    p99: float
    statuses: dict[str, int]

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed


def _result(name: str, n: int, sent: dict[str, Any]) -> Result:
    lat = sent["latencies"]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return Result(name, n, sent["elapsed"], pct(0.5), pct(0.99), sent["statuses"])


def _counts(db: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        journal = conn.execute("SELECT count(*) FROM inbound_journal").fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM inbound_journal WHERE state = 'pending'").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()
    return journal, pending, messages


def run_frontdesk(n: int, c: int, clients: int, tmp: Path, process_timeout: float,
                  wait_processed: bool = True) -> Result:
    """One round against a fresh ``frontdesk run``; with ``wait_processed`` also waits until
    the processor has made every journaled message a message (else it stops the daemon with
    its backlog, which stays journaled)."""
    port, smtp = free_port(), free_port()
    db = tmp / "frontdesk.db"
    config = tmp / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{db}"
[http]
listen = "127.0.0.1:{port}"
public_url = "{PUBLIC_URL}"
[email.smtp_server]
listen = "127.0.0.1:{smtp}"
[twilio]
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
sms_from = "{OURS}"
api_base_url = "http://127.0.0.1:9"
[acknowledgement]
enabled = false
[daemon]
data_dir = "{tmp}/data"
log_level = "warning"
""")
    proc = start_frontdesk(config, port, tmp / "frontdesk.log")
    try:
        requests = signed_requests(n, port, secrets.token_hex(3))
        sent = send(port, requests, c, clients, tmp)
        journal, _, messages = _counts(db)
        deadline = time.monotonic() + process_timeout
        while wait_processed:
            journal, pending, messages = _counts(db)
            if (pending == 0 and messages >= n) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        code = stop_process(proc)
    result = _result("frontdesk (signature + journal)", n, sent)
    problems = []
    if result.statuses != {"200": n}:
        problems.append(f"answers {result.statuses}, not {n} x 200")
    if journal != n:
        problems.append(f"journal holds {journal} rows, not {n}")
    if wait_processed and messages != n:
        problems.append(f"{messages} messages processed, not {n}")
    if code != 0:
        problems.append(f"frontdesk exited {code} on SIGTERM")
    if problems:
        raise SystemExit("frontdesk run is not right: " + "; ".join(problems)
                         + f" (log: {tmp / 'frontdesk.log'})")
    print(f"  verified: {n} x 200, journal = {n}"
          + (" = messages" if wait_processed else " (processing not awaited)")
          + ", SIGTERM exit 0", flush=True)
    return result


def run_bare(n: int, c: int, clients: int, tmp: Path) -> Result:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.webhook_ingest", "--bare",
                             "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        sent = send(port, signed_requests(n, port, secrets.token_hex(3)), c, clients, tmp)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return _result("bare aiohttp handler (no check, no store)", n, sent)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=20000, help="requests per run (20000)")
    p.add_argument("--connections", "-c", type=int, default=20, help="concurrent clients (20)")
    p.add_argument("--clients", "-p", type=int, default=4, help="client processes (4)")
    p.add_argument("--rounds", "-r", type=int, default=5,
                   help="alternating frontdesk/bare rounds; the verdict is the median ratio (5)")
    p.add_argument("--quick", action="store_true", help="2000 requests, 1 round: a smoke check")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (log, store)")
    p.add_argument("--process-timeout", type=float, default=900.0,
                   help="seconds to wait for the processor to store every message (900)")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--requests-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args.port, args.connections, args.requests_file)
        return 0
    if args.bare:
        bare_main(args.port)
        return 0
    n = 2000 if args.quick else args.requests
    rounds = 1 if args.quick else max(1, args.rounds)
    clients = max(1, min(args.clients, args.connections))
    tmp = Path(tempfile.mkdtemp(prefix="fd-webhook-bench-"))
    print(f"{n} signed Twilio SMS webhooks, {args.connections} connections over {clients} "
          f"client processes, {rounds} round(s), {os.cpu_count()} CPUs, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    pairs: list[tuple[Result, Result]] = []
    try:
        for i in range(rounds):
            # the last round also waits until every message is processed (the check that the
            # journal is worked off); earlier ones stop the daemon with its backlog journaled
            last = i == rounds - 1
            (tmp / f"frontdesk-{i}").mkdir()
            ours = run_frontdesk(n, args.connections, clients, tmp / f"frontdesk-{i}",
                                 args.process_timeout, wait_processed=last)
            bare = run_bare(n, args.connections, clients, tmp)
            pairs.append((ours, bare))
            if rounds > 1:
                print(f"  round {i + 1}: frontdesk {ours.rate:.0f}/s, bare {bare.rate:.0f}/s, "
                      f"ratio {ours.rate / bare.rate:.2f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    ratios = sorted(o.rate / b.rate for o, b in pairs)
    ratio = statistics.median(ratios)
    ours, bare = sorted(pairs, key=lambda p: p[0].rate / p[1].rate)[len(pairs) // 2]
    print(f"\n{'server (the median round)':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in (ours, bare):
        print(f"{r.name:44} {r.rate:8.0f} {r.p50:8.2f} {r.p99:8.2f}")
    if rounds > 1:
        print(f"frontdesk over the rounds: {min(o.rate for o, _ in pairs):.0f}-"
              f"{max(o.rate for o, _ in pairs):.0f} req/s; bare: "
              f"{min(b.rate for _, b in pairs):.0f}-{max(b.rate for _, b in pairs):.0f}; "
              f"ratios: {', '.join(f'{x:.2f}' for x in ratios)}")
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"\nratio frontdesk / bare = {ratio:.2f}{' (median)' if rounds > 1 else ''} "
          f"({verdict} the target of {TARGET_RATIO})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
