"""Load for the HTTP benchmarks: pre-encoded keep-alive HTTP/1.1 requests sent from client
processes (raw asyncio streams, so the client costs little), every request timed; the server's
CPU over the send from /proc; and the daemon logs' warnings grouped.

``send`` starts the clients as ``python -m benchmarks._load --client ...``: each sends its share
of the requests over its connections and writes its timings back, pickled, on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

CLIENT_TIMEOUT = 300.0  # seconds one client process may take for its share, at most
READ_TIMEOUT = 60.0  # seconds one answer may take, at most


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(port: int, queue: list[bytes], latencies: list[float],
                      statuses: Counter[str], samples: list[str]) -> None:
    """Sends from the shared queue until it is empty; a broken connection costs its request
    (counted as status "error") and is opened again."""
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while queue:
            request = queue.pop()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                started = time.perf_counter()
                writer.write(request)
                status, body = await asyncio.wait_for(_answer(reader), READ_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                statuses["error"] += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}"[:200])
                if writer is not None:
                    writer.close()
                writer = reader = None
                continue
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] += 1
            if status >= 300 and len(samples) < 3:
                samples.append(f"{status}: {body[:160].decode('latin-1')}")
    finally:
        if writer is not None:
            writer.close()


def client_main(port: int, connections: int, requests_file: str) -> None:
    queue = list(reversed(pickle.loads(Path(requests_file).read_bytes())))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[str] = []

    cpu: list[float] = []

    async def run() -> tuple[float, float]:
        cpu.append(time.process_time())
        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(_connection(port, queue, latencies, statuses, samples)
                             for _ in range(connections))), CLIENT_TIMEOUT)
        end = time.perf_counter()
        cpu.append(time.process_time())
        return start, end

    start, end = asyncio.run(run())
    result = {"start": time.time() - (time.perf_counter() - start), "elapsed": end - start,
              "cpu": cpu[1] - cpu[0], "latencies": latencies,
              "statuses": dict(statuses), "samples": samples}
    sys.stdout.buffer.write(pickle.dumps(result))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples a process's CPU time every 20 ms in a thread, so the CPU of a window known only
    afterwards (the clients' first start to their last finish) can be read off."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.time(), cpu_seconds(self._pid)))
            self._stop.wait(0.02)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> float:
        def at(t: float) -> float:
            before = [c for when, c in self._samples if when <= t]
            return before[-1] if before else self._samples[0][1]

        return at(end) - at(start) if self._samples else float("nan")


def send(port: int, requests: list[bytes], connections: int, clients: int,
         tmp: Path, server_pid: int) -> dict[str, Any]:
    """The load from ``clients`` processes; wall time is first start to last finish; the
    server's CPU time over the send (from the first client's start to the last one's end)."""
    clients = max(1, min(clients, connections))
    per = [connections // clients + (1 if i < connections % clients else 0)
           for i in range(clients)]
    procs = []
    for i in range(clients):
        path = tmp / f"requests-{i}.pickle"
        path.write_bytes(pickle.dumps(requests[i::clients]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks._load", "--client", "--port", str(port),
             "--concurrency", str(per[i]), "--requests-file", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
    results = []
    try:
        with CpuSampler(server_pid) as sampler:
            for p in procs:
                out, _ = p.communicate(timeout=CLIENT_TIMEOUT + 60)
                if p.returncode != 0:
                    raise SystemExit(f"a client process failed (exit {p.returncode})")
                results.append(pickle.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for i in range(clients):
            (tmp / f"requests-{i}.pickle").unlink(missing_ok=True)
    first = min(r["start"] for r in results)
    last = max(r["start"] + r["elapsed"] for r in results)
    server_cpu = sampler.between(first, last)
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    return {"elapsed": last - first, "server_cpu": server_cpu,
            "client_cpu": sum(r["cpu"] for r in results),
            "latencies": sorted(x for r in results for x in r["latencies"]),
            "statuses": dict(statuses),
            "samples": [s for r in results for s in r["samples"]][:3]}


# --- the servers --------------------------------------------------------------------------------


RECORD = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* (WARNING|ERROR|CRITICAL) (\S+) (.*)$")


def log_summary(logs: list[Path]) -> tuple[list[str], int]:
    """The daemon logs' warnings and errors grouped (digits as N), and the tracebacks."""
    loud: Counter[str] = Counter()
    tracebacks = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            record = RECORD.match(line)
            if record:
                level, logger, text = record.groups()
                loud[f"{level} {logger.rstrip(':')} {re.sub(r'[0-9]+', 'N', text)[:140]}"] += 1
            elif line.startswith("Traceback"):
                tracebacks += 1
            elif re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line):
                loud[re.sub(r"[0-9]+", "N", line)[:160]] += 1
    return [f"{n} x {text}" for text, n in loud.most_common(8)], tracebacks


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def load_options(p: argparse.ArgumentParser, workloads: tuple[str, ...]) -> None:
    """The options every load benchmark has: connections, client processes, rounds, which
    workloads, keeping the temp dir; and the hidden ones its bare peer process is started with."""
    p.add_argument("--concurrency", "-c", type=int, default=20,
                   help="concurrent keep-alive connections (20)")
    p.add_argument("--clients", "-p", type=int, default=2, help="client processes (2)")
    p.add_argument("--rounds", "-r", type=int, default=3,
                   help="alternating frontdesk/bare rounds; the ratio is the median (3)")
    p.add_argument("--workloads", default=",".join(workloads),
                   help=f"comma-separated, of {', '.join(workloads)} (all)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)


def chosen_workloads(p: argparse.ArgumentParser, args: argparse.Namespace,
                     workloads: tuple[str, ...]) -> list[str]:
    """``--workloads``, in the benchmark's own order (a usage error for an unknown one)."""
    chosen = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not chosen or chosen - set(workloads):
        p.error(f"--workloads: a comma-separated list of {', '.join(workloads)}")
    if min(args.concurrency, args.clients, args.rounds) < 1:
        p.error("--concurrency, --clients and --rounds must be >= 1")
    return [w for w in workloads if w in chosen]


def main() -> None:
    p = argparse.ArgumentParser(description="one client process of benchmarks._load.send")
    p.add_argument("--client", action="store_true", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--requests-file", required=True)
    args = p.parse_args()
    client_main(args.port, args.concurrency, args.requests_file)


if __name__ == "__main__":
    main()
