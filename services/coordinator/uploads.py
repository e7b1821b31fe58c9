"""Files a user sends with a run (datasets), kept once per content in the artifact store.

A file is stored as `files/sha256/<hex>` and named `sha256:<hex>` in a run config (`task.files.*`,
`evaluation.transfer[].file`), so a stored run config says exactly which bytes the run read and
the run can be reproduced from the store alone. An upload streams into a temporary file while it
is hashed and is put in the store only when its size and sha256 match what the client announced:
a broken or interrupted upload leaves nothing behind, and the same content uploaded twice is
stored once (`receive` returns at the header when the content is already there).

`materialize` gives the coordinator's loaders a local copy of each named file while a run is
validated and its splits are built; the copies are deleted afterwards (the splits are stored). A
config may also name `s3://bucket/key`: an object the coordinator reads with its own S3 endpoint
and credentials (another bucket than its store's is fine; a bucket that does not exist is not
created).

NOT here: what a valid dataset is (the task's loader decides), Hugging Face Hub datasets.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.errors import NotFoundError, StatusError
from shared.infra import StoreConfig
from shared.runconfig import RunConfig
from shared.store import ArtifactNotFound, ArtifactStore, StoreAuthError
from shared.store.s3 import S3Store

SCHEME = "sha256:"
PREFIX = "files/sha256/"
_HEX = re.compile(r"[0-9a-f]{64}")
_S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)")


class UploadError(StatusError):
    """The upload does not match its header (or has none); nothing was stored."""


class UploadTooLarge(StatusError):
    """The file is larger than the coordinator accepts."""

    status: ClassVar[str] = "RESOURCE_EXHAUSTED"


class FileNotStored(NotFoundError):
    """A run config names content the store does not hold."""


def check_digest(digest: str) -> str:
    if not _HEX.fullmatch(digest):
        raise UploadError(f"sha256 must be 64 lower-case hex digits, got {digest[:80]!r}")
    return digest


def uri(digest: str) -> str:
    return SCHEME + check_digest(digest)


def key_of(text: str) -> str | None:
    """The store key of a `sha256:<hex>` name; None for anything else (a path, `builtin:...`)."""
    if not text.startswith(SCHEME):
        return None
    return PREFIX + check_digest(text[len(SCHEME) :])


async def receive(
    requests: AsyncIterator[pb.UploadFileRequest], store: ArtifactStore, max_bytes: int
) -> pb.UploadFileResponse:
    """Store one streamed file under its content's key; see the module docstring."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("part") != "header":
        raise UploadError("an upload starts with a header message (name, sha256, size)")
    header = first.header
    key = PREFIX + check_digest(header.sha256)
    if header.size > max_bytes:
        raise UploadTooLarge(
            f"{header.name or 'the file'} is {header.size} bytes; this coordinator accepts at most "
            f"{max_bytes} (coordinator max_upload_bytes)"
        )
    if await asyncio.to_thread(store.exists, key):
        return pb.UploadFileResponse(uri=uri(header.sha256), stored=False)
    with tempfile.TemporaryDirectory(prefix="restem-upload-") as tmp:
        path = Path(tmp) / "file"
        digest, size = await _spool(requests, path, header.size)
        if size != header.size or digest != header.sha256:
            raise UploadError(
                f"{header.name or 'the upload'}: received {size} bytes with sha256 {digest}, but the "
                f"header said {header.size} bytes with sha256 {header.sha256} (interrupted or changed "
                "while uploading?); nothing was stored, upload it again"
            )
        await asyncio.to_thread(store.put_file, key, path)
    return pb.UploadFileResponse(uri=uri(header.sha256), stored=True)


async def _spool(requests: AsyncIterator[pb.UploadFileRequest], path: Path, limit: int) -> tuple[str, int]:
    """Write the chunks to `path`; their sha256 and total size. Stops once past `limit` bytes."""
    sha, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        async for request in requests:
            if request.WhichOneof("part") != "chunk":
                raise UploadError("only the first message of an upload is a header")
            size += len(request.chunk)
            if size > limit:
                break  # already wrong: no need to read (or write) the rest
            sha.update(request.chunk)
            await asyncio.to_thread(out.write, request.chunk)
    return sha.hexdigest(), size


async def stat(store: ArtifactStore, digest: str) -> pb.StatFileResponse:
    exists = await asyncio.to_thread(store.exists, PREFIX + check_digest(digest))
    return pb.StatFileResponse(exists=exists, uri=uri(digest) if exists else "")


def _file_fields(cfg: RunConfig) -> list[tuple[Any, str]]:
    """(model, field) of every file a run config names."""
    places: list[tuple[Any, str]] = []
    if cfg.task.files is not None:
        places += [(cfg.task.files, name) for name in ("train", "validation", "test")]
    places += [(t, "file") for t in cfg.evaluation.transfer]
    return [(m, f) for m, f in places if getattr(m, f) is not None]


async def materialize(
    cfg: RunConfig, store: ArtifactStore, store_config: StoreConfig, dest: Path
) -> tuple[RunConfig, dict[str, str]]:
    """A copy of `cfg` whose `sha256:` and `s3://` files are local copies under `dest`, and
    {local path: the name the config gave}."""
    local = cfg.model_copy(deep=True)
    names: dict[str, str] = {}
    for model, field in _file_fields(local):
        text = str(getattr(model, field))
        if not text.startswith((SCHEME, "s3:/")):  # Path() folds "s3://" into "s3:/"
            continue
        text = text.replace("s3:/", "s3://", 1) if text.startswith("s3:/") else text
        path = dest / hashlib.sha256(text.encode()).hexdigest()
        if not path.exists():
            await (
                _fetch_s3(text, store_config, path) if text.startswith("s3://") else _fetch(text, store, path)
            )
        setattr(model, field, path)
        names[str(path)] = text
    return local, names


async def _fetch(text: str, store: ArtifactStore, path: Path) -> None:
    key = key_of(text)
    assert key is not None
    if not await asyncio.to_thread(store.exists, key):
        raise FileNotStored(f"{text} is not in the store: `restem run` uploads the files a config names")
    await asyncio.to_thread(store.get_file, key, path)


async def _fetch_s3(uri: str, store_config: StoreConfig, path: Path) -> None:
    """Download `s3://bucket/key` with the coordinator's S3 endpoint and credentials."""
    match = _S3_URI.fullmatch(uri)
    if match is None:
        raise UploadError(f"{uri} is not an s3://bucket/key URI (bucket: 3-63 of a-z 0-9 . -)")
    if store_config.kind != "s3":
        raise UploadError(
            f"{uri}: this coordinator's store is a local directory; s3:// files are read with the "
            "store's S3 endpoint and credentials (store.kind: s3), or let `restem run` upload a local copy"
        )
    bucket, key = match.groups()
    try:
        source = await asyncio.to_thread(
            S3Store, store_config.model_copy(update={"bucket": bucket}), create_bucket=False
        )
        await asyncio.to_thread(source.get_file, key, path)
    except ArtifactNotFound as exc:
        what = "its bucket does not exist" if not exc.key else "no such object"
        raise FileNotStored(f"{uri} does not exist ({what} at {exc.store})") from None
    except StoreAuthError as exc:
        raise StoreAuthError(f"{uri}: {exc}") from None
