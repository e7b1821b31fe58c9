"""Per-problem evaluation records and pass@1 (pure).

A result record is one line of `iter-<n>/eval/<split>.jsonl`:
`{problem_id, completion, extracted, correct, rule, num_tokens}` — kept per problem so any metric
can be recomputed later. pass@k / maj@k over several samples come with the reports issue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def result_rows(
    problems: Sequence[dict[str, Any]], completions: Sequence[Any], verdicts: Sequence[Any]
) -> list[dict]:
    return [
        {
            "problem_id": p["id"],
            "completion": c.text,
            "extracted": v.extracted,
            "correct": v.correct,
            "rule": v.rule,
            "num_tokens": c.num_tokens,
        }
        for p, c, v in zip(problems, completions, verdicts, strict=True)
    ]


def pass_at_1(rows: Sequence[dict[str, Any]]) -> float:
    return sum(1 for r in rows if r["correct"]) / len(rows) if rows else 0.0
