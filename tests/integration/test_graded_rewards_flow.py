"""`em.reward: fraction_of_tests` from a run config to the M-step's examples, through the code each
service runs: the coordinator's verify job, the verifier's handler over a real nats-server with a
real sandbox pool, the coordinator's streaming filter with `em.min_reward`, and the trainer's
reading of the kept set into weighted, tokenized examples. (The weight's effect on the loss itself
is checked on a tiny model in tests/unit/test_graded_rewards.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator.filter_io import ShardSource, filter_iteration
from services.coordinator.jobs import verify_job
from services.trainer.core import examples_from_kept
from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings
from services.verifier.events import VerifyHandler
from shared import keys
from shared.bus import EventBus
from shared.llm.generation import render_prompt
from shared.llm.training import encode_example
from shared.runconfig import parse_run_config
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, load_problems, loads_jsonl
from tests.fixtures.models import smollm2_tokenizer

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
RUN = "run-graded"
# sum-two has three tests: 1 2 -> 3, -5 10 -> 5, 1000000000000 1 -> 1000000000001.
PROGRAMS = {
    "right": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",  # 3 of 3
    "two-of-three": "```python\na, b = map(int, input().split())\nprint(a + b if a < 100 else 0)\n```",
    "one-of-three": "```python\nprint(3)\n```",
    "no-code": "I would add them.",
}


def _config(reward: str, min_reward: float) -> str:
    train = DATA / "apps-tiny-train.jsonl"
    return (
        f"task: {{name: apps, files: {{train: {train}, test: {train}}}}}\n"
        f"em: {{reward: {reward}, min_reward: {min_reward}, cutoff: 4, shard_size: 8}}\n"
    )


@pytest.mark.parametrize(
    ("reward", "min_reward", "kept"),
    [
        ("fraction_of_tests", 0.5, {"right": 1.0, "two-of-three": 2 / 3}),
        ("fraction_of_tests", 0.3, {"right": 1.0, "two-of-three": 2 / 3, "one-of-three": 1 / 3}),
        ("binary", 1.0, {"right": 1.0}),  # the paper's: only the fully correct program, at weight 1
    ],
)  # fmt: skip
async def test_partial_programs_reach_the_m_step_weighted_by_their_reward(
    nats_config, tmp_path: Path, reward: str, min_reward: float, kept: dict[str, float]
) -> None:
    cfg = parse_run_config(_config(reward, min_reward))
    store = LocalStore(tmp_path / "store")
    problems = [p for p in load_problems(DATA / "apps-tiny-train.jsonl", "apps") if p["id"] == "sum-two"]
    store.put_bytes(keys.dataset_key(RUN, "train"), dumps_jsonl(problems))
    tokenizer = smollm2_tokenizer()
    prompt = render_prompt(tokenizer, problems[0]["question"])
    samples = [
        {"sample_id": name, "problem_id": "sum-two", "prompt": prompt, "completion": text}
        for name, text in PROGRAMS.items()
    ]
    store.put_bytes(keys.shard_key(keys.samples_prefix(RUN, 1), 0), dumps_jsonl(samples))
    it = pb.Iteration(iteration=1)
    job = verify_job(pb.Run(run_id=RUN), cfg, it, 0, keys.verdicts_prefix(RUN, 1)).message
    assert isinstance(job, ev.VerifyJob)  # the coordinator's job names the run's reward
    assert job.reward == reward
    bus = await EventBus.connect(nats_config, name="test-graded")
    await bus.ensure_topology()
    checkers = Checkers(SandboxSettings(workers=2, math_workers=1))
    try:
        await VerifyHandler(bus, store, checkers)(job)
    finally:
        checkers.close()
        await bus.close()
    rows = {r["sample_id"]: r for r in loads_jsonl(store.get_bytes(job.output_key))}
    assert {name: r["correct"] for name, r in rows.items()} == {
        "right": True, "two-of-three": False, "one-of-three": False, "no-code": False
    }  # fmt: skip
    graded = reward == "fraction_of_tests"
    assert rows["two-of-three"]["reward"] == pytest.approx(2 / 3 if graded else 0.0)
    assert rows["one-of-three"]["reward"] == pytest.approx(1 / 3 if graded else 0.0)
    assert (rows["right"]["reward"], rows["no-code"]["reward"]) == (1.0, 0.0)

    out = filter_iteration(
        store, RUN, 1, shards=1, rounds_done=1, cfg=cfg, problem_ids=["sum-two"],
        source=ShardSource.of_run(RUN, 1),
    )  # fmt: skip
    assert out.stats is not None and out.stats.kept == len(kept)
    assert out.stats.kept_weight == pytest.approx(sum(kept.values()))
    kept_rows = loads_jsonl(store.get_bytes(keys.kept_key(RUN, 1)))
    assert {r["sample_id"]: r["weight"] for r in kept_rows} == pytest.approx(kept)
    assert [r["weight"] for r in kept_rows] == sorted(kept.values(), reverse=True)  # highest reward first
    examples = examples_from_kept(kept_rows)  # what the trainer reads from the kept set
    weights = [encode_example(tokenizer, ex)[2] for ex in examples]
    assert weights == [r["weight"] for r in kept_rows]
