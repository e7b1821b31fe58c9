"""Rewards as the coordinator reads them from verdict rows, and the buckets the report counts (pure).

A verdict row says `correct` (the check passed: every test, for code) and `reward` (what the filter
keeps by and the M-step weighs by; see `services.verifier.rewards`). Rows written before rewards
were graded have no `reward`: theirs is 1.0 when correct, else 0.0, which is what binary means.

Not here: which samples are kept (`selection`), how the reward is computed (the verifier).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Judged(NamedTuple):
    """What the filter needs of one sample's verdict."""

    correct: bool
    reward: float


NOT_JUDGED = Judged(False, 0.0)
"""A sample the verdicts do not name (read by id): never kept, as before rewards were graded."""


def judged_of(row: Mapping[str, Any]) -> Judged:
    correct = bool(row["correct"])
    reward = row.get("reward")
    return Judged(correct, float(reward) if reward is not None else (1.0 if correct else 0.0))


REWARD_BUCKETS = ("0", "(0,0.25]", "(0.25,0.5]", "(0.5,0.75]", "(0.75,1)", "1")
"""Reward buckets, in order: exactly 0, four ranges, exactly 1 (a binary run fills the two ends)."""


def bucket(reward: float) -> str:
    if reward <= 0:
        return REWARD_BUCKETS[0]
    if reward >= 1:
        return REWARD_BUCKETS[-1]
    for upper, name in zip((0.25, 0.5, 0.75), REWARD_BUCKETS[1:4], strict=True):
        if reward <= upper:
            return name
    return REWARD_BUCKETS[4]


def histogram(rewards: Iterable[float]) -> dict[str, int]:
    """Samples per bucket, every bucket present (zeros included), in `REWARD_BUCKETS` order."""
    counts = dict.fromkeys(REWARD_BUCKETS, 0)
    for r in rewards:
        counts[bucket(r)] += 1
    return counts
