"""The E-step's filter and the run's choice of iteration: pure functions, no I/O.

`select_kept` applies the paper's per-problem cap on the verified-correct samples (which ones are
kept is restem's documented rule, below); `choose_best_iteration` picks the iteration on the
validation split only; `plan_shards` cuts the train split into sample jobs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.seeds import derive_seed


def plan_shards(problem_ids: Sequence[str], shard_size: int) -> list[list[str]]:
    return [list(problem_ids[i : i + shard_size]) for i in range(0, len(problem_ids), shard_size)]


@dataclass(frozen=True)
class FilterStats:
    samples: int
    correct: int
    problems_total: int
    problems_solved: int
    kept: int
    duplicates_dropped: int


def select_kept(
    samples: Sequence[dict[str, Any]],
    verdicts: Sequence[dict[str, Any]],
    *,
    problem_ids: Sequence[str],
    cutoff: int,
    seed: int,
) -> tuple[list[dict[str, Any]], FilterStats]:
    """Keep at most `cutoff` verified-correct samples per problem.

    The paper caps kept samples per problem (10) to avoid skewing the M-step towards easy problems
    but does not say which ones it keeps. restem's rule: drop exact duplicate completions of a
    problem first (after whitespace normalisation: a duplicate adds weight without adding
    information), then choose uniformly at random among the rest with a seed derived from the run
    seed and the sample id, so the choice is reproducible and independent of arrival order.
    """
    correct_ids = {v["sample_id"] for v in verdicts if v["correct"]}
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        if s["sample_id"] in correct_ids:
            by_problem[s["problem_id"]].append(s)
    kept: list[dict[str, Any]] = []
    duplicates = 0
    for pid in problem_ids:
        seen: set[str] = set()
        unique = []
        for s in sorted(by_problem.get(pid, []), key=lambda s: derive_seed(seed, s["sample_id"])):
            text = " ".join(s["completion"].split())
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            unique.append(s)
        kept += [
            {
                "sample_id": s["sample_id"],
                "problem_id": pid,
                "prompt": s["prompt"],
                "completion": s["completion"],
                "weight": 1.0,
            }
            for s in unique[:cutoff]
        ]
    stats = FilterStats(
        samples=len(samples),
        correct=len(correct_ids),
        problems_total=len(problem_ids),
        problems_solved=sum(1 for pid in problem_ids if by_problem.get(pid)),
        kept=len(kept),
        duplicates_dropped=duplicates,
    )
    return kept, stats


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
