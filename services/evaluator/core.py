"""Per-problem evaluation records and their metrics (pure).

A result record is one line of `iter-<n>/eval/<split>.jsonl`:
`{problem_id, completion, extracted, correct, rule, num_tokens}` for the greedy answer, plus, when
the job asks for a sampled evaluation, `samples: [{extracted, correct, num_tokens}]` — kept per
problem so any metric can be recomputed later. Sample j of a problem is drawn with the seed of
(`evaluation.seed`, problem id, j) (`shared.seeds.sample_seeds`, passed by the event adapter): the
same for every checkpoint, so iterations are compared on equal terms, and independent of how the
split is batched. Metric definitions live in `shared.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.metrics import maj_at_k, mean_pass_at_k


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


def attach_samples(rows: list[dict], completions: Sequence[Sequence[Any]], verdicts: Sequence[Any]) -> None:
    """Add each problem's sampled completions' verdicts (verdicts are flat, problem-major)."""
    flat = iter(verdicts)
    for row, outs in zip(rows, completions, strict=True):
        row["samples"] = [
            {"extracted": v.extracted, "correct": v.correct, "num_tokens": c.num_tokens}
            for c, v in zip(outs, [next(flat) for _ in outs], strict=True)
        ]


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(11)) if k <= n]
    return ks if n in ks else [*ks, n]


def pass_at_1(rows: Sequence[dict[str, Any]]) -> float:
    return sum(1 for r in rows if r["correct"]) / len(rows) if rows else 0.0


def sampled_metrics(rows: Sequence[dict[str, Any]], *, majority: bool = True) -> dict[str, float]:
    """pass@k and (with `majority`) maj@k over the rows' samples; {} when there are none.

    Code tasks have no final answer to vote on (two different programs can both be right), so
    their reports carry pass@k only, as the paper's code results do.
    """
    if not rows or not rows[0].get("samples"):
        return {}
    n = min(len(r["samples"]) for r in rows)
    counts = [(n, sum(s["correct"] for s in r["samples"][:n])) for r in rows]
    out: dict[str, float] = {}
    for k in ks_for(n):
        out[f"pass@{k}"] = mean_pass_at_k(counts, k)
        if not majority:
            continue
        votes = [maj_at_k([(s["extracted"], s["correct"]) for s in r["samples"]], k) for r in rows]
        out[f"maj@{k}"] = sum(votes) / len(votes)
    return out


def split_summary(rows: Sequence[dict[str, Any]], task: str) -> dict[str, Any]:
    """What EvalDone says about a split's result rows (majority voting only for answer tasks)."""
    from shared.tasks import CODE_TASKS

    return {
        "num_problems": len(rows),
        "num_correct": sum(1 for r in rows if r["correct"]),
        "pass_at_1": pass_at_1(rows),
        "num_tokens": sum(r["num_tokens"] for r in rows),
        "metrics": sampled_metrics(rows, majority=task not in CODE_TASKS),
    }
