"""The artifact store (datasets, samples, checkpoints, reports) behind one small interface.

`ArtifactStore` has two implementations, `LocalStore` (a directory; the embedded default) and
`S3Store` (MinIO, SeaweedFS or any S3 API); `open_store` picks one from a `StoreConfig`.

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

import builtins
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeVar, runtime_checkable

import certifi
import minio
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from shared.infra import StoreConfig

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
"""Name of the manifest object written last under a directory artifact's prefix."""
LOCAL_MANIFEST_NAME = ".restem-manifest.json"
"""Copy of the manifest that `get_dir` leaves in `dest`, so a second `get_dir` is a cache hit."""
MAX_KEY_LEN = 1024
_TMP_MARK = ".restem-tmp-"  # prefix of every temp file/dir we create; reserved in keys
_CHUNK = 1 << 20
_S3_PART_SIZE = 16 << 20  # 16 MiB parts: a 500 MB checkpoint is ~32 requests, not 100 (5 MiB default)

T = TypeVar("T")


class ArtifactNotFound(KeyError):
    """A key (or a directory artifact's manifest) is not in the store."""

    def __init__(self, key: str, store: str, detail: str = "") -> None:
        super().__init__(key)
        self.key, self.store, self.detail = key, store, detail

    def __str__(self) -> str:  # KeyError's default str is just repr(key)
        extra = f": {self.detail}" if self.detail else ""
        return f"artifact {self.key!r} not found in store {self.store}{extra}"


class ArtifactCorrupt(RuntimeError):
    """A downloaded file does not match its directory artifact's manifest."""


class StoreAuthError(PermissionError):
    """The S3 endpoint rejected the credentials or denied access to the bucket."""


class StoreUnavailable(ConnectionError):
    """The S3 endpoint could not be reached after all retries."""


@runtime_checkable
class ArtifactStore(Protocol):
    """What every store implements; see the module docstring for the guarantees."""

    def describe(self) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> builtins.list[str]: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def put_dir(self, prefix: str, src: Path) -> dict[str, Any]: ...
    def get_dir(self, prefix: str, dest: Path) -> dict[str, Any]: ...
    def dir_exists(self, prefix: str) -> bool: ...


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return f"must be a str, not {type(key).__name__}"
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_LEN:
        return f"is {len(key)} characters long (at most {MAX_KEY_LEN})"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in key:
        return "contains a backslash (use '/' to separate segments)"
    if not key.isprintable():
        return "contains non-printable characters"
    for segment in key.split("/"):
        if not segment:
            return "has an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
        if segment.startswith(_TMP_MARK):
            return f"has a segment starting with {_TMP_MARK!r}, which is reserved for temp files"
    return None


def validate_key(key: str) -> str:
    """Return `key` if it is a valid artifact key, else raise ValueError saying what is wrong."""
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"invalid artifact key {key!r}: {problem}")
    return key


def _check_prefix(prefix: str, *, allow_empty: bool) -> str:
    """A prefix is a key with an optional trailing '/' (or "" to list all); returns it without."""
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body or not allow_empty:
        problem = _key_problem(body)
        if problem:
            raise ValueError(f"invalid artifact prefix {prefix!r}: {problem}")
    return body


def _file_digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


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


def _verify_file(path: Path, entry: dict[str, Any], where: str) -> None:
    size = path.stat().st_size
    if size != entry["size"]:
        raise ArtifactCorrupt(f"{where} does not match the manifest: size {size}, expected {entry['size']}")
    _, digest = _file_digest(path)
    if digest != entry["sha256"]:
        raise ArtifactCorrupt(
            f"{where} does not match the manifest: sha256 {digest}, expected {entry['sha256']}"
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
            size, digest = _file_digest(src / rel)
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

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: Path) -> None:
        with Path(path).open("rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(key, self.describe()) from None

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
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._path(key).unlink()


_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}
_AUTH_CODES = {
    "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
    "ExpiredToken", "AllAccessDisabled", "AuthorizationHeaderMalformed",
}  # fmt: skip
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}
_AUTH_HINT = (
    "check the credentials (store.access_key / store.secret_key, or RESTEM_S3_ACCESS_KEY / "
    "RESTEM_S3_SECRET_KEY) and their access to the bucket"
)


def classify_s3_error(exc: BaseException) -> Literal["not_found", "auth", "transient", "other"]:
    """How the S3 store reacts to an exception from minio: map it, retry it, or let it through."""
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        if exc.code in _NOT_FOUND_CODES or status == 404:
            return "not_found"
        if exc.code in _AUTH_CODES or status in (401, 403):
            return "auth"
        return "transient" if status >= 500 or exc.code in _TRANSIENT_CODES else "other"
    if isinstance(exc, ServerError):
        return "transient" if exc.status_code >= 500 else "other"
    if isinstance(exc, InvalidResponseError):  # e.g. an HTML 502 page from a proxy
        return "transient" if getattr(exc, "_code", 0) >= 500 else "other"
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return "transient"
    return "other"


