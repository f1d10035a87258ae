"""``daemon.data_dir`` must be a directory frontdesk can write attachment files in: `frontdesk
check` and the daemon's start say so in one line naming the key, the path and why (exit 1),
instead of passing and then failing the first mail with an attachment. A missing directory is
created, but only when its parent exists."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from frontdesk.daemon.cli.main import main as cli

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


def _config(tmp_path: Path, data_dir: str | Path, *, smtp_port: int = 0) -> Path:
    path = tmp_path / "frontdesk.toml"
    path.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/frontdesk.db"
[http]
listen = "127.0.0.1:0"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{smtp_port}"
[daemon]
data_dir = "{data_dir}"
""")
    return path


def _bad_data_dirs(tmp_path: Path) -> list[tuple[Path, str]]:
    """(data_dir, why) for directories that cannot hold attachment files."""
    a_file = tmp_path / "data-is-a-file"
    a_file.write_text("not a directory\n")
    blocked = tmp_path / "attachments-blocked"
    blocked.mkdir()
    (blocked / "attachments").write_text("")
    return [
        (Path("/proc/fd-data"), "/proc/fd-data: cannot create it: No such file or directory"),
        (a_file, f"{a_file}: it is not a directory"),
        (tmp_path / "typo" / "frontdesk" / "data",
         f"{tmp_path / 'typo' / 'frontdesk' / 'data'}: it does not exist, and neither does its "
         f"parent {tmp_path / 'typo' / 'frontdesk'} (frontdesk creates only the last "
         "directory)"),
        (blocked, f"{blocked}: {blocked / 'attachments'} is not a directory"),
    ]


CASES = ["in-proc", "a-file", "parent-missing", "attachments-is-a-file"]


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_check_names_a_data_dir_that_cannot_hold_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: int) -> None:
    data_dir, why = _bad_data_dirs(tmp_path)[case]
    config = _config(tmp_path, data_dir)
    assert cli(["check", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "OK" not in out
    assert f"  daemon.data_dir: {why}" in err.splitlines()
    assert "Traceback" not in err
    assert not (tmp_path / "typo").exists()  # never a chain of new directories


def test_check_creates_a_missing_data_dir_whose_parent_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "data")
    assert cli(["check", "-c", str(config)]) == 0
    assert f"{config}: OK" in capsys.readouterr().out
    assert (tmp_path / "data").is_dir()
    # The probe is gone; the attachments folder is left to the daemon (check may run as
    # another user than the daemon's).
    assert list((tmp_path / "data").iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_the_daemon_does_not_start_with_a_data_dir_that_cannot_hold_files(
        tmp_path: Path, case: int) -> None:
    data_dir, why = _bad_data_dirs(tmp_path)[case]
    port = _free_port()
    config = _config(tmp_path, data_dir, smtp_port=port)
    result = subprocess.run([FRONTDESK, "run", "-c", str(config)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"frontdesk: cannot start: daemon.data_dir {why}"]
    with pytest.raises(OSError):  # it never took mail it could not store
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not (tmp_path / "frontdesk.db").exists()  # nor touched the store
