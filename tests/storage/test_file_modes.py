"""What frontdesk writes is its own and its group's, whatever the caller's umask (issue 14,
item 9).

The store, its WAL and shared-memory files and attachment files are created 0640 (or stricter),
the data directory and the attachment folders 0750: the same as the systemd unit's
``UMask=0027``, but set by frontdesk itself, so a daemon started by hand under a umask of 022
does not leave customer data readable by every user of the machine. A store or folders left
looser by an older frontdesk are tightened at start, in one log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import eventually, mail, processed, send

LOOSE = 0o027
"""Group write, and anything at all for others."""


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The umask of a shell that started the daemon by hand (files 0644, folders 0755)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def written(tmp_path: Path) -> list[Path]:
    """Everything frontdesk wrote under ``tmp_path``: the store's files and the data dir's
    tree (the data directory itself included)."""
    store = sorted(tmp_path.glob("frontdesk.db*"))
    data = tmp_path / "data"
    return [*store, data, *sorted(data.rglob("*"))]


def loose(paths: list[Path]) -> dict[str, str]:
    return {str(p): oct(mode(p)) for p in paths if mode(p) & LOOSE}


async def test_a_daemon_under_umask_022_keeps_the_store_and_attachments_private(
        permissive_umask: None, tmp_path: Path, make_settings: Any,
        daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings())
    msg = mail(msgid="<modes@example.org>", subject="Passport scan")
    msg.add_attachment(b"%PDF-1.4 a passport", maintype="application", subtype="pdf",
                       filename="passport.pdf")
    await send(d.email.smtp.port, msg)
    await eventually(lambda: processed(d.store))

    paths = written(tmp_path)
    names = {p.name for p in paths}
    assert {"frontdesk.db", "frontdesk.db-wal", "frontdesk.db-shm", "attachments"} <= names
    files = [p for p in paths if p.is_file() and p.parent.parent.name == "attachments"]
    assert len(files) == 1  # the passport, stored
    assert loose(paths) == {}
    assert all(mode(p) & 0o700 == 0o700 for p in paths if p.is_dir())  # still usable


async def test_a_store_left_readable_by_others_is_tightened_at_start_in_one_line(
        permissive_umask: None, tmp_path: Path, make_settings: Any, daemon_factory: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings()
    first = await daemon_factory(settings)
    msg = mail(msgid="<old@example.org>")
    msg.add_attachment(b"old attachment", maintype="text", subtype="plain",
                       filename="old.txt")
    await send(first.email.smtp.port, msg)
    await eventually(lambda: processed(first.store))
    first.request_stop()
    await first.stop()
    # As an older frontdesk under umask 022 left them.
    for path in written(tmp_path):
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert loose(written(tmp_path))

    with caplog.at_level(logging.INFO):
        await daemon_factory(settings)
    paths = written(tmp_path)
    store_files = [p for p in paths if p.name.startswith("frontdesk.db")]
    folders = [p for p in paths if p.is_dir()]
    assert loose(store_files + folders) == {}
    lines = [r.getMessage() for r in caplog.records if "tightened" in r.getMessage()]
    assert len(lines) <= 2, lines  # one for the store, one for the data directory
    assert any("frontdesk.db" in line for line in lines), lines
    assert any(str(tmp_path / "data") in line for line in lines), lines


def test_the_command_line_creates_the_store_private(permissive_umask: None,
                                                    tmp_path: Path) -> None:
    from frontdesk.daemon.cli.main import main

    config = tmp_path / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/frontdesk.db"\n'
                      f'[daemon]\ndata_dir = "{tmp_path}/data"\n')
    assert main(["db", "upgrade", "-c", str(config)]) == 0
    store = tmp_path / "frontdesk.db"
    assert store.is_file()
    assert mode(store) & LOOSE == 0, oct(mode(store))
    assert os.umask(0o022) == 0o022  # the caller's umask is given back


async def test_the_attachment_store_alone_writes_private_files_and_folders(
        permissive_umask: None, tmp_path: Path) -> None:
    from frontdesk.storage.attachments import AttachmentStore

    files = AttachmentStore(tmp_path / "data")
    digest = await asyncio.to_thread(files.put, b"a scanned ID card")
    path = files.path_for(digest)
    assert path.read_bytes() == b"a scanned ID card"
    assert loose([tmp_path / "data", files.root, path.parent, path]) == {}
