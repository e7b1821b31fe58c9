"""Caches workers keep of immutable artifacts: datasets by key, checkpoints by key.

Keys of datasets and checkpoints are never rewritten with other content (a new iteration gets a
new key), so caching by key is safe. The checkpoint cache holds one model in memory (the current
policy) and keeps downloaded directories on local disk for reuse.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import loads_jsonl

log = logging.getLogger("restem.artifacts")


T = TypeVar("T")


async def _once(inflight: dict[str, asyncio.Future[T]], key: str, start: Callable[[], Awaitable[T]]) -> T:
    """`start()`'s result for `key`, started once for the callers that ask while it runs (a caller
    cancelled meanwhile does not cancel it for the others)."""
    task = inflight.get(key)
    if task is None:
        task = inflight[key] = asyncio.ensure_future(start())
        task.add_done_callback(lambda _: inflight.pop(key, None))
    return await asyncio.shield(task)


def _read_problems(store: ArtifactStore, key: str) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in loads_jsonl(store.get_bytes(key))}


class DatasetCache:
    """The last `capacity` datasets a worker read, by key. A dataset is read and parsed in a thread
    (a train split is tens of MB: the event loop keeps the jobs' heartbeats going) and once however
    many jobs ask for it at the same time."""

    def __init__(self, store: ArtifactStore, capacity: int = 16) -> None:
        self.store = store
        self.capacity = capacity
        self._cache: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self._reads: dict[str, asyncio.Future[dict[str, dict[str, Any]]]] = {}

    async def get(self, key: str) -> dict[str, dict[str, Any]]:
        """Problems of a dataset by id; ArtifactNotFound if the key does not exist."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        problems = await _once(self._reads, key, lambda: asyncio.to_thread(_read_problems, self.store, key))
        self._cache[key] = problems
        self._cache.move_to_end(key)
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return problems


class CheckpointCache:
    """Downloads checkpoint directories once and keeps the last loaded model in memory.

    `load` builds the generator from a downloaded directory (default: a TransformersGenerator on
    `device`); the sampler passes its configured backend's. A generator with a `close()` method
    is closed before the next checkpoint loads, so GPU memory is free for it.
    """

    def __init__(
        self,
        store: ArtifactStore,
        cache_dir: Path,
        device: str,
        *,
        max_batch_sequences: int = 512,
        load: Callable[[Path], Any] | None = None,
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.device = device
        self.max_batch_sequences = max_batch_sequences
        self.load = load
        self._loaded: tuple[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._fetches: dict[str, asyncio.Future[Path]] = {}

    def local_dir(self, key: str) -> Path:
        return self.cache_dir / key.replace("/", "__")

    async def fetch(self, key: str) -> Path:
        """The checkpoint's local directory, downloaded once: a call while it downloads (a prefetch,
        then the first job) waits for that download instead of starting another."""
        return await _once(self._fetches, key, lambda: self._download(key))

    async def _download(self, key: str) -> Path:
        if not await asyncio.to_thread(self.store.dir_exists, key):
            raise ArtifactNotFound(key, self.store.describe(), "the checkpoint's MANIFEST.json is missing")
        dest = self.local_dir(key)
        await asyncio.to_thread(self.store.get_dir, key, dest)
        return dest

    async def generator(self, key: str) -> Any:
        """The generator for the checkpoint (see `load`), loading it if it is not the one in memory."""
        async with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            from shared.llm.checkpoint import load_for_inference
            from shared.llm.generation import TransformersGenerator

            path = await self.fetch(key)
            previous, self._loaded = self._loaded, None  # release the previous model before loading the next
            if previous is not None and hasattr(previous[1], "close"):
                await asyncio.to_thread(previous[1].close)
            del previous
            if self.load is not None:
                gen = await asyncio.to_thread(self.load, path)
            else:
                model, tokenizer = await asyncio.to_thread(load_for_inference, path, self.device)
                gen = TransformersGenerator(
                    model, tokenizer, device=self.device, max_batch_sequences=self.max_batch_sequences
                )
            self._loaded = (key, gen)
            log.info("loaded checkpoint %s on %s", key, self.device)
            return gen

    @property
    def loaded_keys(self) -> list[str]:
        return [self._loaded[0]] if self._loaded else []
