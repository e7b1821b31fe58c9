"""The sha256 of a file, read in 1 MiB chunks: the content identity of uploads and stored artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """The file's sha256 (lower-case hex) and its size in bytes."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), size
