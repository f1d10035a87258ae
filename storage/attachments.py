"""Attachment files: stored once, named by their SHA-256, under the data directory.

The store keeps their metadata (``attachments`` rows); the bytes live here, written atomically
(a temporary file, fsync, rename), so a file that exists is whole. Files are created 0640 and
folders 0750 whatever the umask (:mod:`.modes`); :meth:`AttachmentStore.secure`, run when the
daemon starts, tightens folders an older frontdesk left looser.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from frontdesk.storage.modes import create_file, make_dir, tighten


class AttachmentStore:
    """Files named by their SHA-256 under ``<data_dir>/attachments/ab/abcdef...``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "attachments"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            self._folders(path.parent)
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            with os.fdopen(create_file(tmp), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return digest

    def read(self, sha256: str) -> bytes:
        """The bytes of a stored file; FileNotFoundError when there is none (never stored, or
        erased). Blocking I/O: call it in a worker thread."""
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise FileNotFoundError(f"{sha256!r} is not a stored file's SHA-256")
        return self.path_for(sha256).read_bytes()

    def _folders(self, folder: Path) -> None:
        """The data directory (and, as before, any missing folder above it), the attachments
        folder and ``folder`` in it, each new one made 0750."""
        if folder.is_dir():
            return
        if not self.data_dir.is_dir():
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            make_dir(self.data_dir)
        make_dir(self.root)
        make_dir(folder)

    def secure(self) -> None:
        """Tighten the data directory, the attachments folder and its folders where others
        could read or enter them (one log line). The files in them are not visited (there may be
        very many): without the folders' search permission nobody else reaches them."""
        folders = [self.data_dir, self.root]
        if self.root.is_dir():
            folders += sorted(p for p in self.root.iterdir() if p.is_dir())
        tighten(folders, f"attachment folders in {self.data_dir}")
