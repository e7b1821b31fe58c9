"""Verify jobs from the work queue: read a shard of samples, write verdicts, report counts.

Idempotent: the verdicts object is a pure function of the samples and the checker, so a
redelivered job that finds it already written only re-announces the result. A sandbox that cannot
run a check raises, so the job is retried (and dead-lettered after max_deliver) instead of
writing a reward of 0 for an infrastructure failure.
"""

from __future__ import annotations

import asyncio
import time

from restem.events.v1 import events_pb2 as ev

from shared.artifacts import DatasetCache
from shared.bus import EventBus, PermanentError
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import dumps_jsonl, loads_jsonl

from .checkers import BadProblem, Checkers
from .core import pair_samples, verdict_rows


class VerifyHandler:
    def __init__(self, bus: EventBus, store: ArtifactStore, checkers: Checkers) -> None:
        self.bus = bus
        self.store = store
        self.checkers = checkers
        self.datasets = DatasetCache(store)

    async def __call__(self, job: ev.VerifyJob) -> None:
        started = time.monotonic()
        try:
            if await asyncio.to_thread(self.store.exists, job.output_key):
                rows = loads_jsonl(await asyncio.to_thread(self.store.get_bytes, job.output_key))
            else:
                problems = await self.datasets.get(job.dataset_key)
                samples = loads_jsonl(await asyncio.to_thread(self.store.get_bytes, job.samples_key))
                verdicts = await self.checkers.check_many(job.task, pair_samples(job.task, problems, samples))
                rows = verdict_rows(samples, verdicts)
                await asyncio.to_thread(self.store.put_bytes, job.output_key, dumps_jsonl(rows))
        except (ArtifactNotFound, BadProblem, ValueError) as exc:
            raise PermanentError(str(exc)) from exc
        done = ev.VerifyDone(
            run_id=job.run_id,
            job_id=job.job_id,
            iteration=job.iteration,
            shard=job.shard,
            verdicts_key=job.output_key,
            num_samples=len(rows),
            num_correct=sum(1 for r in rows if r["correct"]),
            seconds=time.monotonic() - started,
        )
        await self.bus.publish_event(
            job.run_id, "verify_done", done.SerializeToString(), msg_id=f"{job.job_id}.done"
        )
