"""A small ReST-EM run through the real local stack: nats-server, local store, five service processes.

Uses the real SmolLM2-135M at tiny sizes (one iteration, 16 train problems x 8 samples), so it
checks the plumbing and every artifact, not accuracy: the `slow` test checks that accuracy rises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient, check_health
from shared.client.stack import GRPC_NAMES, down, restart_service, up
from shared.store import LocalStore
from shared.tasks import loads_jsonl

pytestmark = pytest.mark.e2e

SMALL = """
name: e2e-small
task:
  name: arithmetic
  arithmetic: {train: 16, validation: 8, test: 16}
em: {iterations: 1, cutoff: 2, shard_size: 8}
sampling: {n: 8, max_new_tokens: 32, seed: 3}
training: {epochs: 1, batch_size: 8}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    s = up(state)
    yield s
    down(state)


@pytest.fixture(scope="module")
def finished_run(stack):
    with RunClient(stack.coordinator) as client:
        run = client.start_run(SMALL)
        snapshots = list(client.watch_run(run.run_id, timeout_s=900))
    return snapshots[-1]


def test_every_service_answers_health_and_reflection(stack):
    for name, full_name in GRPC_NAMES.items():
        address = stack.address(name)
        assert check_health(address, full_name) == "SERVING"
        assert check_health(address) == "SERVING"
        with grpc.insecure_channel(address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert full_name in services and "grpc.health.v1.Health" in services


def test_services_run_with_a_short_openmp_spin(stack):
    """Model services share the machine's cores; long-spinning OpenMP threads would starve each other."""
    for name, svc in stack.info["services"].items():
        environ = Path(f"/proc/{svc['pid']}/environ").read_bytes().split(b"\0")
        assert b"GOMP_SPINCOUNT=10000" in environ, name


def test_the_run_succeeds_with_every_artifact(stack, finished_run):
    run = finished_run
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.error
    assert [it.iteration for it in run.iterations] == [0, 1]
    store = LocalStore(Path(stack.info["store"]["root"]))
    it = run.iterations[1]
    assert (
        it.shards_total == 2 and sorted(it.shards_sampled) == [0, 1] and sorted(it.shards_verified) == [0, 1]
    )
    samples = [
        s for shard in range(2) for s in loads_jsonl(store.get_bytes(keys.samples_key(run.run_id, 1, shard)))
    ]
    verdicts = [
        v for shard in range(2) for v in loads_jsonl(store.get_bytes(keys.verdicts_key(run.run_id, 1, shard)))
    ]
    assert len(samples) == len(verdicts) == 16 * 8 == it.samples
    assert len({s["sample_id"] for s in samples}) == len(samples)
    assert sum(v["correct"] for v in verdicts) == it.correct_samples
    kept = loads_jsonl(store.get_bytes(keys.kept_key(run.run_id, 1)))
    correct = {v["sample_id"] for v in verdicts if v["correct"]}
    assert kept, "SmolLM2 solves ~5% of these problems; with this seed some are solved"
    assert all(k["sample_id"] in correct for k in kept), "a kept sample was not verified correct"
    assert max(Counter(k["problem_id"] for k in kept).values()) <= 2, "the cutoff did not hold"
    assert len(kept) == it.kept
    assert store.dir_exists(run.base_model_key)
    assert store.dir_exists(keys.checkpoint_key(run.run_id, 1)) and it.checkpoint_key == keys.checkpoint_key(
        run.run_id, 1
    )
    for i in (0, 1):
        for split in ("validation", "test"):
            rows = loads_jsonl(store.get_bytes(keys.eval_key(run.run_id, i, split)))
            assert len(rows) == (8 if split == "validation" else 16)


def test_the_report_is_complete(stack, finished_run):
    with RunClient(stack.coordinator) as client:
        report = client.report(finished_run.run_id)
    assert report["status"] == "succeeded" and report["run_id"] == finished_run.run_id
    assert [r["iteration"] for r in report["iterations"]] == [0, 1]
    one = report["iterations"][1]
    for field in (
        "train_pass_rate",
        "problems_solved",
        "kept",
        "test_pass_at_1",
        "validation_pass_at_1",
        "kept_key",
        "checkpoint_key",
    ):
        assert one[field] is not None, field
    assert one["train"]["steps"] >= 1 and one["tokens_generated"] > 0
    assert set(one["phase_seconds"]) == {"sampling", "verifying", "filtering", "training", "evaluating"}
    assert report["config"]["em"]["cutoff"] == 2


def _cli(stack, *args):
    env = {**os.environ, "RESTEM_HOME": str(stack.state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "shared.client", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_list_report_and_errors_against_the_stack(stack, finished_run):
    listed = _cli(stack, "list")
    assert listed.returncode == 0 and finished_run.run_id in listed.stdout
    rep = _cli(stack, "report", finished_run.run_id, "--json")
    assert rep.returncode == 0 and json.loads(rep.stdout)["run_id"] == finished_run.run_id
    watched = _cli(stack, "watch", finished_run.run_id)
    printed = watched.stdout.split("report: ")[1].split(" (restem report")[0]
    assert (
        Path(printed).is_file() and "report.md" in printed
    )  # a file the user can open, in the stack's store
    assert Path(printed).is_relative_to(stack.state_dir) and finished_run.run_id in Path(printed).read_text()
    missing = _cli(stack, "report", "no-such-run")
    assert missing.returncode == 3 and "no run 'no-such-run'" in missing.stderr
    again = _cli(stack, "cancel", finished_run.run_id)
    assert again.returncode == 4 and "already finished" in again.stderr


def test_start_run_rejects_bad_input_without_touching_the_store(stack, finished_run):
    store_root = Path(stack.info["store"]["root"])
    before = sorted(p for p in store_root.rglob("*") if p.is_file())
    with RunClient(stack.coordinator) as client:
        for text, code, words in [
            ("em: {cutoff: 0}", grpc.StatusCode.INVALID_ARGUMENT, "em.cutoff"),
            ("sampling: {n: 0}", grpc.StatusCode.INVALID_ARGUMENT, "sampling.n"),
            ("bogus: 1", grpc.StatusCode.INVALID_ARGUMENT, "bogus: unknown field"),
            ("task: {name: chess}", grpc.StatusCode.INVALID_ARGUMENT, "task.name"),
            ("model: {base: /nope/model}", grpc.StatusCode.NOT_FOUND, "/nope/model does not exist"),
            (SMALL, grpc.StatusCode.ALREADY_EXISTS, "a run named 'e2e-small' exists"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                client.start_run(text)
            assert err.value.code() == code and words in err.value.details()
    assert sorted(p for p in store_root.rglob("*") if p.is_file()) == before


def test_a_killed_coordinator_is_restarted_and_the_run_completes(stack, finished_run):
    """Run state lives in JetStream KV and events wait in their stream: a crash loses nothing."""
    config = SMALL.replace("e2e-small", "e2e-crash").replace("train: 16", "train: 8")
    with RunClient(stack.coordinator) as client:
        run_id = client.start_run(config).run_id
        for snapshot in client.watch_run(run_id, timeout_s=600):
            if snapshot.phase == pb.PHASE_SAMPLING:
                break
    restart_service(stack, "coordinator")  # SIGKILL mid-iteration, then start again
    with RunClient(stack.coordinator) as client:
        last = list(client.watch_run(run_id, timeout_s=900))[-1]
    assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
    it = last.iterations[1]
    assert it.samples == 8 * 8 and sorted(it.shards_verified) == [0]
