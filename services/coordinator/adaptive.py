"""Adaptive sampling: how many samples each problem gets in the next round of an E-step (pure).

The paper samples a fixed K per problem and then keeps at most `cutoff` correct ones, so every
sample of a problem beyond its `cutoff`-th correct one is thrown away. With
`sampling.adaptive.enabled`, the E-step runs in rounds instead: round 1 gives every problem
`first_round_n` samples; after the round is verified, problems with `cutoff` correct samples
(distinct ones by default: the filter drops duplicates) get no more, and the rest share what is
left, up to `max_per_problem` samples each (default K) and never more than K x problems in all.

Every problem still sampled in a round was sampled in every earlier round (a done problem never
comes back), so all of them have the same number of samples so far: one `n` and one
`first_index` describe a whole round. The plan is a function of the verdicts, which are a function
of the seeded samples, so a replayed round plans the same jobs.

Rounds draw exactly the samples fixed K would: every shard of an iteration carries the iteration's
seed, and the sampler seeds sample `i` of problem `p` from (that seed, `p`, `i`) alone
(`shared.seeds.sample_seeds`), so round 2's samples 4..7 are fixed K's samples 4..7. An adaptive
run therefore differs from the fixed-K run only in the samples it skips: until some problem stops
early, both runs keep the same samples and train the same checkpoint (on CPU; GPU kernels may
add float noise).

Not handled here: reading samples and verdicts (the coordinator's event adapter does the I/O) and
publishing the jobs (`core.on_round_planned`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.runconfig import RunConfig, SamplingConfig


@dataclass(frozen=True)
class Tally:
    """What one problem has so far in this iteration."""

    samples: int = 0
    correct: int = 0
    distinct_correct: int = 0


@dataclass(frozen=True)
class RoundPlan:
    """The next round: `n` more samples for each of `problem_ids`, numbered from `first_index`."""

    n: int
    first_index: int
    problem_ids: list[str]


def first_round_n(sampling: SamplingConfig) -> int:
    """Samples per problem in an iteration's first (with the fixed-K policy: only) round."""
    a = sampling.adaptive
    if not a.enabled:
        return sampling.n
    cap = a.max_per_problem or sampling.n
    return min(cap, a.first_round_n or math.ceil(sampling.n / a.rounds))


def tally(samples: Iterable[dict[str, Any]], verdicts: Iterable[dict[str, Any]]) -> dict[str, Tally]:
    """Samples, correct and distinct correct completions per problem (whitespace-normalised, as the filter)."""
    correct_ids = {v["sample_id"] for v in verdicts if v["correct"]}
    counts: dict[str, int] = {}
    correct: dict[str, int] = {}
    distinct: dict[str, set[str]] = {}
    for s in samples:
        pid = s["problem_id"]
        counts[pid] = counts.get(pid, 0) + 1
        if s["sample_id"] in correct_ids:
            correct[pid] = correct.get(pid, 0) + 1
            distinct.setdefault(pid, set()).add(" ".join(s["completion"].split()))
    return {
        pid: Tally(samples=n, correct=correct.get(pid, 0), distinct_correct=len(distinct.get(pid, ())))
        for pid, n in counts.items()
    }


def is_done(t: Tally, cutoff: int, count: str) -> bool:
    return (t.distinct_correct if count == "distinct" else t.correct) >= cutoff


def plan_next_round(
    cfg: RunConfig, problem_ids: Sequence[str], tallies: dict[str, Tally], rounds_done: int
) -> RoundPlan | None:
    """The next round after `rounds_done` verified rounds, or None when the E-step is complete."""
    a, k = cfg.sampling.adaptive, cfg.sampling.n
    if not a.enabled or rounds_done >= a.rounds:
        return None
    cap = a.max_per_problem or k
    empty = Tally()
    active = [
        pid
        for pid in problem_ids
        if not is_done(t := tallies.get(pid, empty), cfg.em.cutoff, a.count) and t.samples < cap
    ]
    if not active:
        return None
    used = max(tallies.get(pid, empty).samples for pid in active)
    spent = sum(t.samples for t in tallies.values())
    room = min(cap - used, (k * len(problem_ids) - spent) // len(active))
    if room <= 0:
        return None
    rounds_left = a.rounds - rounds_done
    # spread what is left evenly over the remaining rounds: an early stop saves the later ones
    n = room if rounds_left == 1 else math.ceil(room / rounds_left)
    return RoundPlan(n=n, first_index=used, problem_ids=active)
