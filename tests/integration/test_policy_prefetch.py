"""Policy prefetch over a real nats-server: the coordinator's hint makes a sampler replica download
the next policy into its checkpoint cache before any job asks for it, once however often it is
hinted; the job's own fetch then reads nothing more from the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from services.sampler.prefetch import prefetch_hinted
from shared import hints
from shared.artifacts import CheckpointCache
from shared.bus import EventBus
from shared.infra import NatsConfig
from shared.store import LocalStore

pytestmark = pytest.mark.integration


class CountingStore(LocalStore):
    """A local store that counts the checkpoint files it serves."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.file_reads: list[str] = []

    def _fetch_file(self, key: str, target: Path) -> Any:
        self.file_reads.append(key)
        return super()._fetch_file(key, target)


def _checkpoint(store: LocalStore, tmp: Path, key: str) -> None:
    src = tmp / "src" / key
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    (src / "model.safetensors").write_bytes(b"w" * 4096)
    store.put_dir(key, src)


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_hinted_policy_is_downloaded_once_before_its_first_job(
    nats_config: NatsConfig, tmp_path: Path
) -> None:
    store = CountingStore(tmp_path / "store")
    _checkpoint(store, tmp_path, "runs/r-1/iter-1/checkpoint")

    async def scenario() -> None:
        coordinator = await EventBus.connect(nats_config, name="test-coordinator")
        sampler = await EventBus.connect(nats_config, name="test-sampler")
        cache = CheckpointCache(store, tmp_path / "cache", "cpu")
        stop = await prefetch_hinted(sampler, cache, 0.0)
        try:
            await sampler.client.flush()  # the subscription is registered before the hint goes out
            for _ in range(3):  # a repeated hint (a retried event) downloads nothing more
                await hints.publish_policy(coordinator, "r-1", "runs/r-1/iter-1/checkpoint")
            await coordinator.client.publish(hints.subject("r-1", hints.POLICY), b"../etc/passwd")  # ignored
            local = cache.local_dir("runs/r-1/iter-1/checkpoint")
            await _until(lambda: (local / "model.safetensors").exists())
            await asyncio.sleep(0.3)  # any second download would have started by now
            assert sorted(store.file_reads) == [
                "runs/r-1/iter-1/checkpoint/config.json",
                "runs/r-1/iter-1/checkpoint/model.safetensors",
            ]
            assert await cache.fetch("runs/r-1/iter-1/checkpoint") == local  # the job's fetch: a cache hit
            assert len(store.file_reads) == 2
        finally:
            await stop()
            await coordinator.close()
            await sampler.close()

    asyncio.run(scenario())


def test_a_fetch_while_the_prefetch_downloads_waits_for_it(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    _checkpoint(store, tmp_path, "ck/1")
    cache = CheckpointCache(store, tmp_path / "cache", "cpu")

    async def both() -> list[Path]:
        return await asyncio.gather(cache.fetch("ck/1"), cache.fetch("ck/1"), cache.fetch("ck/1"))

    paths = asyncio.run(both())
    assert len(set(paths)) == 1 and len(store.file_reads) == 2  # one download for three callers
