"""TrainerService: worker stats (prepare and train jobs arrive through the work queue)."""

from __future__ import annotations

import grpc
from restem.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from shared.worker import WorkerState


class TrainerApi(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, state: WorkerState) -> None:
        self.state = state

    async def GetStats(
        self, request: trainer_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetStatsResponse:
        return trainer_pb2.GetStatsResponse(stats=self.state.to_proto())
