"""The daemon as a user runs it: `frontdesk run` in its own process, signals, kill -9, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import mail, smtp_send

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A `frontdesk run` process with its config in a temp dir."""

    def __init__(self, tmp: Path, database_url: str, relay_port: int = 9) -> None:
        self.tmp = tmp
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "{database_url}"
[http]
listen = "127.0.0.1:{self.http_port}"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "frontdesk.test"
[email.outbound]
host = "127.0.0.1"
port = {relay_port}
from = "Example Support <support@example.com>"
starttls = "off"
[daemon]
data_dir = "{tmp}/data"
shutdown_timeout = "10s"
outbox_retry_initial = "1s"
outbox_retry_max = "1s"
[sla]
business_hours = "always"
[acknowledgement]
enabled = false                 # these tests count what reaches the relay and the outbox
""")
        self.log = tmp / "frontdesk.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [FRONTDESK, "run", "-c", str(self.config)], stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=self.tmp)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("daemon not ready:\n" + self.log.read_text())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([FRONTDESK, *args, "-c", str(self.config)], capture_output=True,
                                text=True, cwd=self.tmp, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[Proc]:
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    yield p
    if p.process and p.process.poll() is None:
        p.process.kill()
        p.process.wait()


def wait_for(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (on SQLite: the journal's writer)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # exited, not yet reaped by its (new) parent


def test_mail_that_got_250_survives_kill_9(proc: Proc) -> None:
    proc.start()
    for i in range(20):
        smtp_send(proc.smtp_port, mail(msgid=f"<k{i}@example.org>", subject=f"Kill test {i}"))
    assert proc.process is not None
    [writer] = children(proc.process.pid)
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: gone(writer), timeout=10)  # the journal's writer goes with the daemon
    proc.start()  # the restart processes whatever was journaled but not yet processed
    convs = wait_for(lambda: len(c := proc.json("conversations")) == 20 and c)
    assert {c["subject"] for c in convs} == {f"Kill test {i}" for i in range(20)}
    assert proc.stop() == 0


def test_ctrl_c_stops_it_cleanly_with_its_writer(proc: Proc) -> None:
    """Ctrl-C in a terminal signals the daemon and its journal writer alike: the writer stays
    for the daemon's last commits, the daemon exits 0, and the mail it took is there."""
    proc.start()
    smtp_send(proc.smtp_port, mail(subject="Before Ctrl-C"))
    assert proc.process is not None
    [writer] = children(proc.process.pid)
    os.kill(writer, signal.SIGINT)
    assert proc.stop(signal.SIGINT) == 0
    assert gone(writer)
    assert [c["subject"] for c in proc.json("conversations")] == ["Before Ctrl-C"]


def test_sigterm_drains_and_exits_0(proc: Proc) -> None:
    proc.start()
    smtp_send(proc.smtp_port, mail())
    assert proc.process is not None
    [writer] = children(proc.process.pid)
    os.kill(writer, signal.SIGTERM)  # systemd signals every process of the unit: it stays
    time.sleep(0.3)  # for the daemon's last commits
    assert not gone(writer)
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert gone(writer)
    log = proc.log.read_text()
    assert "stopped cleanly" in log and "Traceback" not in log
    [conv] = proc.json("conversations")
    assert conv["subject"] == "Order 1234 never arrived"


def test_disabled_channels_one_line_each_and_health_routes(proc: Proc) -> None:
    proc.start()
    base = f"http://127.0.0.1:{proc.http_port}"
    with urllib.request.urlopen(base + "/healthz") as r:
        assert r.status == 200
    smtp_send(proc.smtp_port, mail())
    wait_for(lambda: proc.json("conversations"))
    with urllib.request.urlopen(base + "/metrics") as r:
        metrics = r.read().decode()
    assert 'frontdesk_messages_in_total{channel="email"} 1.0' in metrics
    assert "frontdesk_outbox_depth 0.0" in metrics
    assert "frontdesk_ingest_latency_seconds_count" in metrics
    proc.stop()
    log = proc.log.read_text()
    for name in ("twilio", "telegram", "slack", "imap"):
        lines = [line for line in log.splitlines() if name in line and "disabled" in line]
        assert len(lines) == 1, (name, log)
    assert "Traceback" not in log


