"""Run-state key-value store on JetStream KV, used through `shared.bus.EventBus`.

Keys are run ids, values are opaque bytes (the coordinator's serialized run state). Writes are
optimistic: `update` succeeds only if the caller read the latest revision, so two coordinators
cannot silently overwrite each other; the loser gets `ConflictError`, re-reads and retries.

Not covered: deleting runs and TTLs (runs are kept), and watching several keys at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator
from typing import Any

import nats.js.errors as jserr
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger("restem.bus")

_HISTORY = 5
_ERR_STREAM_NAME_IN_USE = 10058
_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")


class ConflictError(Exception):
    """KV update lost an optimistic-concurrency race."""


class RunStateKV:
    """Thin typed wrapper over one JetStream KV bucket (`{prefix}_runs`)."""

    def __init__(self, nc: NATS, js: JetStreamContext, bucket: str, *, api_prefix: str = "$JS.API") -> None:
        self._nc, self._js, self._api = nc, js, api_prefix
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def ensure(self) -> None:
        """Create the bucket, or fix its history if it exists with another one (idempotent)."""
        try:
            self._kv = await self._js.create_key_value(
                bucket=self._bucket, history=_HISTORY, storage=api.StorageType.FILE
            )
            return
        except jserr.BadRequestError as err:
            if err.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
        # Exists with a different config (e.g. created by an older release): update in place.
        stream = f"KV_{self._bucket}"
        info = await self._js.stream_info(stream)
        log.warning("KV bucket %s exists with another config; updating history to %d", self._bucket, _HISTORY)
        await self._js.update_stream(info.config.evolve(max_msgs_per_subject=_HISTORY))
        self._kv = await self._js.key_value(self._bucket)

    async def _bucket_handle(self) -> KeyValue:
        # Services that only read state may never call ensure_topology; bind lazily then.
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def get(self, key: str) -> tuple[bytes, int] | None:
        kv = await self._bucket_handle()
        try:
            entry = await kv.get(_valid_key(key))
        except jserr.KeyNotFoundError:  # also raised for deleted keys
            return None
        return entry.value or b"", int(entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        kv = await self._bucket_handle()
        try:
            return await kv.create(_valid_key(key), value)
        except jserr.KeyWrongLastSequenceError as err:
            raise ConflictError(f"key {key!r} already exists") from err

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        if revision < 1:
            # nats-py treats last=0 as "must not exist", which would turn an update into a create.
            raise ValueError(f"revision must be >= 1, got {revision}")
        kv = await self._bucket_handle()
        try:
            return await kv.update(_valid_key(key), value, last=revision)
        except jserr.KeyWrongLastSequenceError as err:
            raise ConflictError(f"key {key!r} is no longer at revision {revision}") from err

    async def keys(self) -> list[str]:
        """Every key with a stored value, sorted."""
        return [key for key, _, _ in await self.entries()]

    async def entries(self) -> list[tuple[str, bytes, int]]:
        """(key, value, revision) of every key with a stored value, sorted by key.

        Read from the stream's subject index, then one get per key; not nats-py's
        ``KeyValue.keys()``: that one starts a watcher and decides "no more keys" from the
        consumer's pending count, which is already 0 once the server has pushed the messages but
        before the client has read them; under load it returned an empty list for a bucket that
        had keys (a duplicate run name was accepted, CI run of 2026-11-25).
        """
        await self._bucket_handle()
        stream, prefix = f"KV_{self._bucket}", f"$KV.{self._bucket}."
        found: list[str] = []
        while True:  # the server pages subject details (at most 100,000 per reply)
            body = json.dumps({"subjects_filter": f"{prefix}>", "offset": len(found)}).encode()
            reply = await self._nc.request(f"{self._api}.STREAM.INFO.{stream}", body, timeout=5.0)
            info = json.loads(reply.data)
            if "error" in info:
                jserr.APIError.from_error(info["error"])  # raises
            page = (info.get("state") or {}).get("subjects") or {}
            found.extend(subject[len(prefix) :] for subject in page)
            if not page or len(found) >= int(info.get("total") or 0):
                break
        entries = []
        for key in sorted(found):
            # A deleted or purged key keeps its marker message; only keys with a value count.
            got = await self.get(key)
            if got is not None:
                entries.append((key, *got))
        return entries

    async def watch(self, key: str) -> AsyncGenerator[tuple[bytes, int], None]:
        """Current value first (if any), then every update; deletes are skipped.

        Close the generator when done (``contextlib.aclosing``) so the server-side consumer is
        removed at once instead of at garbage collection.
        """
        kv = await self._bucket_handle()
        # Shielded: a client that leaves while the watcher is being created (WatchRun cancelled
        # right after its first message) must not leave a subscription behind that buffers every
        # later update of the run for ever; it is stopped as soon as it exists.
        creating = asyncio.ensure_future(kv.watch(_valid_key(key)))
        try:
            watcher = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(_stop_orphan)
            raise
        try:
            async for entry in watcher:
                # None marks "initial values delivered"; deletes carry no value to report.
                if entry is None or entry.operation in (KV_DEL, KV_PURGE):
                    continue
                yield entry.value or b"", int(entry.revision or 0)
        finally:
            try:
                await watcher.stop()
            except Exception:  # closing connection: the ordered consumer dies with it anyway
                log.debug("stopping KV watcher for %s failed", key, exc_info=True)


def _stop_orphan(creating: asyncio.Future[Any]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        stopping = asyncio.ensure_future(creating.result().stop())
        _ORPHANS.add(stopping)  # a strong reference until it is done
        stopping.add_done_callback(_ORPHANS.discard)


_ORPHANS: set[asyncio.Future[Any]] = set()


def _valid_key(key: str) -> str:
    # Same rule as nats-py, but as a ValueError that names the key instead of InvalidKeyError().
    if not _KEY_RE.fullmatch(key) or key[0] == "." or key[-1] == ".":
        raise ValueError(f"invalid KV key {key!r}")
    return key
