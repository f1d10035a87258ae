"""The sd_notify client against real datagram sockets, and the unit file against systemd-analyze."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from frontdesk.daemon.process.systemd import (
    READY,
    STOPPING,
    WATCHDOG,
    Notifier,
    status,
)
from tests.support.helpers import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "frontdesk.service"
INSTALLED_BINARY = "/opt/frontdesk/.venv/bin/frontdesk"
MAX_EXPOSURE = 2.0


def receive(sock: socket.socket) -> list[str]:
    """One datagram from the notify socket, split into its assignments."""
    return sock.recv(4096).decode().split("\n")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket in the file system, and its path."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path


def test_ready_stopping_and_status_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    notifier.notify(READY, status("listening on 127.0.0.1:8025"))
    assert receive(sock) == ["READY=1", "STATUS=listening on 127.0.0.1:8025"]

    notifier.notify(STOPPING, "STATUS=draining")
    assert receive(sock) == ["STOPPING=1", "STATUS=draining"]


def test_a_state_cannot_inject_another_assignment(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})

    notifier.notify("STATUS=bad\nREADY=1")
    assert receive(sock) == ["STATUS=bad READY=1"]
    assert status("two\nlines  here") == "STATUS=two lines here"


def test_abstract_socket() -> None:
    name = f"frontdesk-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled

        notifier.notify(READY)
        assert receive(sock) == ["READY=1"]


def test_no_socket_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.notify(READY)
    notifier.notify(STOPPING)
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}).enabled is False


def test_unsupported_address_is_disabled() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
    notifier.notify(READY)


def test_send_errors_are_swallowed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="frontdesk.daemon.process.systemd"):
        notifier.notify(READY)
        notifier.notify(WATCHDOG)
        notifier.notify(STOPPING)
    failures = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(failures) == 1


def test_nothing_sent_without_states(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).notify()
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "100000"}, 0.05),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert Notifier.from_environ(environ).watchdog_interval() == expected


async def test_watchdog_loop_pings(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})

    task = asyncio.create_task(notifier.watchdog_loop())
    await asyncio.sleep(0.3)  # interval 0.05 s: about six pings
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    pings = []
    while True:
        try:
            pings.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert len(pings) >= 2
    assert set(pings) == {"WATCHDOG=1"}


@pytest.mark.parametrize(
    "environ",
    [
        {"NOTIFY_SOCKET": "/run/systemd/notify"},  # no watchdog requested
        {"WATCHDOG_USEC": "100000"},  # a watchdog but nowhere to send
        {
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "WATCHDOG_USEC": "100000",
            "WATCHDOG_PID": str(os.getpid() + 1),
        },
    ],
)
async def test_watchdog_loop_returns_at_once_without_a_watchdog(environ: dict[str, str]) -> None:
    await asyncio.wait_for(Notifier.from_environ(environ).watchdog_loop(), timeout=1)


# --- the unit file -----------------------------------------------------------


def unit_values(path: Path = UNIT) -> dict[str, list[str]]:
    """Every assignment in a unit file (any section), in order, by key."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_unit_matches_the_daemon() -> None:
    from frontdesk.config.schema import DaemonConfig

    values = unit_values()
    assert values["Type"] == ["notify"]
    assert values["NotifyAccess"] == ["main"]
    assert values["WatchdogSec"] == ["30s"]
    assert values["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/frontdesk/frontdesk.toml"]
    assert values["ExecStartPre"] == [
        f"{INSTALLED_BINARY} db upgrade -c /etc/frontdesk/frontdesk.toml"
    ]
    assert values["User"] == values["Group"] == ["frontdesk"]
    # systemd must not SIGKILL a daemon that is still inside its drain time.
    stop_timeout = timedelta(seconds=int(values["TimeoutStopSec"][0]))
    assert stop_timeout > DaemonConfig().shutdown_timeout


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def test_security_exposure_is_low(record_property: Callable[[str, object], None]) -> None:
    analyze = systemd_analyze()
    usage = subprocess.run(
        [analyze, "security", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    if "--offline" not in usage.stdout + usage.stderr:
        pytest.skip("this systemd-analyze lacks `security --offline` (needs systemd >= 250)")

    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(
        r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout + result.stderr
    )
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    score = float(match.group(1))
    record_property("exposure", score)
    print(f"systemd-analyze security --offline=yes {UNIT.name}: {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no bad keys, values or dependencies.

    verify runs its own test manager, so it needs no systemd as PID 1; it does
    check that ExecStart= binaries exist, so a copy of the unit points at a stub.
    """
    analyze = systemd_analyze()
    stub = tmp_path / "frontdesk"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)

    def verify(unit: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [analyze, "verify", "--man=no", "--generators=no", str(unit)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )

    probe = tmp_path / "probe" / "frontdesk-probe.service"
    probe.parent.mkdir()
    probe.write_text(f"[Service]\nExecStart={stub}\n")
    probe_run = verify(probe)
    if probe_run.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {probe_run.stderr.strip()}")

    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(stub)))
    result = verify(unit)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr
