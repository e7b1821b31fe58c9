"""Verdicts for a shard of samples: pure, so filtering and scoring are testable without servers.

Not handled here: running untrusted code (the sandbox pool of the code-task issue plugs in at
`shared.tasks.check_answer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.tasks import TASKS_WITH_CHECKERS, check_answer


def verify_samples(
    task: str, problems: Mapping[str, dict[str, Any]], samples: Sequence[dict[str, Any]]
) -> list[dict]:
    """One verdict row per sample, in sample order. Unknown problem ids are a ValueError."""
    if task not in TASKS_WITH_CHECKERS:
        raise ValueError(f"task '{task}' has no checker; known: {', '.join(TASKS_WITH_CHECKERS)}")
    rows = []
    for s in samples:
        problem = problems.get(s["problem_id"])
        if problem is None:
            raise ValueError(
                f"sample {s['sample_id']} names problem '{s['problem_id']}', which is not in the dataset"
            )
        v = check_answer(task, problem["answer"], s["completion"])
        rows.append(
            {
                "sample_id": s["sample_id"],
                "problem_id": s["problem_id"],
                "correct": v.correct,
                "extracted": v.extracted,
                "rule": v.rule,
                "checker_version": v.checker_version,
            }
        )
    return rows
