"""The trainer's validation reward scored by a real verifier over gRPC (the scorer the M-step uses)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.trainer.validation import grpc_scorer
from tests.fixtures import services

pytestmark = pytest.mark.integration


async def test_the_grpc_scorer_gets_the_verifiers_verdicts_in_order(tmp_path: Path) -> None:
    async with services.verifier(tmp_path, max_items_per_request=50) as served:
        score = grpc_scorer(served.address, "arithmetic", None, 10.0)
        refs = [json.dumps(55), json.dumps(7), json.dumps(12)]
        completions = ["The answer is 55.", "The answer is 8.", "12 = 5 + 7. The answer is 12."]
        # the scorer blocks (the training loop runs in a thread): keep the server's loop free
        assert await asyncio.to_thread(score, refs, completions) == [True, False, True]
