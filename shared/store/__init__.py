"""The artifact store (datasets, samples, checkpoints, reports) behind one small interface.

`ArtifactStore` has two implementations, `LocalStore` (a directory; the embedded default) and
`S3Store` (MinIO, SeaweedFS or any S3 API); `open_store` picks one from a `StoreConfig`.

Modules: `base` (names, errors, the protocol, key validation), `dirs` (manifest helpers and the
directory-artifact methods both stores share), `local` (`LocalStore`), `s3` (`S3Store`,
`classify_s3_error`). Import from `shared.store`, which re-exports the public API.

Covered:
- Single objects are written atomically: a reader sees the old object or the whole new one (locally:
  temp file + fsync + rename; on S3 an upload, multipart or not, only shows once complete).
- Directory artifacts: `put_dir` uploads every file, then `<prefix>/MANIFEST.json` LAST. The manifest
  is the commit point (the artifact exists iff it does); `get_dir` checks each file's size and sha256
  against it before anything appears at `dest`.
- One key validation for both stores: a key cannot escape a LocalStore's root, nor a manifest `dest`.
- S3 calls retry connection errors and 5xx with backoff + jitter; 404 -> `ArtifactNotFound`,
  401/403 -> `StoreAuthError` (not retried).

Not covered:
- Transactions across objects, and locking: two writers of one key race; the last one wins.
- Rewriting a directory artifact while it is read: `put_dir` deletes the old manifest first, so a new
  reader sees "not found", but a `get_dir` already running may fail verification (it never returns
  a mix). Files of the old version that the new one lacks are left behind.
- Holding both `a` and `a/b` in a LocalStore (a file is not a directory); S3 allows it.
- `get_dir` from a LocalStore hard-links files into `dest` when it can, so the local store writes
  files read-only (0o444): never edit them in place.
- Cleaning up temp files of a killed process (they never show in `list`).
"""

from __future__ import annotations

from shared.infra import StoreConfig
from shared.store.base import (
    LOCAL_MANIFEST_NAME,
    MANIFEST_NAME,
    MAX_KEY_LEN,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    StoreAuthError,
    StoreUnavailable,
    validate_key,
)
from shared.store.local import LocalStore
from shared.store.s3 import S3Store, classify_s3_error

__all__ = [
    "LOCAL_MANIFEST_NAME",
    "MANIFEST_NAME",
    "MAX_KEY_LEN",
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "ArtifactStore",
    "LocalStore",
    "S3Store",
    "StoreAuthError",
    "StoreUnavailable",
    "classify_s3_error",
    "open_store",
    "validate_key",
]


def open_store(config: StoreConfig) -> ArtifactStore:
    """The store that `config` describes; an S3 store checks the bucket (and credentials) now."""
    if config.kind == "local":
        return LocalStore(config.root)
    if config.kind == "s3":
        return S3Store(config)
    raise ValueError(f"unknown store kind {config.kind!r}")
