"""A code task end to end: APPS-style problems whose samples run against their tests in the
verifier's sandbox pool, through the real local stack and SmolLM2-135M on CPU.

SmolLM2 reliably writes the two call-based functions of examples/data/apps-tiny-train.jsonl, so the
iteration keeps real, test-passing programs and the M-step trains on them. Accuracy is not asserted
here (ten problems say little); the plumbing and every verdict's provenance are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import down, up
from shared.store import LocalStore
from shared.tasks import loads_jsonl

pytestmark = pytest.mark.e2e
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
TRAIN = ("sum-two", "add-fn", "is-even", "double")
CONFIG = """
name: e2e-code
task:
  name: apps
  files: {{train: {train}, test: {test}}}
em: {{iterations: 1, cutoff: 2, shard_size: 2}}
sampling: {{n: 4, max_new_tokens: 128, seed: 1}}
training: {{epochs: 1, batch_size: 4, max_seq_len: 768}}
evaluation: {{splits: [test], samples: 2}}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("code-stack")
    train = state / "train.jsonl"  # four of the example's problems: two SmolLM2 solves, two it rarely does
    lines = (DATA / "apps-tiny-train.jsonl").read_text().splitlines()
    train.write_text("".join(line + "\n" for line in lines if json.loads(line)["id"] in TRAIN))
    stack = up(state)
    try:
        with RunClient(stack.coordinator) as client:
            run = client.start_run(CONFIG.format(train=train, test=DATA / "apps-tiny-test.jsonl"))
            last = list(client.watch_run(run.run_id, timeout_s=900))[-1]
        yield last, LocalStore(Path(stack.info["store"]["root"]))
    finally:
        down(state)


def test_code_run_keeps_programs_that_pass_their_tests(finished) -> None:  # type: ignore[no-untyped-def]
    run, store = finished
    assert run.status == pb.RUN_STATUS_SUCCEEDED, run.error
    verdicts = [
        v for shard in range(2) for v in loads_jsonl(store.get_bytes(keys.verdicts_key(run.run_id, 1, shard)))
    ]
    assert len(verdicts) == 16 and {v["checker_version"] for v in verdicts} == {"code-1"}
    passed = [v for v in verdicts if v["correct"]]
    assert passed and all(v["rule"] == "all-tests-passed" for v in passed)
    assert {v["problem_id"] for v in passed} >= {"add-fn", "is-even"}
    failed_rules = {v["rule"] for v in verdicts if not v["correct"]}
    assert failed_rules and all(r.startswith("test-") or r in ("invalid-argument",) for r in failed_rules)
    it = run.iterations[1]
    assert it.kept > 0 and it.train.steps > 0 and not it.train.skipped


def test_code_eval_reports_pass_at_k_without_majority_vote(finished) -> None:  # type: ignore[no-untyped-def]
    run, store = finished
    rows = loads_jsonl(store.get_bytes(keys.eval_key(run.run_id, 1, "test")))
    assert len(rows) == 4 and all(
        r["rule"] == "all-tests-passed" or r["rule"].startswith("test-") for r in rows
    )
    assert all(len(r["samples"]) == 2 for r in rows)
    (test,) = [e for e in run.iterations[1].evals if e.split == "test"]
    metrics = dict(test.metrics)
    assert "pass@2" in metrics and not any(k.startswith("maj@") for k in metrics)
