"""Policy prefetch: a sampler replica downloads a run's next policy when the coordinator hints it
(`shared.hints`), while the run is still evaluating, so the next E-step's first shards do not wait
for every replica to fetch a multi-GB checkpoint from the store at the same moment. Each replica
waits a random delay of up to `spread_s` first, which spreads the downloads over that window.

Only the download is done ahead (into the checkpoint cache's directory); the model is loaded when a
job needs it, because the replica may be serving another run's policy meanwhile. A failed prefetch
only logs: the first job fetches the checkpoint as it would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import nats.errors

from shared import hints
from shared.bus import EventBus

log = logging.getLogger("restem.sampler.prefetch")

REMEMBERED = 256  # hinted keys remembered, so a repeated hint downloads nothing


class Fetcher(Protocol):
    async def fetch(self, key: str) -> Path: ...


class PolicyPrefetch:
    def __init__(
        self, checkpoints: Fetcher, spread_s: float, delay: Callable[[float, float], float] = random.uniform
    ) -> None:
        self.checkpoints, self.spread_s, self.delay = checkpoints, spread_s, delay
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, run_id: str, key: str) -> None:
        if key in self._seen:
            return
        self._seen[key] = None
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        task = asyncio.create_task(self._fetch(run_id, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, run_id: str, key: str) -> None:
        await asyncio.sleep(self.delay(0.0, self.spread_s))
        try:
            await self.checkpoints.fetch(key)
        except Exception as exc:
            log.warning("prefetch of %s (run %s) failed: %s; its first job fetches it", key, run_id, exc)
        else:
            log.info("prefetched %s for run %s", key, run_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def prefetch_hinted(
    bus: EventBus, checkpoints: Fetcher, spread_s: float
) -> Callable[[], Awaitable[None]]:
    """Prefetch every hinted policy from now on; returns what stops it."""
    prefetch = PolicyPrefetch(checkpoints, spread_s)
    subscription = await hints.on_policy(bus, prefetch)

    async def stop() -> None:
        # The bus may be closed already (the service stops it first): the subscription went with it.
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await subscription.unsubscribe()
        await prefetch.close()

    return stop
