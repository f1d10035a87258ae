"""Helpers the benchmark scripts share (each script runs from the repository root as
``python -m benchmarks.<name>``)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The repository's HEAD, and whether the working tree differs from it (read-only git)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def frontdesk_executable() -> str:
    candidate = Path(sys.executable).parent / "frontdesk"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("frontdesk")
    if not found:
        sys.exit("cannot find the `frontdesk` console script: run this with the venv's python")
    return found


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as asyncpg's own DSN."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_execute(url: str, sql: str) -> None:
    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


class PgDatabase:
    """A fresh database (``fd_bench_<hex>``) on the PostgreSQL server of ``url``, which the
    user must be allowed to create; :attr:`url` names it, :meth:`drop` removes it."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        self.admin = url
        self.name = f"fd_bench_{secrets.token_hex(4)}"
        try:
            _pg_execute(url, f'CREATE DATABASE "{self.name}"')
        except Exception as exc:  # noqa: BLE001 - any connection or permission problem
            sys.exit(f"cannot create a PostgreSQL database with {make_url(url)!r}: {exc}")
        self.url = make_url(url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        _pg_execute(self.admin, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def peak_rss_kib(pid: int) -> int | None:
    """The peak resident memory (``VmHWM``, KiB) of a running daemon and of its child processes
    (the SQLite journal's writer), added up: what the service takes. None when it is gone."""

    def one(p: int) -> int | None:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    own = one(pid)
    if own is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(one(int(child)) or 0 for child in children)


def start_frontdesk(config: Path, http_port: int, log: Path,
                    timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """``frontdesk run -c config`` in the config's folder, its output appended to ``log``;
    returns once ``GET /readyz`` answers 200. Ends the benchmark, with the log, if the daemon
    exits or is not ready within ``timeout`` seconds."""
    with log.open("ab") as out:
        process = subprocess.Popen([frontdesk_executable(), "run", "-c", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=config.parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("frontdesk exited during start:\n" + log.read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz",
                                        timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    sys.exit(f"frontdesk not ready within {timeout:.0f} s:\n" + log.read_text())


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Until ``url`` answers 200 (a bare peer server starting); ends the benchmark otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
    """SIGTERM, then the exit code; None if it had to be killed after ``timeout`` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def ms(seconds: float | None) -> str:
    """A latency for a table: "4.4 ms", "1,234 ms"; "-" for none."""
    if seconds is None:
        return "-"
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


class InThread:
    """An async fake (``await fake.start()``, ``await fake.stop()``) on its own event loop in a
    thread of this process, for the whole benchmark: the daemon under test calls it over
    loopback while the benchmark's own code stays synchronous."""

    def __init__(self, fake: Any, name: str) -> None:
        self.fake = fake
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(30)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

