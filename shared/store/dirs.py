"""Directory artifacts: the manifest helpers and `_BaseStore`, which writes `put_dir` / `get_dir` /
`dir_exists` once on top of each store's single-object primitives."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.digest import file_digest
from shared.store.base import (
    _TMP_MARK,
    LOCAL_MANIFEST_NAME,
    MANIFEST_NAME,
    ArtifactCorrupt,
    ArtifactNotFound,
    _check_prefix,
    validate_key,
)

log = logging.getLogger("shared.store")  # the package's logger: records keep the name they had


def _scan_dir(src: Path) -> builtins.list[str]:
    """Sorted relative paths of the files under src, all checked as keys before any upload."""
    if not src.is_dir():
        raise NotADirectoryError(f"put_dir source {src} is not a directory")
    rels = []
    # followlinks: checkpoint dirs (e.g. the Hugging Face cache) are often made of symlinks.
    for dirpath, _dirs, files in os.walk(src, followlinks=True):
        for name in files:
            rel = (Path(dirpath) / name).relative_to(src).as_posix()
            if rel == LOCAL_MANIFEST_NAME:  # our own cache marker from an earlier get_dir
                continue
            if rel == MANIFEST_NAME:
                raise ValueError(f"{src} contains {MANIFEST_NAME}, a name put_dir reserves")
            validate_key(rel)
            rels.append(rel)
    return sorted(rels)


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        for rel, entry in files.items():
            validate_key(rel)  # a hostile manifest must not write outside dest
            if not isinstance(entry["size"], int) or not isinstance(entry["sha256"], str):
                raise TypeError(f"bad entry for {rel!r}: {entry!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactCorrupt(f"manifest {where} is malformed: {exc}") from exc
    return dict(manifest)


_CORRUPT_HINT = "the stored artifact is damaged: delete it so the job that wrote it runs again"


def _verify_file(path: Path, entry: dict[str, Any], where: str) -> None:
    size = path.stat().st_size
    if size != entry["size"]:
        raise ArtifactCorrupt(
            f"{where} does not match the manifest: size {size}, expected {entry['size']}; {_CORRUPT_HINT}"
        )
    digest, _ = file_digest(path)
    if digest != entry["sha256"]:
        raise ArtifactCorrupt(
            f"{where} does not match the manifest: sha256 {digest}, expected {entry['sha256']}; {_CORRUPT_HINT}"
        )


def _is_cache_hit(dest: Path, manifest: dict[str, Any]) -> bool:
    # Cheap check only (manifest copy + sizes): the full sha256 was verified when dest was made.
    try:
        if json.loads((dest / LOCAL_MANIFEST_NAME).read_bytes()) != manifest:
            return False
        return all((dest / rel).stat().st_size == e["size"] for rel, e in manifest["files"].items())
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _swap_into_place(tmp: Path, dest: Path, manifest: dict[str, Any]) -> None:
    try:
        os.rename(tmp, dest)  # atomic when dest does not exist (or is an empty directory)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
    if _is_cache_hit(dest, manifest):  # another process got there first with the same artifact
        return
    # dest holds something stale: move it aside (atomic), put ours in, then drop the old one.
    old = dest.parent / f"{_TMP_MARK}{uuid.uuid4().hex}-old-{dest.name}"
    os.rename(dest, old)
    os.rename(tmp, dest)
    _remove(old)


class _BaseStore(ABC):
    """put_dir / get_dir / dir_exists, written once on top of the single-object primitives."""

    @abstractmethod
    def describe(self) -> str: ...
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...
    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...
    @abstractmethod
    def exists(self, key: str) -> bool: ...
    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...
    @abstractmethod
    def delete(self, key: str) -> None: ...
    @abstractmethod
    def _fetch_file(self, key: str, target: Path) -> None:
        """Put the object's bytes at target (a fresh path inside get_dir's temp dir)."""

    def put_dir(self, prefix: str, src: Path) -> dict[str, Any]:
        """Upload every file under src to prefix/<relpath>, then commit with prefix/MANIFEST.json."""
        prefix, src = _check_prefix(prefix, allow_empty=False), Path(src)
        rels = _scan_dir(src)
        manifest_key = f"{prefix}/{MANIFEST_NAME}"
        # Un-commit any earlier version first, so no reader pairs the old manifest with new files.
        self.delete(manifest_key)
        files: dict[str, Any] = {}
        for rel in rels:
            digest, size = file_digest(src / rel)
            self.put_file(f"{prefix}/{rel}", src / rel)
            files[rel] = {"size": size, "sha256": digest}
        manifest = {"files": files, "created": datetime.now(UTC).isoformat()}
        self.put_bytes(manifest_key, json.dumps(manifest, indent=1, sort_keys=True).encode())
        log.info("stored directory artifact %s/%s (%d files)", self.describe(), prefix, len(files))
        return manifest

    def get_dir(self, prefix: str, dest: Path) -> dict[str, Any]:
        """Download a directory artifact to dest, verified; a no-op if dest already holds it."""
        prefix, dest = _check_prefix(prefix, allow_empty=False), Path(dest)
        manifest_key = f"{prefix}/{MANIFEST_NAME}"
        try:
            raw = self.get_bytes(manifest_key)
        except ArtifactNotFound:
            detail = f"no {MANIFEST_NAME}: the directory artifact does not exist or was never committed"
            raise ArtifactNotFound(prefix, self.describe(), detail) from None
        manifest = _parse_manifest(raw, f"{self.describe()}/{manifest_key}")
        if _is_cache_hit(dest, manifest):
            return manifest
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The temp dir sits beside dest so that the final rename stays on one filesystem.
        tmp = dest.parent / f"{_TMP_MARK}{uuid.uuid4().hex}-{dest.name}"
        try:
            for rel, entry in sorted(manifest["files"].items()):
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_file(f"{prefix}/{rel}", target)
                _verify_file(target, entry, f"{self.describe()}/{prefix}/{rel}")
            tmp.mkdir(exist_ok=True)  # an artifact with no files is still a directory
            (tmp / LOCAL_MANIFEST_NAME).write_bytes(raw)
            _swap_into_place(tmp, dest, manifest)
        finally:
            _remove(tmp)
        return manifest

    def dir_exists(self, prefix: str) -> bool:
        return self.exists(f"{_check_prefix(prefix, allow_empty=False)}/{MANIFEST_NAME}")
