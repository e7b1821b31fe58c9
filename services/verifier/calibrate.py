"""Per-problem time limits scaled from each reference solution's runtime, written into a dataset.

    python -m services.verifier.calibrate --task apps IN.jsonl OUT.jsonl [--factor 3] [--floor 1] [--cap 20]

Fixed limits (APPS 4 s, HumanEval 3 s) are either too tight for a slow-but-correct problem or far
too loose for a fast one, where every time-limited sample then holds a sandbox worker for seconds.
This runs every problem's reference solution in the sandbox pool (limit `cap`), takes its slowest
test, and sets `time_limit_s = clamp(factor x slowest, floor, cap)` on the problem's line; the rest
of each line is written back unchanged, so OUT is a dataset of the same format for `task.files`.
Calibrate once, on the machine type that will verify: the limits are data, so every verifier replica
and every iteration of a run then judges with the same limits (a verdict never depends on when it
was computed). Problems without a reference, or whose reference fails its own tests, keep their
limit and are listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Calibration:
    limits: dict[str, float]
    """problem id -> calibrated time_limit_s."""
    failed: dict[str, str]
    """problem id -> why its reference gave no limit (missing, or the rule it failed with)."""


def calibrate_problems(
    grader: Any, task: str, problems: list[dict[str, Any]], factor: float, floor_s: float, cap_s: float
) -> Calibration:
    """Run every reference once (all workers at once) and derive the limits."""
    from .checkers import code_of
    from .code_checks import problem_from_dict, scaled_time_limit

    jobs, failed = [], {}
    for p in problems:
        if not p.get("solution"):
            failed[p["id"]] = "no reference solution"
            continue
        code, _ = code_of(task, p["solution"])
        jobs.append((p["id"], replace(problem_from_dict(p["answer"]), time_limit_s=cap_s), code))
    verdicts = grader.grade_many([(problem, code) for _, problem, code in jobs])
    limits = {}
    for (pid, _, _), v in zip(jobs, verdicts, strict=True):
        if v.correct:
            limits[pid] = round(scaled_time_limit(max(t.wall_s for t in v.tests), factor, floor_s, cap_s), 3)
        else:
            failed[pid] = f"reference fails: {v.rule}"
    return Calibration(limits, failed)


def rewrite_lines(lines: list[str], ids: list[str], limits: dict[str, float]) -> list[str]:
    """The dataset's lines with `time_limit_s` set where a limit was calibrated (blank lines dropped)."""
    rows = [json.loads(line) for line in lines if line.strip()]
    out = []
    for pid, row in zip(ids, rows, strict=True):
        if pid in limits:
            row["time_limit_s"] = limits[pid]
        out.append(json.dumps(row, ensure_ascii=False))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.verifier.calibrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", choices=("apps", "humaneval"), required=True)
    parser.add_argument("source", help="dataset JSONL (or .jsonl.gz, or builtin:humaneval)")
    parser.add_argument("dest", type=Path, help="output JSONL")
    parser.add_argument(
        "--factor", type=float, default=3.0, help="limit = factor x the reference's slowest test"
    )
    parser.add_argument("--floor", type=float, default=1.0, help="least limit in seconds")
    parser.add_argument(
        "--cap", type=float, default=20.0, help="largest limit in seconds (and the reference's)"
    )
    parser.add_argument("--workers", type=int, default=0, help="sandbox zygotes (0: two per core)")
    args = parser.parse_args(argv)
    from shared.tasks import DatasetError, load_problems, resolve_dataset_path
    from shared.tasks.datasets import read_lines

    from .code_grader import CodeGrader
    from .sandbox import PoolConfig, SandboxPool

    if not 0 < args.floor <= args.cap <= 60 or args.factor <= 0:
        parser.error("need 0 < --floor <= --cap <= 60 and --factor > 0")
    try:
        problems = load_problems(args.source, args.task)
        lines = read_lines(resolve_dataset_path(args.source))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with SandboxPool(PoolConfig(workers=args.workers, queue_size=max(256, len(problems)))) as pool:
        print(f"sandbox: {pool.protections.summary()}", file=sys.stderr)
        result = calibrate_problems(CodeGrader(pool), args.task, problems, args.factor, args.floor, args.cap)
    args.dest.write_text("\n".join(rewrite_lines(lines, [p["id"] for p in problems], result.limits)) + "\n")
    values = sorted(result.limits.values())
    summary = f"median {statistics.median(values):.2f} s, max {values[-1]:.2f} s" if values else "none"
    print(f"{args.dest}: {len(values)}/{len(problems)} problems calibrated ({summary})")
    for pid, why in sorted(result.failed.items()):
        print(f"  kept its limit: {pid}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
