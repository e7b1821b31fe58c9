"""Evaluation metrics over per-problem results (pure): pass@k, maj@k, difficulty buckets.

- pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed in the
  numerically stable product form (no huge binomials): 1 - prod_{i=n-c+1}^{n} (1 - k / i).
- maj@k takes the first k samples of a problem, groups their extracted final answers (samples with no
  answer do not vote), and is correct when the most frequent answer is correct. Ties are broken
  towards the answer whose first vote came earliest in sample order: deterministic, and it does not
  favour the correct answer (breaking ties by correctness would inflate the metric).
- Difficulty buckets follow the paper's use of the base model's pass rate on a problem:
  "very hard" (never solved), "hard" (< 25 %), "medium" (25-75 %), "easy" (> 75 %).

Not covered: metrics that need a sandbox (code); confidence intervals and paired tests are `shared.stats`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

BUCKETS = ("easy", "medium", "hard", "very hard")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(results: Sequence[tuple[int, int]], k: int) -> float:
    """Mean of pass@k over problems given (n, c) per problem."""
    if not results:
        return 0.0
    return sum(pass_at_k(n, c, k) for n, c in results) / len(results)


def majority(answers: Sequence[str]) -> str | None:
    """Most frequent non-empty answer; ties go to the one first seen. None when nobody answered."""
    votes = [a for a in answers if a]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(a for a in votes if counts[a] == best)


def maj_at_k(samples: Sequence[tuple[str, bool]], k: int) -> bool:
    """Is the majority answer among the first k (answer, correct) samples a correct one?"""
    if k > len(samples):
        raise ValueError(f"maj@{k} needs at least {k} samples, got {len(samples)}")
    head = samples[:k]
    winner = majority([a for a, _ in head])
    return winner is not None and any(a == winner and ok for a, ok in head)


def bucket(base_pass_rate: float) -> str:
    if base_pass_rate <= 0.0:
        return "very hard"
    if base_pass_rate < 0.25:
        return "hard"
    if base_pass_rate <= 0.75:
        return "medium"
    return "easy"


def accuracy_by_bucket(
    correct: Mapping[str, bool], base_rate: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Accuracy per difficulty bucket: {bucket: {"problems": n, "accuracy": x}} over problems in both maps."""
    groups: dict[str, list[bool]] = {b: [] for b in BUCKETS}
    for pid, ok in correct.items():
        if pid in base_rate:
            groups[bucket(base_rate[pid])].append(ok)
    return {
        b: {"problems": len(v), "accuracy": (sum(v) / len(v)) if v else 0.0} for b, v in groups.items() if v
    }