class S3Store(_BaseStore):
    """Artifacts as objects in one S3 bucket (created if missing); keys are the object names."""

    def __init__(
        self, config: StoreConfig, *, tries: int = 5, backoff_s: float = 0.2, max_backoff_s: float = 3.0
    ) -> None:
        if config.access_key is None or config.secret_key is None:
            raise ValueError("S3Store needs store.access_key and store.secret_key")
        self._bucket, self._endpoint = config.bucket, config.endpoint
        self._tries, self._backoff_s, self._max_backoff_s = max(1, tries), backoff_s, max_backoff_s
        # urllib3's own retries off: _call is the one retry policy (minio's default pool retries
        # too, which would multiply the attempts and the waiting). TLS settings as in minio's pool.
        ca_certs = os.environ.get("SSL_CERT_FILE") or certifi.where()
        timeout = urllib3.Timeout(connect=10.0, read=120.0)
        http = urllib3.PoolManager(
            timeout=timeout, cert_reqs="CERT_REQUIRED", ca_certs=ca_certs, retries=False
        )
        ak, sk = config.access_key.get_secret_value(), config.secret_key.get_secret_value()
        self._s3 = minio.Minio(
            config.endpoint, ak, sk, secure=config.secure, region=config.region, http_client=http
        )
        self._call("open the bucket", None, self._ensure_bucket)

    def describe(self) -> str:
        return f"s3://{self._endpoint}/{self._bucket}"

    def _ensure_bucket(self) -> None:
        if self._s3.bucket_exists(self._bucket):
            return
        try:
            self._s3.make_bucket(self._bucket)
        except S3Error as exc:  # another process may create it between our check and our call
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _call(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run fn, retrying transient failures; map not-found and auth failures to our errors."""
        if key is not None:
            validate_key(key)
        for attempt in range(1, self._tries + 1):
            try:
                return fn()
            except Exception as exc:
                kind = classify_s3_error(exc)
                if kind == "not_found" and key is not None:
                    raise ArtifactNotFound(key, self.describe()) from None
                if kind == "auth":
                    code = getattr(exc, "code", type(exc).__name__)
                    raise StoreAuthError(
                        f"S3 store {self.describe()} refused to {what} ({code}): {_AUTH_HINT}"
                    ) from exc
                if kind != "transient":
                    raise
                if attempt == self._tries:
                    msg = f"S3 store {self.describe()}: could not {what} after {attempt} tries: {exc}"
                    raise StoreUnavailable(msg) from exc
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: many workers must not retry in lockstep
                log.warning("S3 %s failed (%s); retry %d in %.2fs", what, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def put_bytes(self, key: str, data: bytes) -> None:
        # A fresh BytesIO per attempt: a failed attempt may have consumed the previous one.
        put = self._s3.put_object
        self._call(f"write {key!r}", key, lambda: put(self._bucket, key, io.BytesIO(data), len(data)))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self._s3.get_object(self._bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return self._call(f"read {key!r}", key, get)

    def exists(self, key: str) -> bool:
        try:
            self._call(f"stat {key!r}", key, lambda: self._s3.stat_object(self._bucket, key))
        except ArtifactNotFound:
            return False
        return True

    def list(self, prefix: str) -> builtins.list[str]:
        _check_prefix(prefix, allow_empty=True)

        def names() -> builtins.list[str]:
            objects = self._s3.list_objects(self._bucket, prefix=prefix, recursive=True)
            return sorted(o.object_name for o in objects if o.object_name and not o.is_dir)

        return self._call(f"list {prefix!r}", None, names)

    def put_file(self, key: str, path: Path) -> None:
        # fput_object streams the file, in parts above one part size; S3 shows the object only once
        # the upload is complete, so it is atomic.
        put, src = self._s3.fput_object, str(path)
        self._call(f"upload {key!r}", key, lambda: put(self._bucket, key, src, part_size=_S3_PART_SIZE))

    def get_file(self, key: str, dest: Path) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{_TMP_MARK}{uuid.uuid4().hex}-{dest.name}"
        part, fget = tmp.with_name(tmp.name + ".part"), self._s3.fget_object
        try:
            self._call(
                f"download {key!r}", key, lambda: fget(self._bucket, key, str(tmp), tmp_file_path=str(part))
            )
            with tmp.open("rb") as f:
                os.fsync(f.fileno())  # durable before it takes dest's name
            os.replace(tmp, dest)
        finally:
            for leftover in (tmp, part):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _fetch_file(self, key: str, target: Path) -> None:
        self.get_file(key, target)

    def delete(self, key: str) -> None:
        # S3 DELETE of a missing key succeeds; a 404 (e.g. no bucket) is "absent" too.
        with contextlib.suppress(ArtifactNotFound):
            self._call(f"delete {key!r}", key, lambda: self._s3.remove_object(self._bucket, key))


def open_store(config: StoreConfig) -> ArtifactStore:
    """The store that `config` describes; an S3 store checks the bucket (and credentials) now."""
    if config.kind == "local":
        return LocalStore(config.root)
    if config.kind == "s3":
        return S3Store(config)
    raise ValueError(f"unknown store kind {config.kind!r}")
