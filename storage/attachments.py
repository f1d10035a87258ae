"""Attachment files: stored once, named by their SHA-256, under the data directory.

The store keeps their metadata (``attachments`` rows); the bytes live here, written atomically
(a temporary file, fsync, rename), so a file that exists is whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class AttachmentStore:
    """Files named by their SHA-256 under ``<data_dir>/attachments/ab/abcdef...``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "attachments"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return digest
