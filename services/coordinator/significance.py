"""How much a run's numbers say (pure): the report's intervals and its paired tests.

- Every rate over held-out problems gets a 95 % Wilson interval over the split's problems
  (`shared.stats.wilson`): greedy pass@1 of each split, sampled pass@k and maj@k, difficulty buckets.
- Paired tests (exact McNemar, with Newcombe's paired interval for the difference) compare two
  checkpoints on the same problems from their per-problem results: on test, the best iteration
  against the base and against the SFT baseline; on validation, the best iteration against the
  runner-up, to say whether the choice stands out from noise. The choice itself is the rule in
  `filtering.choose_best_iteration`; the test only qualifies it.
- `test_outcomes` keeps each checkpoint's per-problem test results in the report (one character per
  problem), so that `restem compare` can pair two runs' checkpoints evaluated on the same problems.

Not here: the train pass rate gets no interval. It is measured on every training problem, so no
problems are sampled; what is left is the noise of K samples at T 0.7 on each, and the number
describes the training data, not held-out accuracy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shared import stats
from shared.configio import ConfigError
from shared.runconfig import parse_run_config
from shared.stats import ALPHA, PairedComparison, PairedTable, compare_paired, wilson

CI_LEVEL = 0.95
CI_METHOD = "wilson"
PAIRED_METHOD = (
    f"exact McNemar test (two-sided binomial on the discordant problems), verdict at p < {ALPHA}; "
    "difference interval: Newcombe (1998) square-and-add for paired proportions, 95 %"
)
Results = Mapping[str, list[dict[str, Any]]]  # checkpoint ("base", "1", ..., "sft") -> result rows


def ci(rate: float | None, n: int) -> list[float] | None:
    """The 95 % Wilson interval of `rate` over `n` problems (None without problems)."""
    if rate is None or n < 1:
        return None
    # a mean merged from shards can land a float ulp outside [0, 1] (e.g. 0.9562500000000002)
    return list(wilson(min(max(rate, 0.0), 1.0), n))


def with_intervals(e: dict[str, Any]) -> dict[str, Any]:
    """An evaluation row of the report with the intervals of its pass@1 and sampled metrics."""
    n = int(e.get("num_problems") or 0)
    e["pass_at_1_ci"] = ci(e.get("pass_at_1"), n)
    e["metrics_ci"] = {k: ci(v, n) for k, v in e.get("metrics", {}).items()} if n else {}
    return e


def checkpoint_name(iteration: int) -> str:
    return "base" if iteration == 0 else str(iteration)


def outcomes(rows: list[dict[str, Any]]) -> dict[str, bool]:
    return {str(r["problem_id"]): bool(r["correct"]) for r in rows}


def paired(a: str, b: str, split: str, results: Results) -> dict[str, Any] | None:
    """Checkpoint `a` against `b` on `split`, or None when either has no per-problem results."""
    if not results.get(a) or not results.get(b):
        return None
    c = compare_paired(outcomes(results[a]), outcomes(results[b]))
    t = c.table
    return {
        "a": a,
        "b": b,
        "split": split,
        "problems": t.n,
        "both": t.both,
        "only_a": t.only_a,
        "only_b": t.only_b,
        "neither": t.neither,
        "difference": t.difference,
        "difference_ci": list(c.interval),
        "p_value": c.p_value,
        "distinguishable": c.distinguishable,
    }


def label(name: str) -> str:
    """How a checkpoint is named in prose: "base", "SFT", "iteration 2"."""
    return {"base": "base", "sft": "SFT"}.get(name, f"iteration {name}")


def describe(t: dict[str, Any]) -> str:
    """A paired test of the report in words (`shared.stats.describe`)."""
    table = PairedTable(both=t["both"], only_a=t["only_a"], only_b=t["only_b"], neither=t["neither"])
    lo, hi = t["difference_ci"]
    comparison = PairedComparison(table, t["p_value"], (lo, hi))
    return stats.describe(comparison, label(t["a"]), label(t["b"]))


def _selection_note(s: dict[str, Any]) -> str:
    if s["runner_up"] is None:
        return "nothing to compare: fewer than two checkpoints have a validation result"
    other = label(checkpoint_name(s["runner_up"]))
    scores = f"{100 * s['chosen_pass_at_1']:.1f} % vs {100 * s['runner_up_pass_at_1']:.1f} %"
    t = s["test"]
    if t is None:
        return f"{other} ({scores}); not tested: no per-problem validation results"
    if t["distinguishable"]:
        return f"distinguishable from {other} ({scores}): {describe(t)}"
    return f"not distinguishable from {other} ({scores}): {describe(t)}; the choice is within noise"


def selection(report: dict[str, Any], validation_results: Results | None) -> dict[str, Any]:
    """The best iteration against the runner-up on validation (highest of the others, earliest on ties)."""
    scores = {
        r["iteration"]: r["validation_pass_at_1"]
        for r in report["iterations"]
        if r["validation_pass_at_1"] is not None
    }
    chosen = report["best_iteration"]
    others = [(score, -it, it) for it, score in scores.items() if it != chosen]
    s: dict[str, Any] = {"split": "validation", "chosen": chosen, "runner_up": None, "test": None}
    if chosen in scores and others:
        runner_up = max(others)[2]
        s |= {
            "runner_up": runner_up,
            "chosen_pass_at_1": scores[chosen],
            "runner_up_pass_at_1": scores[runner_up],
            "test": paired(
                checkpoint_name(chosen), checkpoint_name(runner_up), "validation", validation_results or {}
            ),
        }
    s["distinguishable"] = s["test"]["distinguishable"] if s["test"] else None
    s["note"] = _selection_note(s)
    return s


def paired_tests(report: dict[str, Any], test_results: Results | None) -> list[dict[str, Any]]:
    """On test: the best iteration against the base and against the SFT baseline, where both have results."""
    best = checkpoint_name(report["best_iteration"])
    others = [name for name in ("base", "sft") if name != best]
    tests = [paired(best, other, "test", test_results or {}) for other in others]
    return [t for t in tests if t is not None]


def problem_set(config_yaml: str) -> str | None:
    """A digest of what decides a run's problems: its `task` section with defaults filled in.

    Problem ids alone do not identify problems (arithmetic ids are `test-00000`, ... whatever the
    seed); dataset files are named by content (`sha256:...`), so the section does. `few_shot` is
    left out: it changes the prompt, not the problems. None when the config no longer parses.
    """
    try:
        task = parse_run_config(config_yaml).task.model_dump(mode="json", exclude={"few_shot"})
    except ConfigError:
        return None
    return hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()[:16]


def test_outcomes(config_yaml: str, test_results: Results | None) -> dict[str, Any] | None:
    """Per-problem test results as one "1"/"0" string per checkpoint, over the base's problems
    (sorted ids); a checkpoint evaluated on other problems is left out."""
    if not test_results:
        return None
    first = next(iter(test_results.values()))
    ids = sorted(outcomes(first))
    correct = {}
    for name, rows in test_results.items():
        got = outcomes(rows)
        if sorted(got) == ids:
            correct[name] = "".join("1" if got[p] else "0" for p in ids)
    return {"problem_set": problem_set(config_yaml), "problem_ids": ids, "correct": correct}
