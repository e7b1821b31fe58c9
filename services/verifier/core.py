"""Verdict rows for a shard of samples (pure): which reference each sample is checked against,
and what is written for it. The checking itself (numeric here, MATH and code in the sandbox
pools) is `checkers.Checkers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.tasks import TASKS_WITH_CHECKERS

from .rewards import Scored


def pair_samples(
    task: str, problems: Mapping[str, dict[str, Any]], samples: Sequence[dict[str, Any]]
) -> list[tuple[Any, str]]:
    """(reference, completion) per sample, in sample order; a ValueError names a bad sample."""
    if task not in TASKS_WITH_CHECKERS:
        raise ValueError(f"task '{task}' has no checker; known: {', '.join(TASKS_WITH_CHECKERS)}")
    pairs = []
    for s in samples:
        problem = problems.get(s["problem_id"])
        if problem is None:
            raise ValueError(
                f"sample {s['sample_id']} names problem '{s['problem_id']}', which is not in the dataset"
            )
        pairs.append((problem["answer"], s["completion"]))
    return pairs


def verdict_rows(samples: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> list[dict]:
    """One row per sample: the reward, and the verdict, rule (and checker version) that decided it.

    `correct` means the check passed (every test, for code); `reward` is what the filter keeps by
    and the M-step weighs by, in every mode (binary: 1.0 or 0.0), so readers need one field.
    """
    rows = []
    for s, one in zip(samples, scored, strict=True):
        v = one.verdict
        row = {
            "sample_id": s["sample_id"],
            "problem_id": s["problem_id"],
            "correct": v.correct,
            "reward": one.reward,
            "extracted": v.extracted,
            "rule": v.rule,
            "checker_version": v.checker_version,
        }
        if v.detail:
            row["detail"] = v.detail
        rows.append(row)
    return rows


def verdicts_summary(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What VerifyDone says about a shard's verdict rows."""
    return {"num_samples": len(rows), "num_correct": sum(1 for r in rows if r["correct"])}
