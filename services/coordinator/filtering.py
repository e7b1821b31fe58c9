"""The E-step's filter and the run's choice of iteration: pure functions, no I/O.

`select_kept` applies the paper's per-problem cap on the verified samples whose reward reaches
`em.min_reward` (the correct ones, with binary rewards; which ones are kept is restem's documented
rule, below); `choose_best_iteration` picks the iteration on the
validation split only; `plan_shards` cuts the train split into sample jobs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb

from .rewards import judged_of
from .selection import FilterStats, KeptSelection

__all__ = ["FilterStats", "choose_best_iteration", "even_parts", "plan_shards", "select_kept", "shard_count"]


def shard_count(num_problems: int, shard_size: int, slots: int = 0) -> int:
    """Sample jobs for `num_problems`: at most `shard_size` problems each and, with `slots` (the sample
    jobs the sampler pool runs at once) and more jobs than slots, a multiple of `slots`. Equal jobs
    in whole rounds keep every replica busy to the end of the E-step: 938 jobs on 64 replicas would
    leave 22 of them idle for the last of 15 rounds (2.3 % of the E-step), 960 smaller ones do not.
    An E-step of one round or less keeps `shard_size`: its jobs run at once already, and cutting
    them finer would only make a run queued behind a large one wait for more free replicas."""
    n = -(-num_problems // shard_size)
    if slots > 1 and n > slots and n % slots:
        n = min(num_problems, -(-n // slots) * slots)
    return n


def plan_shards(problem_ids: Sequence[str], shard_size: int, count: int | None = None) -> list[list[str]]:
    """Consecutive shards of the ids: chunks of `shard_size`, or `count` shards whose sizes differ by
    at most one when `count` is not the number of chunks (`shard_count` with slots)."""
    chunks = -(-len(problem_ids) // shard_size)
    if count is None or count == chunks:
        return [list(problem_ids[i : i + shard_size]) for i in range(0, len(problem_ids), shard_size)]
    return [list(problem_ids[a : a + n]) for a, n in even_parts(len(problem_ids), count)]


def even_parts(total: int, count: int) -> list[tuple[int, int]]:
    """(offset, size) of `count` consecutive parts of `total` items, sizes within one of each other
    (the larger ones first)."""
    size, extra = divmod(total, count)
    return [(i * size + min(i, extra), size + (i < extra)) for i in range(count)]


def select_kept(
    samples: Sequence[dict[str, Any]],
    verdicts: Sequence[dict[str, Any]],
    *,
    problem_ids: Sequence[str],
    cutoff: int,
    seed: int,
    min_reward: float = 1.0,
) -> tuple[list[dict[str, Any]], FilterStats]:
    """Keep at most `cutoff` samples per problem among those whose reward is at least `min_reward`.

    The paper caps kept samples per problem (10) to avoid skewing the M-step towards easy problems
    but does not say which ones it keeps. restem's rule: drop exact duplicate completions of a
    problem first (after whitespace normalisation: a duplicate adds weight without adding
    information; of duplicates, the one first in the order below stays), then keep the first
    `cutoff` in order of reward, highest first, and among equal rewards (every binary kept sample
    has reward 1) uniformly at random: the random order is a seed derived from the run seed and
    the sample id, so the choice is reproducible and independent of arrival order. Kept rows come
    problem by problem in split order, each problem's in that order, each with its reward as
    `weight`. Verdict rows without a `reward` (earlier releases) read as 1.0 when correct, else 0.0.

    This is the in-memory form; the coordinator streams shards through `selection.KeptSelection`,
    which applies the same rule with memory bounded by the number of problems.
    """
    judged = {v["sample_id"]: judged_of(v) for v in verdicts}
    with KeptSelection(problem_ids, cutoff=cutoff, seed=seed, min_reward=min_reward) as sel:
        sel.add_shard(samples, judged)
        out = io.BytesIO()
        sel.write_kept(out)
        return [json.loads(line) for line in out.getvalue().decode().splitlines()], sel.stats()


def choose_best_iteration(run: pb.Run) -> int:
    """Iteration with the highest validation pass@1; ties go to the earlier (cheaper, less overfit).

    Test numbers are never used. Without a validation split the last iteration is returned.
    """
    best, best_score = None, -1.0
    for it in run.iterations:
        scores = [e.pass_at_1 for e in it.evals if e.split == "validation"]
        if scores and scores[0] > best_score:
            best, best_score = it.iteration, scores[0]
    return best if best is not None else (run.iterations[-1].iteration if run.iterations else 0)
