"""Schemathesis against a running ``frontdesk run``: requests generated from ``/api/openapi.json``
(valid and invalid ones) never make a 5xx, and every answer fits the document (status, content
type, schema)."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CHECKS = ("not_a_server_error,response_schema_conformance,status_code_conformance,"
          "content_type_conformance")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A daemon with the API on, a write token and three conversations."""
    http, smtp = _port(), _port()
    config = tmp_path / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/fd.db"
[http]
listen = "127.0.0.1:{http}"
[api]
enabled = true
rate_limit = "100000/1m"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{smtp}"
hostname = "frontdesk.test"
[email.outbound]
host = "127.0.0.1"
port = 9
from = "Support <support@example.com>"
starttls = "off"
[daemon]
data_dir = "{tmp_path}/data"
[scheduler]
enabled = false
""")
    frontdesk = str(BIN / "frontdesk")
    token = subprocess.run([frontdesk, "-c", str(config), "token", "create", "fuzz", "--scope",
                            "write"], capture_output=True, text=True, check=True).stdout.strip()
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([frontdesk, "-c", str(config), "run"], stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the daemon did not start:\n" + log.read_text()) from None
                time.sleep(0.1)
        for n in range(3):
            m = EmailMessage()
            m["From"], m["To"] = f"c{n}@example.org", "support@example.com"
            m["Subject"], m["Message-ID"] = f"Question {n}", f"<fuzz{n}@example.org>"
            m.set_content("Hello, where is my order?")
            with smtplib.SMTP("127.0.0.1", smtp) as client:
                client.send_message(m)
        yield base, token, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(shutil.which("schemathesis", path=str(BIN)) is None,
                    reason="schemathesis is not installed (pip install -e '.[test]')")
def test_generated_requests_make_no_5xx_and_fit_the_document(
        daemon: tuple[str, str, Path]) -> None:
    base, token, log = daemon
    run = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{base}/api/openapi.json",
         "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", "40",
         "--workers", "1", "--seed", "17", "--no-color"],
        capture_output=True, text=True, timeout=600, check=False, cwd=log.parent)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Traceback" not in log.read_text()
