"""Sampler replicas on one work queue over a real nats-server and store: they split the shards, each
shard is generated once, and a later adaptive round numbers its samples after the earlier ones and
draws them with the seeds of (iteration seed, problem, index), as any shard would.

The model is the benchmark's simulated fixed-latency backend (tests/bench/sim_sampler.py): the
orchestration is what is under test, and it makes a shard take a known time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from restem.common.v1 import common_pb2
from restem.events.v1 import events_pb2 as ev

from services.sampler.events import SampleHandler
from shared import keys
from shared.artifacts import CheckpointCache
from shared.bus import EventBus
from shared.seeds import sample_seeds
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, loads_jsonl
from shared.worker import WorkerState, typed_handler
from tests.bench.sim_sampler import SimulatedFixedLatencyGenerator

pytestmark = pytest.mark.integration
RUN = "replicas-000001"
SHARDS = 8
SEED = 7  # the iteration's, shared by all its shards (derive_seed(sampling.seed, iteration))


def _job(shard: int, ids: list[str], first_index: int = 0) -> ev.SampleJob:
    return ev.SampleJob(
        run_id=RUN,
        job_id=keys.job_id("sample", RUN, 1, shard),
        iteration=1,
        shard=shard,
        task="arithmetic",
        dataset_key=keys.dataset_key(RUN, "train"),
        problem_ids=ids,
        policy_key="models/sim",
        params=common_pb2.SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=SEED),
        output_key=keys.samples_key(RUN, 1, shard),
        prompt_format=common_pb2.PromptFormat(chat_template=False),
        first_index=first_index,
    )


async def _replica(nats_config, store: LocalStore, tmp: Path, name: str, stop: asyncio.Event) -> WorkerState:
    bus = await EventBus.connect(nats_config, name=name)
    await bus.ensure_topology()
    generator = SimulatedFixedLatencyGenerator(token_latency_s=0.01, tokens_per_sample=8)  # 0.32 s a shard
    cache = CheckpointCache(store, tmp / name, "cpu", load=lambda path: generator)
    state = WorkerState("sampler", backend=generator.backend)
    handler = typed_handler(
        bus, "sample", ev.SampleJob, SampleHandler(bus, store, cache, 1000), state, max_deliver=3
    )
    await bus.run_worker("sample", handler, stop=stop, concurrency=1, max_deliver=3)
    await bus.close()
    return state


async def test_two_replicas_split_the_shards_and_a_round_continues_the_numbering(nats_config, tmp_path):
    store = LocalStore(tmp_path / "store")
    problems = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    store.put_bytes(keys.dataset_key(RUN, "train"), dumps_jsonl(problems))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "weights").write_text("simulated")
    store.put_dir("models/sim", tmp_path / "ckpt")
    bus = await EventBus.connect(nats_config, name="test-publisher")
    await bus.ensure_topology()
    done: dict[int, ev.SampleDone] = {}
    stop_events, stop_workers = asyncio.Event(), asyncio.Event()

    async def on_event(delivery):
        if delivery.subject.endswith(".sample_done"):
            msg = ev.SampleDone.FromString(delivery.data)
            done[msg.shard] = msg
            if len(done) == SHARDS + 1:
                stop_events.set()

    observer = asyncio.create_task(bus.consume_events("test-observer", on_event, stop=stop_events))
    replicas = [
        asyncio.create_task(_replica(nats_config, store, tmp_path, f"replica-{i}", stop_workers))
        for i in range(2)
    ]
    for shard in range(SHARDS):
        await bus.publish_job("sample", RUN, _job(shard, ["p0", "p1", "p2", "p3"]).SerializeToString(),
                              msg_id=keys.job_id("sample", RUN, 1, shard))  # fmt: skip
    # a second round of two problems, numbered after the round-1 samples they already have
    await bus.publish_job("sample", RUN, _job(SHARDS, ["p1", "p3"], first_index=2).SerializeToString(),
                          msg_id=keys.job_id("sample", RUN, 1, SHARDS))  # fmt: skip
    await asyncio.wait_for(stop_events.wait(), timeout=60)
    stop_workers.set()
    states = await asyncio.gather(*replicas)
    await observer
    await bus.close()

    assert all(s.jobs_done > 0 for s in states)  # both replicas took shards
    assert sum(s.jobs_done for s in states) == SHARDS + 1  # and no shard was generated twice
    rows = loads_jsonl(store.get_bytes(keys.samples_key(RUN, 1, SHARDS)))
    assert [r["sample_id"] for r in rows] == ["i1/p1/2", "i1/p1/3", "i1/p3/2", "i1/p3/3"]
    # the simulated backend names each sample's seed: a function of the problem and index only
    seeds = sample_seeds(SEED, ["p1", "p3"], 2, first_index=2)
    assert [r["completion"] for r in rows] == [f"simulated seed {s}" for per in seeds for s in per]
    shards = [loads_jsonl(store.get_bytes(keys.samples_key(RUN, 1, shard))) for shard in range(SHARDS)]
    assert all(shard == shards[0] for shard in shards)  # same problems, whichever replica drew them
    assert {s.to_proto().backend for s in states} == {"simulated-fixed-latency"}
