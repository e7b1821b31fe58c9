"""Names, errors, the `ArtifactStore` protocol and key validation, shared by both stores."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from shared.errors import NotFoundError, StatusError

MANIFEST_NAME = "MANIFEST.json"
"""Name of the manifest object written last under a directory artifact's prefix."""
LOCAL_MANIFEST_NAME = ".restem-manifest.json"
"""Copy of the manifest that `get_dir` leaves in `dest`, so a second `get_dir` is a cache hit."""
MAX_KEY_LEN = 1024
_TMP_MARK = ".restem-tmp-"  # prefix of every temp file/dir we create; reserved in keys
_CHUNK = 1 << 20


class ArtifactNotFound(NotFoundError, KeyError):
    """A key (or a directory artifact's manifest) is not in the store."""

    def __init__(self, key: str, store: str, detail: str = "") -> None:
        super().__init__(key)
        self.key, self.store, self.detail = key, store, detail

    def __str__(self) -> str:  # KeyError's default str is just repr(key)
        extra = f": {self.detail}" if self.detail else ""
        return f"artifact {self.key!r} not found in store {self.store}{extra}"


class ArtifactCorrupt(RuntimeError):
    """A downloaded file does not match its directory artifact's manifest."""


class StoreAuthError(StatusError, PermissionError):
    """The S3 endpoint rejected the credentials or denied access to the bucket."""

    status: ClassVar[str] = "PERMISSION_DENIED"


class StoreUnavailable(ConnectionError):
    """The S3 endpoint could not be reached after all retries."""


@runtime_checkable
class ArtifactStore(Protocol):
    """What every store implements; see the `shared.store` package docstring for the guarantees."""

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
