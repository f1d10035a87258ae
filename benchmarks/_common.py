"""Helpers the benchmark scripts share (each script runs as ``python benchmarks/<name>.py``, so
this module is importable as ``_common``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

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
