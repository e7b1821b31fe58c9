"""Sample jobs from the work queue: generate K completions per problem of a shard.

Idempotent: a shard whose samples object already exists (a redelivery after the write) is only
re-announced, never regenerated, so its samples are counted once; a shard regenerated after a crash
before the write draws the same samples, because sample `i` of problem `p` is seeded from (job seed,
`p`, `i`) alone (`shared.seeds.sample_seeds`). The same rule makes a sample independent of the shard
and adaptive round it lands in. Generation runs in a thread so the event loop keeps the job's
heartbeat (`in_progress`) going; once it is over the replica pulls its next shard while this one's
samples are written (`shared.ordering.ModelSlot`).
"""

from __future__ import annotations

import asyncio
import time

from restem.events.v1 import events_pb2 as ev

from shared.artifacts import CheckpointCache, DatasetCache
from shared.bus import EventBus, PermanentError
from shared.ordering import model_done
from shared.params import GenerationParams, from_proto
from shared.seeds import sample_seeds
from shared.store import ArtifactNotFound, ArtifactStore
from shared.worker import announce, rows_once

from . import metrics
from .core import render_prompts, sample_rows, select_problems, shard_summary


class SampleHandler:
    def __init__(
        self, bus: EventBus, store: ArtifactStore, checkpoints: CheckpointCache, max_samples: int
    ) -> None:
        self.bus, self.store, self.checkpoints, self.datasets = bus, store, checkpoints, DatasetCache(store)
        self.max_samples = max_samples

    async def _generate(self, job: ev.SampleJob) -> list[dict]:
        from shared.llm.checkpoint import CheckpointError

        try:
            problems = select_problems(await self.datasets.get(job.dataset_key), job.problem_ids)
            if len(problems) * job.params.n > self.max_samples:
                raise ValueError(
                    f"shard asks for {len(problems) * job.params.n} samples; this sampler accepts at most "
                    f"{self.max_samples} (lower em.shard_size or raise max_samples_per_job)"
                )
            generator = await self.checkpoints.generator(job.policy_key)
        except (ArtifactNotFound, CheckpointError, ValueError) as exc:
            raise PermanentError(str(exc)) from exc
        fmt = job.prompt_format
        prompts = render_prompts(
            generator.tokenizer, job.task, problems, chat=fmt.chat_template, system=fmt.system_prompt or None
        )
        params = from_proto(job.params, GenerationParams)
        seeds = sample_seeds(job.params.seed, job.problem_ids, params.n, job.first_index)
        decoding = time.monotonic()
        completions = await asyncio.to_thread(generator.generate, prompts, params, seeds=seeds)
        model_done()  # the replica pulls its next shard while this one is written
        rows = sample_rows(job.iteration, problems, prompts, completions, job.first_index, job.policy_key)
        metrics.record(rows, time.monotonic() - decoding)
        return rows

    async def __call__(self, job: ev.SampleJob) -> None:
        started = time.monotonic()
        rows = await rows_once(self.store, job.output_key, lambda: self._generate(job))
        summary = shard_summary(rows)
        await announce(self.bus, job, ev.SampleDone, started, samples_key=job.output_key, **summary)
