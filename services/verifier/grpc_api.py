"""VerifierService: direct scoring of completions (the evaluator uses it) and worker stats."""

from __future__ import annotations

import json

import grpc
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from shared.tasks import TASKS_WITH_CHECKERS, check_answer
from shared.worker import WorkerState

from .config import VerifierConfig


class VerifierApi(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, config: VerifierConfig, state: WorkerState) -> None:
        self.config = config
        self.state = state

    async def Verify(
        self, request: verifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyResponse:
        if len(request.items) > self.config.max_items_per_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.items)} items in one request; send at most {self.config.max_items_per_request}",
            )
        verdicts = []
        for i, item in enumerate(request.items):
            if item.task not in TASKS_WITH_CHECKERS:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"items[{i}].task '{item.task}' has no checker; use one of {', '.join(TASKS_WITH_CHECKERS)}",
                )
            try:
                reference = json.loads(item.reference_json)
            except json.JSONDecodeError:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"items[{i}].reference_json is not valid JSON"
                )
            v = check_answer(item.task, str(reference), item.completion)
            verdicts.append(
                verifier_pb2.Verdict(
                    correct=v.correct, extracted=v.extracted, rule=v.rule, checker_version=v.checker_version
                )
            )
        return verifier_pb2.VerifyResponse(verdicts=verdicts)

    async def GetStats(
        self, request: verifier_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.GetStatsResponse:
        return verifier_pb2.GetStatsResponse(stats=self.state.to_proto())
