"""A second run of the same verify job runs no program: the verifier over a real nats-server, real
gRPC and a real local store, for code and MATH. GetStats counts the cache hits and the checks run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from restem.events.v1 import events_pb2 as ev
from restem.verifier.v1 import verifier_pb2 as pb
from restem.verifier.v1 import verifier_pb2_grpc as pb_grpc

from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings, VerifierConfig
from services.verifier.events import VerifyHandler
from services.verifier.grpc_api import VerifierApi
from shared import keys
from shared.bus import EventBus
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, load_problems
from shared.worker import WorkerState, typed_handler

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
APPS = {p["id"]: p for p in load_problems(DATA / "apps-tiny-train.jsonl", "apps")}
SHARDS = {
    "apps": (
        [APPS["sum-two"], APPS["double"]],
        [
            ("sum-two", "```python\na, b = map(int, input().split())\nprint(a + b)\n```"),
            ("sum-two", "```python\nprint(int(input().split()[0]) * 2)\n```"),
            ("double", "```python\nprint(2 * int(input()))\n```"),
            ("double", "```python\nwhile True: pass\n```"),
        ],
    ),
    "math": (
        [{"id": "half", "question": "What is 2/4?", "answer": "\\frac{1}{2}"}],
        # Every one reaches math-verify (none is an exact or normalised match): a sandboxed check.
        [("half", "so $\\boxed{\\dfrac{2}{4}}$"), ("half", "$\\boxed{0.333}$"), ("half", "$\\boxed{2/4}$")],
    ),
}


@dataclass
class Verifier:
    bus: EventBus
    store: LocalStore
    state: WorkerState
    stub: pb_grpc.VerifierServiceStub


@pytest.fixture
async def verifier(nats_config, tmp_path: Path) -> AsyncIterator[Verifier]:
    """One verifier replica: its verify queue pulled from NATS, its gRPC API, a store with a cache."""
    bus = await EventBus.connect(nats_config, name="test-verifier-cache")
    await bus.ensure_topology()
    store = LocalStore(tmp_path / "store")
    checkers = Checkers(SandboxSettings(workers=2, math_workers=1), store)
    state = WorkerState("verifier", device="cpu")
    handler = typed_handler(
        bus, "verify", ev.VerifyJob, VerifyHandler(bus, store, checkers), state, max_deliver=3
    )
    cfg = VerifierConfig(grpc=GrpcConfig(port_file=tmp_path / "port", grace_s=0))
    binding = ServiceBinding.of(pb_grpc, "VerifierService", VerifierApi(cfg, state, checkers))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(bus.run_worker("verify", handler, stop=stop, max_deliver=3, backoff_s=(0.1,))),
        asyncio.create_task(serve([binding], cfg.grpc, healthy=checkers.healthy, stop=stop)),
    ]
    while not (tmp_path / "port").exists():
        await asyncio.sleep(0.02)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{(tmp_path / 'port').read_text()}") as channel:
        yield Verifier(bus, store, state, pb_grpc.VerifierServiceStub(channel))
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.to_thread(checkers.close)
    await bus.close()


async def _run_job(v: Verifier, task: str, run_id: str) -> tuple[bytes, pb.GetStatsResponse]:
    """Publish the shard's verify job as run `run_id`; its verdicts and the stats once it is done."""
    job = ev.VerifyJob(
        run_id=run_id,
        job_id=keys.job_id("verify", run_id, 1, 0),
        iteration=1,
        shard=0,
        task=task,
        dataset_key=f"data/{task}.jsonl",
        samples_key=f"samples/{task}.jsonl",
        output_key=keys.verdicts_key(run_id, 1, 0),
    )
    done = v.state.jobs_done + 1
    assert await v.bus.publish_job("verify", run_id, job.SerializeToString(), msg_id=job.job_id)
    for _ in range(1200):
        if v.state.jobs_done >= done:
            break
        assert v.state.jobs_failed == 0, "the verify job failed"
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the {task} verify job of {run_id} did not finish")
    return v.store.get_bytes(job.output_key), await v.stub.GetStats(pb.GetStatsRequest(), timeout=10)


@pytest.mark.parametrize("task", ["apps", "math"])
async def test_a_second_run_of_the_same_shard_runs_no_check(verifier: Verifier, task: str) -> None:
    problems, pairs = SHARDS[task]
    verifier.store.put_bytes(f"data/{task}.jsonl", dumps_jsonl(problems))
    samples = [{"sample_id": f"s{i}", "problem_id": pid, "completion": c} for i, (pid, c) in enumerate(pairs)]
    verifier.store.put_bytes(f"samples/{task}.jsonl", dumps_jsonl(samples))

    first_rows, first = await _run_job(verifier, task, "cache-run-1")
    assert (first.stats.checks_run, first.stats.cache_misses, first.stats.cache_hits) == (
        len(samples),
        len(samples),
        0,
    )
    second_rows, second = await _run_job(verifier, task, "cache-run-2")
    assert second_rows == first_rows  # the same verdicts, rules and details
    assert second.stats.cache_hits - first.stats.cache_hits == len(samples)
    assert second.stats.checks_run == first.stats.checks_run, "the second run ran a check again"
    assert second.stats.cache_misses == first.stats.cache_misses
    assert len(verifier.store.list("cache/verdicts/")) == len(samples)
