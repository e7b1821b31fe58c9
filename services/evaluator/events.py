"""Eval jobs from the work queue: greedy answers on a split (or a shard of one), scored by the
verifier's gRPC API.

Idempotent: an existing results object is only re-announced.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from restem.events.v1 import events_pb2 as ev
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from shared.artifacts import CheckpointCache, DatasetCache
from shared.bus import EventBus, PermanentError
from shared.ordering import gather_bounded
from shared.params import GenerationParams, from_proto
from shared.seeds import sample_seeds
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import user_message
from shared.worker import announce, rows_once

from . import metrics
from .core import attach_samples, result_rows, split_summary

VERIFY_BATCH = 512
# Code references carry their tests (APPS: up to megabytes); a request stays well under the
# verifier's gRPC message limit however large the problems are.
VERIFY_BATCH_BYTES = 16 * 2**20


def verify_batches(items: list, max_items: int, max_bytes: int) -> list[list]:
    """Consecutive batches of at most max_items items and max_bytes bytes (one item at least)."""
    batches: list[list] = []
    size = 0
    for item in items:
        n = item.ByteSize()
        if not batches or len(batches[-1]) >= max_items or size + n > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += n
    return batches


def shard_of(dataset: dict[str, dict], job: ev.EvalJob) -> list[dict]:
    """The job's problems: the split sorted by id, or (a split in shards) its slice of it."""
    problems = sorted(dataset.values(), key=lambda p: p["id"])
    if job.num_shards <= 1:
        return problems
    part = problems[job.problem_offset : job.problem_offset + job.problem_count]
    if len(part) != job.problem_count or not part:
        raise PermanentError(
            f"eval shard {job.shard} of {job.split} asks for problems {job.problem_offset}.."
            f"{job.problem_offset + job.problem_count} of a split of {len(problems)}"
        )
    return part


class EvalHandler:
    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        checkpoints: CheckpointCache,
        verifier: verifier_pb2_grpc.VerifierServiceStub,
        verify_timeout_s: float,
        verify_concurrency: int = 1,
    ) -> None:
        self.bus, self.store, self.checkpoints, self.datasets = bus, store, checkpoints, DatasetCache(store)
        self.verifier, self.verify_timeout_s = verifier, verify_timeout_s
        self.verify_concurrency = verify_concurrency

    async def _verify(self, task: str, problems: list[dict], completions: list) -> list:
        verdicts: list = []
        references = {p["id"]: json.dumps(p["answer"]) for p in problems}
        items = [
            verifier_pb2.VerifyItem(task=task, reference_json=references[p["id"]], completion=c.text)
            for p, c in zip(problems, completions, strict=True)
        ]

        async def one(batch: list) -> list:
            try:
                resp = await self.verifier.Verify(
                    verifier_pb2.VerifyRequest(items=batch), timeout=self.verify_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise PermanentError(f"verifier rejected the answers: {exc.details()}") from exc
                raise  # unavailable / deadline: retried with backoff
            return list(resp.verdicts)

        # Batches at once: with a round-robin channel they land on different verifier replicas.
        batches = verify_batches(items, VERIFY_BATCH, VERIFY_BATCH_BYTES)
        for got in await gather_bounded(self.verify_concurrency, (one(b) for b in batches)):
            verdicts += got
        return verdicts

    async def _evaluate(self, job: ev.EvalJob) -> list[dict]:
        from shared.llm.checkpoint import CheckpointError

        started = time.monotonic()
        from shared.llm.generation import render_prompt

        try:
            problems = shard_of(await self.datasets.get(job.dataset_key), job)
            generator = await self.checkpoints.generator(job.checkpoint_key)
        except (ArtifactNotFound, CheckpointError) as exc:
            raise PermanentError(str(exc)) from exc
        fmt = job.prompt_format
        prompts = [
            render_prompt(
                generator.tokenizer,
                user_message(job.task, p),
                system=fmt.system_prompt or None,
                chat=fmt.chat_template,
            )
            for p in problems
        ]
        outs = await asyncio.to_thread(generator.generate, prompts, from_proto(job.params, GenerationParams))
        completions = [o[0] for o in outs]
        rows = result_rows(problems, completions, await self._verify(job.task, problems, completions))
        if job.sample_params.n > 0:
            params = from_proto(job.sample_params, GenerationParams)
            # per (problem, index) seeds: pass@k does not depend on how the split is batched
            seeds = sample_seeds(job.sample_params.seed, [p["id"] for p in problems], params.n)
            sampled = await asyncio.to_thread(generator.generate, prompts, params, seeds=seeds)
            repeated = [p for p, o in zip(problems, sampled, strict=True) for _ in o]
            verdicts = await self._verify(job.task, repeated, [c for o in sampled for c in o])
            attach_samples(rows, sampled, verdicts)
        metrics.record(job.split, rows, time.monotonic() - started)
        return rows

    async def __call__(self, job: ev.EvalJob) -> None:
        started = time.monotonic()
        rows = await rows_once(self.store, job.output_key, lambda: self._evaluate(job))
        summary = split_summary(rows, job.task)
        await announce(self.bus, job, ev.EvalDone, started, results_key=job.output_key, **summary)
