"""The trainer's validation reward scored by a real verifier over gRPC (the scorer the M-step uses)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from restem.verifier.v1 import verifier_pb2_grpc as pb_grpc

from services.trainer.validation import grpc_scorer
from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings, VerifierConfig
from services.verifier.grpc_api import VerifierApi
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig
from shared.worker import WorkerState

pytestmark = pytest.mark.integration


async def test_the_grpc_scorer_gets_the_verifiers_verdicts_in_order(tmp_path: Path) -> None:
    checkers = Checkers(SandboxSettings(workers=1, math_workers=1))
    port_file = tmp_path / "port"
    cfg = VerifierConfig(grpc=GrpcConfig(port_file=port_file, grace_s=0), max_items_per_request=50)
    binding = ServiceBinding(
        pb_grpc.add_VerifierServiceServicer_to_server,
        VerifierApi(cfg, WorkerState("verifier", device="cpu"), checkers),
        "restem.verifier.v1.VerifierService",
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve([binding], cfg.grpc, healthy=checkers.healthy, stop=stop))
    try:
        while not port_file.exists():
            await asyncio.sleep(0.02)
        score = grpc_scorer(f"127.0.0.1:{port_file.read_text()}", "arithmetic", None, 10.0)
        refs = [json.dumps(55), json.dumps(7), json.dumps(12)]
        completions = ["The answer is 55.", "The answer is 8.", "12 = 5 + 7. The answer is 12."]
        # the scorer blocks (the training loop runs in a thread): keep the server's loop free
        assert await asyncio.to_thread(score, refs, completions) == [True, False, True]
    finally:
        stop.set()
        await server
        checkers.close()
