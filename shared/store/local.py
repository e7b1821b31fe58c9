"""`LocalStore`: artifacts as files under a directory (the embedded default)."""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shared import telemetry
from shared.store.base import _CHUNK, _TMP_MARK, ArtifactNotFound, _check_prefix, validate_key
from shared.store.dirs import _BaseStore


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; some filesystems refuse fsync on a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(target: Path, write: Callable[[BinaryIO], object], mode: int | None = None) -> None:
    """Write target via a temp file in its directory + fsync + rename: all or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP_MARK, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


class LocalStore(_BaseStore):
    """Artifacts as files under `root`, one file per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ValueError(f"key {key!r} clashes with an existing key in {self.describe()}: {exc}") from exc
        try:
            # 0o444: get_dir may hard-link this file into a work dir, where in-place edits must fail.
            _atomic_write(target, write, mode=0o444)
        except IsADirectoryError as exc:
            raise ValueError(f"key {key!r} clashes with an existing key in {self.describe()}: {exc}") from exc
        except FileNotFoundError:
            # A concurrent delete pruned the directory between our mkdir and the temp file: once more.
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, write, mode=0o444)

    # Metered like S3 (shared.telemetry): the local stack's dashboards show the same store panels.
    def put_bytes(self, key: str, data: bytes) -> None:
        with telemetry.store_request("write"):
            self._write(key, lambda f: f.write(data))
        telemetry.store_bytes("write", len(data))

    def put_file(self, key: str, path: Path) -> None:
        with telemetry.store_request("upload"), Path(path).open("rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))
        telemetry.store_bytes("write", Path(path).stat().st_size)

    def get_bytes(self, key: str) -> bytes:
        with telemetry.store_request("read"):
            try:
                data = self._path(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ArtifactNotFound(key, self.describe()) from None
        telemetry.store_bytes("read", len(data))
        return data

    def get_file(self, key: str, dest: Path) -> None:
        src, dest = self._path(key), Path(dest)
        if not src.is_file():
            raise ArtifactNotFound(key, self.describe())
        dest.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as f:
            _atomic_write(dest, lambda out: shutil.copyfileobj(f, out, _CHUNK), mode=0o644)

    def _fetch_file(self, key: str, target: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(key, self.describe(), "listed in the manifest but missing")
        try:
            os.link(src, target)  # checkpoints are ~500 MB: link instead of copying when we can
        except OSError:  # other filesystem (EXDEV), no link support, too many links...
            shutil.copyfile(src, target)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys starting with prefix (a plain string prefix, as on S3)."""
        _check_prefix(prefix, allow_empty=True)
        # Only walk the deepest directory the prefix fully names ("a/b/c" -> a/b).
        base_rel = prefix.rpartition("/")[0]
        base = self.root.joinpath(*base_rel.split("/")) if base_rel else self.root
        keys = []
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP_MARK)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not name.startswith(_TMP_MARK) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        # Absent, or a path that is not a file here (no object by that key): nothing to delete.
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            path.unlink()
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents up to the root while they are empty.

        S3 has no directories, so a deleted key leaves nothing behind there; without this a LocalStore
        would keep one empty directory per deleted step state forever. rmdir refuses a non-empty
        directory, so a concurrent writer's files are never touched (``_write`` retries its mkdir).
        """
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone / not ours): stop here
                return
            directory = directory.parent
