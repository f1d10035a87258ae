"""File modes for what frontdesk writes: the store and attachments hold customer data.

Files are created ``0640`` and folders ``0750`` (owner read-write, the service's group read,
nobody else), the modes the systemd unit's ``UMask=0027`` gives, but set here explicitly so a
daemon or command started by hand under a permissive umask (022) does not leave customer data
readable by every user of the machine. Group read is kept, not ``0600``/``0700``: the packaging
gives the ``frontdesk`` group read access to the service's files (``/var/lib/frontdesk`` is
``0750 frontdesk frontdesk``, the config ``0640 root frontdesk``), for backups and for the
people who run the read-only commands. A umask can only make them stricter.

Files and folders left looser by an older frontdesk are tightened (group write and every bit
for others removed) when the daemon starts, in one log line per place; one this process cannot
change is reported in one warning instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIR_MODE = 0o750
LOOSE = 0o027
"""The bits frontdesk's files never have: group write, and anything for others."""


def make_dir(path: Path) -> None:
    """Create the folder ``path`` (its parent must exist) as :data:`DIR_MODE`, unless it is
    there already."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def create_file(path: Path) -> int:
    """A new file at ``path``, opened for writing, created :data:`FILE_MODE` (a file left there
    before is replaced, so that its mode cannot carry over); returns the descriptor."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def tighten(paths: Iterable[Path], what: str) -> None:
    """Remove group write and every bit for others from those of ``paths`` that have them (a
    missing path is skipped), and say so in one log line naming ``what`` they are; the ones
    that cannot be changed (another owner) are named in one warning."""
    changed: list[str] = []
    refused: list[str] = []
    for path in paths:
        try:
            current = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        if not current & LOOSE:
            continue
        wanted = current & ~LOOSE
        try:
            os.chmod(path, wanted)
        except OSError as exc:
            refused.append(f"{path} ({current:04o}: {exc.strerror or exc})")
        else:
            changed.append(f"{path} {current:04o} -> {wanted:04o}")
    if changed:
        log.warning("tightened the modes of %s that others could read or write: %s", what,
                    ", ".join(changed))
    if refused:
        log.warning("%s can be read or written by others, and frontdesk cannot change that; "
                    "chmod o-rwx,g-w them: %s", what, ", ".join(refused))
