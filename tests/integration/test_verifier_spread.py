"""The evaluator's verification spreads over verifier replicas: a round-robin channel over every
address of the verifier's name, several batches in flight, verdicts back in answer order."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import grpc
import pytest
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from services.evaluator.events import VERIFY_BATCH, EvalHandler
from shared.auth import aio_channel

pytestmark = pytest.mark.integration


class Replica(verifier_pb2_grpc.VerifierServiceServicer):
    """A verifier replica that says which replica judged each answer (in `extracted`)."""

    def __init__(self, name: str, calls: Counter[str]) -> None:
        self.name, self.calls = name, calls

    async def Verify(self, request, context):
        self.calls[self.name] += 1
        await asyncio.sleep(0.05)  # long enough that batches overlap
        return verifier_pb2.VerifyResponse(
            verdicts=[
                verifier_pb2.Verdict(correct=i.completion == "right", extracted=self.name)
                for i in request.items
            ]
        )


async def test_batches_go_to_every_replica_and_verdicts_keep_their_order() -> None:
    calls: Counter[str] = Counter()
    servers, ports = [], []
    for name in ("a", "b"):
        server = grpc.aio.server()
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(Replica(name, calls), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    # what a headless Service's name resolves to: every replica's address
    channel = aio_channel(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", None)
    handler = EvalHandler(None, None, None, verifier_pb2_grpc.VerifierServiceStub(channel), 10.0,  # type: ignore[arg-type]
                          verify_concurrency=4)  # fmt: skip
    n = 8 * VERIFY_BATCH
    problems = [{"id": f"p{i}", "answer": i} for i in range(n)]
    completions = [SimpleNamespace(text="right" if i % 3 == 0 else "wrong") for i in range(n)]
    try:
        verdicts = await handler._verify("arithmetic", problems, completions)
    finally:
        await channel.close()
        for server in servers:
            await server.stop(0)
    assert [v.correct for v in verdicts] == [i % 3 == 0 for i in range(n)]
    assert sum(calls.values()) == 8 and calls["a"] >= 2 and calls["b"] >= 2, calls
