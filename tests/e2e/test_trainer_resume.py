"""A trainer SIGKILLed in the middle of an M-step resumes from its last step checkpoint in the store.

The local stack runs a one-iteration run whose M-step is long on purpose (LoRA, batch 1, 40 steps, a
resumable state every 5 steps). When the run's progress shows training step >= 10 the trainer is
killed and restarted; the work queue hands the train job to the new process after the ack wait (6 s
here instead of 120 s), which must continue from a saved step (5 or later, not 0) (``resumed_from_step`` in the stored
train summary), finish the run, and delete its step states.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import Stack, down, restart_service, up
from shared.store import LocalStore

pytestmark = pytest.mark.e2e

# Same problems and seed as test_local_stack's run (known to solve a few), so the kept set is not empty.
CONFIG = """
name: e2e-resume
task:
  name: arithmetic
  arithmetic: {train: 16, validation: 8, test: 16}
em: {iterations: 1, cutoff: 2, shard_size: 8}
sampling: {n: 8, max_new_tokens: 32, seed: 3}
training:
  method: lora
  learning_rate: 1.0e-4
  batch_size: 1
  max_steps: 40
  checkpoint_every_steps: 5
evaluation: {splits: [test]}
"""
KILL_AT_STEP = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    # The services inherit the environment: a short ack wait makes the killed job come back in seconds.
    old = os.environ.get("RESTEM_TRAINER__ACK_WAIT_S")
    os.environ["RESTEM_TRAINER__ACK_WAIT_S"] = "6"
    try:
        s = up(state)
        yield s
    finally:
        down(state)
        if old is None:
            os.environ.pop("RESTEM_TRAINER__ACK_WAIT_S", None)
        else:
            os.environ["RESTEM_TRAINER__ACK_WAIT_S"] = old


def _trainer_active_jobs(stack: Stack) -> list[str]:
    with grpc.insecure_channel(stack.address("trainer")) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        return list(stub.GetStats(trainer_pb2.GetStatsRequest(), timeout=10).stats.active_jobs)


def test_cancelling_a_run_mid_m_step_stops_the_training_within_seconds(stack: Stack) -> None:
    """Runs first in this module: the resume test after it shows the trainer takes new work."""
    pytest.importorskip("peft", reason="the run trains LoRA adapters")
    config = CONFIG.replace("name: e2e-resume", "name: e2e-cancel").replace(
        "checkpoint_every_steps: 5", "checkpoint_every_steps: 2"
    )
    store = LocalStore(Path(stack.info["store"]["root"]))
    with RunClient(stack.coordinator) as client:
        run_id = client.start_run(config).run_id
        for snapshot in client.watch_run(run_id, timeout_s=600):
            assert snapshot.status != pb.RUN_STATUS_FAILED, snapshot.error
            if snapshot.phase == pb.PHASE_TRAINING and snapshot.progress.done >= 3:
                break
        assert _trainer_active_jobs(stack), "the M-step is not running"
        cancelled = client.cancel_run(run_id)
        assert cancelled.status == pb.RUN_STATUS_CANCELLED
    deadline = time.monotonic() + 15
    while _trainer_active_jobs(stack):
        assert time.monotonic() < deadline, "the trainer still holds the cancelled run's job"
        time.sleep(0.2)
    # The training thread stopped too: no step state is written any more, and no checkpoint.
    ckpt = keys.checkpoint_key(run_id, 1)
    time.sleep(3)
    states = store.list(f"{ckpt}-state/")
    time.sleep(8)  # ~8 more steps' time at this size if it were still training
    assert store.list(f"{ckpt}-state/") == states
    assert not store.dir_exists(ckpt), "the cancelled M-step still wrote its checkpoint"
    log = Path(stack.info["services"]["trainer"]["log"]).read_text()
    assert f"its run {run_id} is over" in log


def test_a_killed_trainer_resumes_its_m_step_from_the_last_step_checkpoint(stack: Stack) -> None:
    pytest.importorskip("peft", reason="the run trains LoRA adapters")
    with RunClient(stack.coordinator) as client:
        run_id = client.start_run(CONFIG).run_id
        seen = 0
        for snapshot in client.watch_run(run_id, timeout_s=600):
            if snapshot.phase == pb.PHASE_TRAINING:
                seen = int(snapshot.progress.done)
                if seen >= KILL_AT_STEP:
                    break
            assert snapshot.status != pb.RUN_STATUS_FAILED, snapshot.error
    assert seen >= KILL_AT_STEP, "the run ended before its M-step reached the kill point"
    restart_service(stack, "trainer")  # SIGKILL mid-M-step, then start again with the same config
    with RunClient(stack.coordinator) as client:
        last = list(client.watch_run(run_id, timeout_s=600))[-1]
    assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
    store = LocalStore(Path(stack.info["store"]["root"]))
    ckpt = keys.checkpoint_key(run_id, 1)
    summary = json.loads(store.get_bytes(f"{ckpt}/restem_train.json"))
    assert summary["steps"] == 40 and summary["method"] == "lora"
    # States are saved every 5 steps and the kill came at step >= 10, so step 5 at least was committed
    # (the step-10 state may have been mid-upload: on_step reports a step before its state is saved).
    resumed = summary["resumed_from_step"]
    assert resumed >= KILL_AT_STEP - 5 and resumed % 5 == 0, f"resumed from step {resumed}"
    assert last.iterations[1].train.steps == 40
    assert store.list(f"{ckpt}-state/") == [], "the step states were not cleaned up"
    log = Path(stack.info["services"]["trainer"]["log"]).read_text()
    assert f"resumed from step {resumed}" in log
