"""Graded rewards (`em.reward: fraction_of_tests`): the verifier's reward per sample on real sandbox
pools, its verdict cache kept apart from binary verdicts, and a kept set's fractional weights in
the M-step's loss on a tiny random-init model through the trainer's own dataset path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from services.trainer.core import examples_from_kept
from services.verifier.core import verdict_rows
from services.verifier.rewards import Scored, reward_mode
from services.verifier.verdict_cache import code_key, decode, encode
from shared.llm.dataset import read_chunks, write_tokenized
from shared.llm.generation import render_prompt
from shared.llm.packing import IGNORE, collate
from shared.llm.training import batch_loss, encode_example
from shared.store import LocalStore
from shared.tasks import Verdict, dumps_jsonl
from tests.fixtures.models import smollm2_tokenizer, tiny_llama
from tests.fixtures.verifier import Replica, cache_counts

# Four tests of n -> n * n: the identity passes n = 0 and n = 1 only.
SQUARE = {
    "id": "square",
    "kind": "stdin",
    "tests": [{"input": f"{n}\n", "output": f"{n * n}\n"} for n in range(4)],
}
HALF = "```python\nprint(int(input()))\n```"
RIGHT = "```python\nn = int(input())\nprint(n * n)\n```"
NO_CODE = "I do not know."


async def test_a_program_passing_two_of_four_tests_scores_half_only_under_fraction_of_tests(
    replica: Replica,
) -> None:
    checkers = replica(None)
    pairs = [(SQUARE, HALF), (SQUARE, RIGHT), (SQUARE, NO_CODE)]
    graded = await checkers.score_many("apps", pairs, "fraction_of_tests")
    binary = await checkers.score_many("apps", pairs)
    assert [s.reward for s in graded] == [0.5, 1.0, 0.0]
    assert [s.reward for s in binary] == [0.0, 1.0, 0.0]
    # the verdict is the same in both modes: correct means every test, the rule the first failure
    assert [s.verdict for s in graded] == [s.verdict for s in binary]
    assert [s.verdict.correct for s in graded] == [False, True, False]
    assert graded[0].verdict.rule.startswith("test-2-")
    samples = [{"sample_id": f"s{i}", "problem_id": "square"} for i in range(3)]
    rows = verdict_rows(samples, graded)
    assert [(r["correct"], r["reward"]) for r in rows] == [(False, 0.5), (True, 1.0), (False, 0.0)]
    assert {r["checker_version"] for r in rows} == {"code-1"}
    # a binary verdict row carries its reward too, so the filter reads one field
    assert [r["reward"] for r in verdict_rows(samples, binary)] == [0.0, 1.0, 0.0]


async def test_graded_verdicts_are_cached_apart_and_a_second_replica_runs_nothing(
    tmp_path: Path, replica: Replica
) -> None:
    store = LocalStore(tmp_path / "store")
    first = replica(store)
    assert [s.reward for s in await first.score_many("apps", [(SQUARE, HALF)])] == [0.0]
    # a verdict that stopped at the first failing test cannot say how many tests pass: it runs again
    assert [s.reward for s in await first.score_many("apps", [(SQUARE, HALF)], "fraction_of_tests")] == [0.5]
    assert (
        cache_counts(first, "code").checks_run,
        cache_counts(first, "code-fraction-of-tests").checks_run,
    ) == (1, 1)
    key = code_key(
        first._fingerprint(first.code_problem(SQUARE)), "print(int(input()))\n", "fraction_of_tests"
    )
    stored = decode(store.get_bytes(key.path()), key)
    assert isinstance(stored, Scored) and stored.reward == 0.5
    second = replica(store)
    again = await second.score_many("apps", [(SQUARE, HALF)], "fraction_of_tests")
    assert again[0] == stored and cache_counts(second, "code-fraction-of-tests").store_hits == 1
    assert cache_counts(second, "code-fraction-of-tests").checks_run == 0


def test_a_graded_cache_object_must_carry_its_reward() -> None:
    verdict = Verdict(False, "wrong_answer", "test-2-token-mismatch-integer", "code-1")
    key = code_key("ab" + "0" * 62, "print(1)", "fraction_of_tests")
    assert decode(encode(Scored(verdict, 0.25)), key) == Scored(verdict, 0.25)
    for bad in (encode(verdict), encode(Scored(verdict, 1.5))):
        with pytest.raises(ValueError):
            decode(bad, key)
    # a binary key's object is the verdict alone, as before graded rewards
    assert decode(encode(verdict), code_key("ab" + "0" * 62, "print(1)")) == verdict


async def test_graded_rewards_need_a_code_task_and_a_known_mode(
    replica: Replica,
) -> None:
    with pytest.raises(ValueError, match="reward 'fraction_of_tests' needs a code task"):
        await replica(None).score_many("gsm8k", [("4", "The answer is 4.")], "fraction_of_tests")
    assert reward_mode("") == "binary"  # a job of an earlier coordinator
    assert reward_mode("fraction_of_tests") == "fraction_of_tests"
    with pytest.raises(ValueError, match="unknown reward 'partial'"):
        reward_mode("partial")


# --- the M-step: weights from the kept rows reach the loss ------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return smollm2_tokenizer()


def _completion_nll(model: Any, feature: dict[str, Any]) -> tuple[float, int]:
    """Summed NLL of one example's completion tokens and their count, one example per forward."""
    ids = feature["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    targets = [t for t, lab in enumerate(feature["labels"]) if lab != IGNORE and t > 0]
    return -sum(float(logp[t - 1, ids[t]]) for t in targets), len(targets)


@pytest.mark.parametrize("normalisation", ["token", "sample"])
def test_fractional_kept_weights_scale_each_examples_share_of_the_loss(
    tokenizer: Any, tmp_path: Path, normalisation: str
) -> None:
    prompt = render_prompt(tokenizer, "Read n and print n * n.")
    kept = [
        {"sample_id": "a", "problem_id": "square", "prompt": prompt, "completion": RIGHT, "weight": 1.0},
        {"sample_id": "b", "problem_id": "square", "prompt": prompt, "completion": HALF, "weight": 0.5},
    ]
    (tmp_path / "kept.jsonl").write_bytes(dumps_jsonl(kept))
    with (tmp_path / "kept.jsonl").open("rb") as lines:  # the trainer's own path (`TrainHandler._tokenize`)
        chunks = (examples_from_kept(rows) for rows in read_chunks(lines))
        data = write_tokenized(chunks, lambda ex: encode_example(tokenizer, ex), tmp_path / "data", 512)
    features = list(data)
    assert [f["weight"] for f in features] == [1.0, 0.5]
    model = tiny_llama(tokenizer, seed=3).eval()
    (nll_a, n_a), (nll_b, n_b) = (_completion_nll(model, f) for f in features)
    assert n_a != n_b  # the two normalisations differ only when the lengths do
    with torch.no_grad():
        loss = float(batch_loss(model, collate(features, tokenizer.pad_token_id), normalisation, "cpu"))
    if normalisation == "token":  # sum_i w_i * nll_i / sum_i w_i * n_i
        want = (nll_a + 0.5 * nll_b) / (n_a + 0.5 * n_b)
    else:  # sum_i w_i * mean_i / sum_i w_i
        want = (nll_a / n_a + 0.5 * nll_b / n_b) / 1.5
    assert loss == pytest.approx(want, rel=1e-5)
    unweighted = (
        (nll_a + nll_b) / (n_a + n_b) if normalisation == "token" else (nll_a / n_a + nll_b / n_b) / 2
    )
    # the weight made a difference ten times the tolerance above (a random-init model is nearly
    # uniform, so per-token losses differ little)
    assert not math.isclose(loss, unweighted, rel_tol=1e-4)