def test_staff_reply_reaches_the_relay_with_threading_headers_after_it_comes_up(
        tmp_path: Path) -> None:
    import asyncio
    import threading

    relay_port = free_port()
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db", relay_port=relay_port)
    p.start()
    try:
        smtp_send(p.smtp_port, mail(msgid="<order@example.org>"))
        [conv] = wait_for(lambda: p.json("conversations"))
        out = p.cli("reply", conv["reference"], "Your parcel left today.", "--as", "Grace")
        assert "queued" in out.stdout
        # The relay is down: the reply stays queued and is retried.
        wait_for(lambda: "refused the connection" in p.log.read_text())
        shown = p.json("show", conv["reference"])
        assert shown["messages"][-1]["delivery_status"] == "queued"
        assert shown["status"] == "pending"
        # Bring the relay up on its port: the next retry delivers.
        loop = asyncio.new_event_loop()
        sink = SmtpSink()
        sink_ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)

            async def main() -> None:
                await sink.start(port=relay_port)
                sink_ready.set()
                while not sink.messages:
                    await asyncio.sleep(0.05)
                await sink.stop()
            loop.run_until_complete(main())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert sink_ready.wait(10)
        thread.join(20)
        [(_from, rcpt, raw)] = sink.messages
        assert rcpt == ["ada@example.org"]
        text = raw.decode()
        assert "In-Reply-To: <order@example.org>" in text
        assert "References: <order@example.org>" in text
        assert f"[{conv['reference']}]" in text
        assert f"Reply-To: support+{conv['reference']}@example.com" in text
        assert "Your parcel left today." in text
        wait_for(lambda: p.json("show", conv["reference"])["messages"][-1]["delivery_status"]
                 == "sent")
    finally:
        assert p.stop() == 0


