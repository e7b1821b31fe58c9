"""A worker's dataset cache: a dataset is read once however many jobs ask for it at once, parsed off
the event loop, kept for the next jobs, the least recently used dropped past capacity."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from shared.artifacts import DatasetCache
from shared.store import ArtifactNotFound, LocalStore
from shared.tasks import dumps_jsonl


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, bool]] = []  # (key, read on the event loop's thread)

    def get_bytes(self, key: str) -> bytes:
        self.reads.append((key, threading.current_thread() is threading.main_thread()))
        return super().get_bytes(key)


def test_concurrent_jobs_share_one_read_off_the_loop_and_later_ones_none(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    for name in ("a", "b", "c"):
        store.put_bytes(f"data/{name}.jsonl", dumps_jsonl([{"id": f"{name}1"}, {"id": f"{name}2"}]))
    cache = DatasetCache(store, capacity=2)

    async def scenario() -> None:
        many = await asyncio.gather(*(cache.get("data/a.jsonl") for _ in range(8)))
        assert all(m is many[0] for m in many) and set(many[0]) == {"a1", "a2"}
        await cache.get("data/b.jsonl")
        await cache.get("data/a.jsonl")  # a is now the most recent: c pushes b out, not a
        await cache.get("data/c.jsonl")
        await cache.get("data/a.jsonl")
        await cache.get("data/b.jsonl")
        with pytest.raises(ArtifactNotFound):
            await cache.get("data/missing.jsonl")

    asyncio.run(scenario())
    keys = [k for k, _ in store.reads]
    assert keys == ["data/a.jsonl", "data/b.jsonl", "data/c.jsonl", "data/b.jsonl", "data/missing.jsonl"]
    assert not any(on_loop for _, on_loop in store.reads)
