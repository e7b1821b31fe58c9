"""Verify jobs from the work queue: read a shard of samples, write verdicts, report counts.

Idempotent: the verdicts object is a pure function of the samples and the checker, so a
redelivered job that finds it already written only re-announces the result, and one that does not
reads the verdicts its earlier delivery judged from the verdict cache. A sandbox that cannot
run a check raises, so the job is retried (and dead-lettered after max_deliver) instead of
writing a reward of 0 for an infrastructure failure.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from restem.events.v1 import events_pb2 as ev

from shared.artifacts import DatasetCache
from shared.bus import EventBus, PermanentError
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import loads_jsonl
from shared.worker import announce, rows_once

from .checkers import BadProblem, Checkers
from .core import pair_samples, verdict_rows, verdicts_summary
from .rewards import reward_mode


class VerifyHandler:
    def __init__(self, bus: EventBus, store: ArtifactStore, checkers: Checkers) -> None:
        self.bus = bus
        self.store = store
        self.checkers = checkers
        self.datasets = DatasetCache(store)

    async def _verify(self, job: ev.VerifyJob) -> list[dict[str, Any]]:
        reward = reward_mode(job.reward)  # before any read: an unknown mode fails the job at once
        problems = await self.datasets.get(job.dataset_key)
        samples = loads_jsonl(await asyncio.to_thread(self.store.get_bytes, job.samples_key))
        pairs = pair_samples(job.task, problems, samples)
        return verdict_rows(samples, await self.checkers.score_many(job.task, pairs, reward))

    async def __call__(self, job: ev.VerifyJob) -> None:
        started = time.monotonic()
        try:
            rows = await rows_once(self.store, job.output_key, lambda: self._verify(job))
        except (ArtifactNotFound, BadProblem, ValueError) as exc:
            raise PermanentError(str(exc)) from exc
        summary = verdicts_summary(rows)
        await announce(self.bus, job, ev.VerifyDone, started, verdicts_key=job.output_key, **summary)