def test_cli_usage_and_errors(proc: Proc, tmp_path: Path) -> None:
    r = subprocess.run([FRONTDESK, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "frobnicate" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([FRONTDESK, "show", "--bogus", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    proc.cli("db", "upgrade")  # a store to look in (commands that only read never make one)
    r = proc.cli("show", "FD-999", check=False)
    assert r.returncode == 1 and "FD-999" in r.stderr and "Traceback" not in r.stderr
    r = proc.cli("show", "nonsense", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = subprocess.run([FRONTDESK, "conversations", "-c", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "missing.toml" in r.stderr and "init" in r.stderr


def test_check_names_bad_keys_and_masks_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[database]\nurl = "mysql://x"\ncolour = "blue"\n'
                   '[sla]\nfirst_response = "soon"\n[email.smtp_server]\nlisten = "8025"\n')
    r = subprocess.run([FRONTDESK, "check", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    for key in ("database.url", "database.colour: unknown key", "sla.first_response",
                "email.smtp_server.listen"):
        assert key in r.stderr, r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[slack]\nbot_token = "xoxb-very-secret"\n')
    env = {**os.environ, "FRONTDESK_EMAIL__OUTBOUND__PASSWORD": "hunter2-secret",
           "FRONTDESK_SLA__FIRST_RESPONSE": "2h"}
    r = subprocess.run([FRONTDESK, "check", "--show", "-c", str(good)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "xoxb-very-secret" not in r.stdout
    shown = json.loads(r.stdout[r.stdout.index("{"):])
    assert shown["sla"]["first_response"] == "2h"  # the environment overrides the file
    assert shown["email"]["outbound"]["password"] == "**********"


def test_init_writes_once_and_migrates(tmp_path: Path) -> None:
    cfg = tmp_path / "frontdesk.toml"
    r = subprocess.run([FRONTDESK, "init", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "frontdesk.db").exists()
    text = cfg.read_text()
    assert "[email.smtp_server]" in text and "#" in text
    cfg.write_text(text + "\n# mine\n")
    r = subprocess.run([FRONTDESK, "init", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and "# mine" in cfg.read_text()
    r = subprocess.run([FRONTDESK, "check", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_journal_lists_failed_and_retry_processes_them(proc: Proc) -> None:
    proc.start()
    files = proc.tmp / "data" / "attachments"  # the disk goes wrong: no file can be written
    shutil.rmtree(files, ignore_errors=True)
    files.parent.mkdir(exist_ok=True)
    files.write_bytes(b"")
    message = mail(msgid="<anon@x>", subject="Invoice attached")
    message.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf",
                           filename="invoice.pdf")
    smtp_send(proc.smtp_port, message)
    failed = wait_for(lambda: proc.json("journal", "--failed"))
    assert failed[0]["remote_id"] == "anon@x"
    assert failed[0]["error"].startswith("NotADirectoryError")
    assert failed[0]["attempts"] == 3  # tried a few times before it was given up
    text = proc.cli("journal", "--failed").stdout
    assert "anon@x" in text
    r = proc.cli("journal", "retry", str(failed[0]["id"]), check=False)
    assert r.returncode == 1 and "failed again" in r.stdout  # the fix is not in yet
    assert proc.json("journal", "--failed")[0]["attempts"] == 4
    r = proc.cli("journal", "retry", "999", check=False)
    assert r.returncode == 1 and "#999" in r.stderr
    r = proc.cli("journal", "retry", str(failed[0]["id"]), "--json", check=False)
    [again] = json.loads(r.stdout)  # one JSON document on stdout and nothing else
    assert r.returncode == 1 and again["id"] == failed[0]["id"] and again["error"]
    files.unlink()  # the fix
    r = proc.cli("journal", "retry", str(failed[0]["id"]))
    assert "stored in FD-1" in r.stdout
    assert proc.json("journal", "--failed") == []
    [conv] = proc.json("conversations")
    assert conv["subject"] == "Invoice attached"
    proc.stop()


def test_report_counts_volume_and_first_response(proc: Proc) -> None:
    proc.start()
    smtp_send(proc.smtp_port, mail(msgid="<r1@example.org>"))
    smtp_send(proc.smtp_port, mail(msgid="<r2@example.org>", subject="Second"))
    convs = wait_for(lambda: len(c := proc.json("conversations")) == 2 and c)
    proc.cli("reply", convs[0]["reference"], "Answered")
    report = proc.json("report", "--since", "1d")
    overall = report["overall"]
    assert overall["conversations"] == 2 and overall["answered"] == 1
    assert overall["messages_in"] == 2 and overall["messages_out"] == 1
    assert overall["sla_met"] == 1 and overall["first_response_seconds_median"] < 60
    assert report["channels"]["email"]["conversations"] == 2
    assert "email" in proc.cli("report").stdout
    r = proc.cli("report", "--since", "soon", check=False)
    assert r.returncode == 2 and "--since" in r.stderr  # a usage error (CONTRACT: exit 2)
    assert [c["status"] for c in proc.json("conversations", "--status", "pending")] == ["pending"]
    assert len(proc.json("conversations", "--limit", "1")) == 1
    proc.stop()


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    os.environ["NOTIFY_SOCKET"] = str(sock_path)
    try:
        p.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    received = []
    while not any("READY=1" in r for r in received):
        received.append(sock.recv(4096).decode())
    assert p.stop() == 0
    while not any("STOPPING=1" in r for r in received):
        received.append(sock.recv(4096).decode())
    sock.close()


def test_sigterm_exits_0_within_shutdown_timeout_while_a_send_hangs(tmp_path: Path) -> None:
    """A relay that accepts the connection and never says a word (the outbound timeout is 30 s)
    holds a staff reply's send when SIGTERM comes: frontdesk still exits 0 within
    daemon.shutdown_timeout, and the reply stays queued for the next start."""
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(16)
    held: list[socket.socket] = []
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db",
             relay_port=tarpit.getsockname()[1])
    p.config.write_text(p.config.read_text().replace('shutdown_timeout = "10s"',
                                                     'shutdown_timeout = "4s"'))
    p.start()
    try:
        smtp_send(p.smtp_port, mail(msgid="<order@example.org>"))
        [conv] = wait_for(lambda: p.json("conversations"))
        p.cli("reply", conv["reference"], "Your parcel left today.", "--as", "Grace")
        tarpit.settimeout(15)
        conn, _ = tarpit.accept()  # the send is under way, waiting for a greeting
        held.append(conn)
        time.sleep(0.3)
        started = time.monotonic()
        assert p.stop(signal.SIGTERM, timeout=30) == 0
        took = time.monotonic() - started
        assert took < 4.5, f"took {took:.1f} s to stop (shutdown_timeout 4s)"
        log = p.log.read_text()
        assert "shutdown_timeout reached; unsent work stays queued" in log
        assert "stopped" in log and "Traceback" not in log
        shown = p.json("show", conv["reference"])
        assert shown["messages"][-1]["delivery_status"] == "queued"
    finally:
        for c in held:
            c.close()
        tarpit.close()
        if p.process and p.process.poll() is None:
            p.process.kill()
            p.process.wait()


async def test_a_stop_step_that_fails_is_logged_the_rest_still_stops(
        tmp_path: Path, daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A step of the drain raising (a bug) does not leave the HTTP server or the store open,
    and the daemon says so: `frontdesk run` exits 1 instead of 0."""
    import aiohttp

    from tests.support.helpers import settings_for

    d = await daemon_factory(settings_for(tmp_path))

    async def broken() -> None:
        raise RuntimeError("the outbox could not stop")

    d.outbox.stop = broken
    d.request_stop()
    await d.stop()
    assert d.stop_failed
    assert "the outbox could not stop" in caplog.text
    assert "stopped cleanly" not in caplog.text
    with pytest.raises(aiohttp.ClientConnectionError):  # the HTTP server was closed all the same
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{d.http.port}/healthz"):
            pass


async def test_a_running_daemon_keeps_what_start_up_made_out_of_the_collectors_sight(
        tmp_path: Path) -> None:
    """`frontdesk run` (Daemon.run) freezes what start-up made, so a burst's short-lived
    objects do not make the collector rescan the daemon's long-lived ones (about 6 s of CPU
    in a burst of 3,000 new conversations)."""
    import asyncio
    import gc

    from frontdesk.daemon.process.app import Daemon
    from tests.support.helpers import settings_for

    d = Daemon(settings_for(tmp_path))
    task = asyncio.create_task(d.run())
    try:
        for _ in range(200):
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.05)
        assert gc.get_freeze_count() > 0
    finally:
        d.request_stop()
        await task
        gc.unfreeze()
