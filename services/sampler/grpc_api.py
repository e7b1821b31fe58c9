"""SamplerService: small direct generations on a stored checkpoint, and worker stats."""

from __future__ import annotations

import asyncio

import grpc
from restem.sampler.v1 import sampler_pb2, sampler_pb2_grpc

from shared.artifacts import CheckpointCache
from shared.params import GenerationParams, from_proto
from shared.store import ArtifactNotFound
from shared.worker import WorkerState

MAX_DIRECT_SEQUENCES = 256


class SamplerApi(sampler_pb2_grpc.SamplerServiceServicer):
    def __init__(self, checkpoints: CheckpointCache, state: WorkerState) -> None:
        self.checkpoints = checkpoints
        self.state = state

    async def Generate(
        self, request: sampler_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> sampler_pb2.GenerateResponse:
        from shared.llm.generation import render_prompt

        n = max(1, request.params.n)
        if not request.prompts:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "prompts is empty: send at least one prompt"
            )
        if len(request.prompts) * n > MAX_DIRECT_SEQUENCES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.prompts)} prompts x n={n} exceeds {MAX_DIRECT_SEQUENCES} sequences; "
                "use a run (the sample work queue) for bulk generation",
            )
        if request.params.max_new_tokens < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "params.max_new_tokens must be >= 1")
        try:
            gen = await self.checkpoints.generator(request.checkpoint_key)
        except ArtifactNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        prompts = [render_prompt(gen.tokenizer, p) for p in request.prompts]
        outs = await asyncio.to_thread(gen.generate, prompts, from_proto(request.params, GenerationParams))
        return sampler_pb2.GenerateResponse(
            results=[
                sampler_pb2.PromptCompletions(
                    completions=[
                        sampler_pb2.Completion(
                            text=c.text, num_tokens=c.num_tokens, finish_reason=c.finish_reason
                        )
                        for c in cs
                    ]
                )
                for cs in outs
            ]
        )

    async def GetStats(
        self, request: sampler_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> sampler_pb2.GetStatsResponse:
        self.state.loaded_checkpoints = self.checkpoints.loaded_keys
        return sampler_pb2.GetStatsResponse(stats=self.state.to_proto())
