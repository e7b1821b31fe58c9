"""A worker service's job handling over a real nats-server and store: repeats change nothing, bad jobs fail the run."""

from __future__ import annotations

import asyncio

import pytest
from restem.events.v1 import events_pb2 as ev

from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings
from services.verifier.events import VerifyHandler
from shared import keys
from shared.bus import EventBus
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, loads_jsonl
from shared.worker import WorkerState, typed_handler

pytestmark = pytest.mark.integration
RUN = "idem-000001"


async def _collect_events(bus: EventBus, stop: asyncio.Event, into: list) -> None:
    async def on(d):
        into.append(d)

    await bus.consume_events("test-observer", on, stop=stop)


@pytest.fixture
async def verifier(nats_config, tmp_path):
    bus = await EventBus.connect(nats_config, name="test-verifier")
    await bus.ensure_topology()
    store = LocalStore(tmp_path / "store")
    state = WorkerState("verifier")
    handler = typed_handler(
        bus,
        "verify",
        ev.VerifyJob,
        VerifyHandler(bus, store, Checkers(SandboxSettings())),
        state,
        max_deliver=3,
    )
    stop = asyncio.Event()
    events: list = []
    tasks = [
        asyncio.create_task(bus.run_worker("verify", handler, stop=stop, max_deliver=3, backoff_s=(0.1,))),
        asyncio.create_task(_collect_events(bus, stop, events)),
    ]
    yield bus, store, state, events
    stop.set()
    await asyncio.gather(*tasks)
    await bus.close()


def _job(shard: int = 0, samples_key: str | None = None) -> ev.VerifyJob:
    return ev.VerifyJob(
        run_id=RUN,
        job_id=keys.job_id("verify", RUN, 1, shard),
        iteration=1,
        shard=shard,
        task="arithmetic",
        dataset_key=keys.dataset_key(RUN, "train"),
        samples_key=samples_key or keys.samples_key(RUN, 1, shard),
        output_key=keys.verdicts_key(RUN, 1, shard),
    )


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_repeated_verify_job_writes_once_and_reports_once(verifier):
    bus, store, state, events = verifier
    store.put_bytes(
        keys.dataset_key(RUN, "train"),
        dumps_jsonl([{"id": "p1", "question": "What is 2 + 3?", "answer": "5"}]),
    )
    samples = [
        {"sample_id": f"i1/p1/{i}", "problem_id": "p1", "prompt": "x", "completion": c, "num_tokens": 3}
        for i, c in enumerate(["The answer is 5.", "The answer is 6.", "5"])
    ]
    store.put_bytes(keys.samples_key(RUN, 1, 0), dumps_jsonl(samples))
    job = _job()
    assert await bus.publish_job("verify", RUN, job.SerializeToString(), msg_id=job.job_id)
    assert not await bus.publish_job(
        "verify", RUN, job.SerializeToString(), msg_id=job.job_id
    )  # deduplicated
    await _wait_for(lambda: len(events) == 1)
    verdicts = loads_jsonl(store.get_bytes(job.output_key))
    assert [v["correct"] for v in verdicts] == [True, False, False]
    assert [v["rule"] for v in verdicts] == ["answer-is", "answer-is", "no-answer"]
    done = ev.VerifyDone.FromString(events[0].data)
    assert (done.num_samples, done.num_correct) == (3, 1)

    # Re-published past the dedupe window (a new msg id): the handler finds its output and only re-announces it.
    before = store.get_bytes(job.output_key)
    store.put_bytes(
        keys.samples_key(RUN, 1, 0), dumps_jsonl(samples[:1])
    )  # would change the verdicts if recomputed
    await bus.publish_job("verify", RUN, job.SerializeToString(), msg_id=job.job_id + ".again")
    await _wait_for(lambda: state.jobs_done == 2)
    await asyncio.sleep(0.3)
    assert store.get_bytes(job.output_key) == before
    assert len(events) == 1, "the repeated done event carries the same msg id and is deduplicated"


async def test_a_job_with_missing_input_fails_the_run_at_once(verifier):
    bus, store, _state, events = verifier
    store.put_bytes(
        keys.dataset_key(RUN, "train"), dumps_jsonl([{"id": "p1", "question": "q", "answer": "5"}])
    )
    job = _job(shard=1, samples_key=keys.samples_key(RUN, 1, 99))
    await bus.publish_job("verify", RUN, job.SerializeToString(), msg_id=job.job_id)
    await _wait_for(lambda: any(e.subject.endswith("job_failed") for e in events))
    failed = ev.JobFailed.FromString(next(e for e in events if e.subject.endswith("job_failed")).data)
    assert failed.job_id == job.job_id and "shard-00099" in failed.reason
    dead = await bus.dead_letters(RUN)
    assert len(dead) == 1 and dead[0].num_delivered == 1
    assert not store.exists(job.output_key)
