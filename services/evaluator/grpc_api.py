"""EvaluatorService: worker stats (evaluations arrive through the work queue)."""

from __future__ import annotations

import grpc
from restem.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc

from shared.artifacts import CheckpointCache
from shared.worker import WorkerState


class EvaluatorApi(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, checkpoints: CheckpointCache, state: WorkerState) -> None:
        self.checkpoints = checkpoints
        self.state = state

    async def GetStats(
        self, request: evaluator_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> evaluator_pb2.GetStatsResponse:
        self.state.loaded_checkpoints = self.checkpoints.loaded_keys
        return evaluator_pb2.GetStatsResponse(stats=self.state.to_proto())
