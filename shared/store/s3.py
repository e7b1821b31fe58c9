"""`S3Store` (MinIO, SeaweedFS or any S3 API) and `classify_s3_error`, its retry/mapping policy."""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import certifi
import minio
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from shared import telemetry
from shared.infra import StoreConfig
from shared.store.base import (
    _TMP_MARK,
    ArtifactNotFound,
    StoreAuthError,
    StoreUnavailable,
    _check_prefix,
    validate_key,
)
from shared.store.dirs import _BaseStore

log = logging.getLogger("shared.store")  # the package's logger: records keep the name they had

_S3_CONNECTIONS = 32  # kept open per endpoint: concurrent calls reuse them instead of reconnecting
_S3_PART_SIZE = 16 << 20  # 16 MiB parts: a 500 MB checkpoint is ~32 requests, not 100 (5 MiB default)

T = TypeVar("T")

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
        self,
        config: StoreConfig,
        *,
        tries: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 3.0,
        create_bucket: bool = True,
    ) -> None:
        """`create_bucket=False` opens a bucket that must exist (a user's data), NOT_FOUND otherwise."""
        if config.access_key is None or config.secret_key is None:
            raise ValueError("S3Store needs store.access_key and store.secret_key")
        self._bucket, self._endpoint = config.bucket, config.endpoint
        self._tries, self._backoff_s, self._max_backoff_s = max(1, tries), backoff_s, max_backoff_s
        # urllib3's own retries off: _call is the one retry policy (minio's default pool retries
        # too, which would multiply the attempts and the waiting). TLS settings as in minio's pool.
        ca_certs = os.environ.get("SSL_CERT_FILE") or certifi.where()
        timeout = urllib3.Timeout(connect=10.0, read=120.0)
        # maxsize: urllib3 keeps one connection per host by default, so each of N concurrent calls
        # (the verifier's verdict cache makes 16) would open a connection and drop it with a warning.
        http = urllib3.PoolManager(
            timeout=timeout,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs,
            retries=False,
            maxsize=_S3_CONNECTIONS,
        )
        ak, sk = config.access_key.get_secret_value(), config.secret_key.get_secret_value()
        self._s3 = minio.Minio(
            config.endpoint, ak, sk, secure=config.secure, region=config.region, http_client=http
        )
        self._call("open the bucket", None, self._ensure_bucket if create_bucket else self._require_bucket)

    def describe(self) -> str:
        return f"s3://{self._endpoint}/{self._bucket}"

    def _require_bucket(self) -> None:
        if not self._s3.bucket_exists(self._bucket):
            raise ArtifactNotFound("", self.describe(), "the bucket does not exist")

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
        with telemetry.store_request(what.split(" ", 1)[0]):
            return self._attempts(what, key, fn)

    def _attempts(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
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
        telemetry.store_bytes("write", len(data))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self._s3.get_object(self._bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        data = self._call(f"read {key!r}", key, get)
        telemetry.store_bytes("read", len(data))
        return data

    def exists(self, key: str) -> bool:
        try:
            self._call(f"stat {key!r}", key, lambda: self._s3.stat_object(self._bucket, key))
        except ArtifactNotFound:
            return False
        return True

    def listing(self, prefix: str) -> builtins.list[tuple[str, int, str]]:
        """(key, size, ETag) of every object under `prefix`: what identifies their contents."""

        def rows() -> builtins.list[tuple[str, int, str]]:
            objects = self._s3.list_objects(self._bucket, prefix=prefix, recursive=True)
            return [(o.object_name, int(o.size or 0), str(o.etag)) for o in objects if o.object_name]

        return self._call(f"list {prefix!r}", None, rows)

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
        telemetry.store_bytes("write", path.stat().st_size)

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
            telemetry.store_bytes("read", tmp.stat().st_size)
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
