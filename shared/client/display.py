"""What the CLI shows: progress while a run goes, and the table of iterations at the end.

Every held-out rate is shown with its 95 % interval from the report (`[lo, hi]`, Wilson over the
split's problems; a report from a coordinator that predates them shows the rate alone). `restem
compare` tests runs' best checkpoints against the first run's with the exact McNemar test when they
were evaluated on the same test problems (`shared.stats`), and says so when they were not.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.stats import compare_paired, describe, p_text

PHASES = {
    pb.PHASE_PREPARING: "preparing",
    pb.PHASE_SAMPLING: "sampling",
    pb.PHASE_VERIFYING: "verifying",
    pb.PHASE_FILTERING: "filtering",
    pb.PHASE_TRAINING: "training",
    pb.PHASE_EVALUATING: "evaluating",
    pb.PHASE_DONE: "done",
}


def status_name(run: pb.Run) -> str:
    return pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()


def _label(run: pb.Run) -> str:
    phase = PHASES.get(run.phase, "?")
    where = "base" if run.iteration == 0 else f"iteration {run.iteration}/{run.iterations_total}"
    return f"{where:>15} {phase:<10}" if run.phase != pb.PHASE_PREPARING else f"{'':>15} {phase:<10}"


def follow(runs: Iterable[pb.Run], console: Console) -> pb.Run:
    """Show progress bars per phase (plain lines when not on a terminal); return the last snapshot."""
    last: pb.Run | None = None
    if not console.is_terminal:
        shown: tuple[Any, ...] = ()
        for run in runs:
            line_key = (
                run.iteration,
                run.phase,
                run.status,
                run.progress.done * 4 // max(run.progress.total, 1),
            )
            if line_key != shown:
                p = run.progress
                console.print(
                    f"[{time.strftime('%H:%M:%S')}] {_label(run)} {p.done}/{p.total} {p.unit}".rstrip()
                )
                shown = line_key
            last = run
        assert last is not None
        return last
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        tasks: dict[tuple[int, int], TaskID] = {}
        for run in runs:
            key = (run.iteration, run.phase)
            if key not in tasks and run.phase != pb.PHASE_DONE:
                for tid in tasks.values():
                    t = progress.tasks[tid]
                    progress.update(tid, completed=t.total or t.completed)
                    progress.stop_task(tid)
                tasks[key] = progress.add_task(
                    _label(run), total=run.progress.total or None, unit=run.progress.unit
                )
            if run.phase != pb.PHASE_DONE:
                progress.update(tasks[key], completed=run.progress.done, total=run.progress.total or None)
            elif run.status == pb.RUN_STATUS_SUCCEEDED:
                for tid in tasks.values():  # the final snapshot closes the last phase's bar
                    progress.update(tid, completed=progress.tasks[tid].total or 1)
            last = run
    assert last is not None
    return last


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _rate(x: float | None, interval: list[float] | None) -> str:
    """`42.2% [30.9, 54.4]`: a rate and its 95 % interval, in percent."""
    if x is None or not interval:
        return _pct(x)
    return f"{_pct(x)} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _name(iteration: int) -> str:
    return "base" if iteration == 0 else str(iteration)


def _selection_caption(report: dict[str, Any]) -> str:
    """Whether the best iteration stands out from the runner-up on validation, when it was tested."""
    s = report.get("selection") or {}
    t = s.get("test")
    if not t:
        return ""
    verdict = "distinguishable" if t["distinguishable"] else "not distinguishable (within noise)"
    other = "the base" if s["runner_up"] == 0 else f"iteration {s['runner_up']}"
    return f"; on validation {verdict} from {other}, exact McNemar {p_text(t['p_value'])}"


def iterations_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"run {report['run_id']} — {report['status']}", title_justify="left")
    for col in (
        "iteration",
        "train pass rate",
        "solved",
        "kept",
        "val pass@1",
        "test pass@1",
        "tokens",
        "time",
    ):
        table.add_column(col, justify="right")
    transfer = sorted({n for r in report["iterations"] for n in r.get("transfer_pass_at_1", {})})
    for name in transfer:
        table.add_column(f"{name} pass@1", justify="right")
    for r in report["iterations"]:
        first = r["iteration"] == 0
        best = " *" if r["iteration"] == report["best_iteration"] else ""
        cis = r.get("transfer_pass_at_1_ci") or {}
        extra = [_rate(r.get("transfer_pass_at_1", {}).get(n), cis.get(n)) for n in transfer]
        kept = "skipped" if r["training_skipped"] else str(r["kept"])
        table.add_row(
            _name(r["iteration"]) + best,
            "–" if first else _pct(r["train_pass_rate"]),
            "–" if first else f"{r['problems_solved']}/{r['problems_total']}",
            "–" if first else kept,
            _rate(r["validation_pass_at_1"], r.get("validation_pass_at_1_ci")),
            _rate(r["test_pass_at_1"], r.get("test_pass_at_1_ci")),
            str(r["tokens_generated"]),
            f"{r['seconds']:.0f}s",
            *extra,
        )
    sft = report.get("sft_baseline")
    if sft:
        examples = (sft.get("train") or {}).get("examples", 0)
        cis = sft.get("transfer_pass_at_1_ci") or {}
        extra = [_rate(sft.get("transfer_pass_at_1", {}).get(n), cis.get(n)) for n in transfer]
        table.add_row("SFT", "–", "–", f"{examples} ref.", _rate(sft["validation_pass_at_1"], sft.get("validation_pass_at_1_ci")),
                      _rate(sft["test_pass_at_1"], sft.get("test_pass_at_1_ci")), "0", f"{sft['seconds']:.0f}s", *extra,
                      end_section=False)  # fmt: skip
    table.caption = (
        "* best iteration on validation (test is never used to choose)"
        + _selection_caption(report)
        + ("; SFT = base fine-tuned on reference solutions" if sft else "")
        + ("; in brackets: 95 % interval" if report.get("ci_method") else "")
    )
    return table


def runs_table(runs: Iterable[pb.Run]) -> Table:
    table = Table()
    table.add_column("run", no_wrap=True)
    for col in ("status", "phase", "iteration", "task", "created"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.run_id, status_name(r), PHASES.get(r.phase, "?"), f"{r.iteration}/{r.iterations_total}", r.task,
            r.created.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    return table


def sampled_table(report: dict[str, Any]) -> Table | None:
    """pass@k / maj@k of the sampled evaluations, if the run had any."""
    rows = [
        (r["iteration"], e["split"], e.get("metrics", {}), e.get("metrics_ci") or {})
        for r in report["iterations"]
        for e in r["evals"]
    ]
    names = sorted(
        {k for _, _, m, _ in rows for k in m}, key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1]))
    )
    if not names:
        return None
    table = Table(title="sampled evaluation", title_justify="left")
    for col in ("iteration", "split", *names):
        table.add_column(col, justify="right")
    for iteration, split, m, cis in rows:
        if m:
            table.add_row(_name(iteration), split, *(_rate(m.get(k), cis.get(k)) for k in names))
    return table


def compare_table(reports: list[dict[str, Any]]) -> Table:
    """Test pass@1 by iteration, one row per run, with each run's best-on-validation iteration."""
    depth = max(len(r["iterations"]) for r in reports)
    table = Table(
        title="runs compared (test pass@1, greedy; in brackets: 95 % interval)", title_justify="left"
    )
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    for i in range(depth):
        table.add_column("base" if i == 0 else f"iter {i}", justify="right")
    table.add_column("best (val)", justify="right")
    for rep in reports:
        cells = [_rate(r["test_pass_at_1"], r.get("test_pass_at_1_ci")) for r in rep["iterations"]]
        cells += [""] * (depth - len(rep["iterations"]))
        best = next((r for r in rep["iterations"] if r["iteration"] == rep["best_iteration"]), None)
        best_test = _rate(best["test_pass_at_1"], best.get("test_pass_at_1_ci")) if best else "–"
        table.add_row(rep["run_id"], rep["status"], *cells, f"{_name(rep['best_iteration'])}: {best_test}")
    return table


def _best_outcomes(report: dict[str, Any]) -> dict[str, bool] | None:
    """Problem id -> correct of the run's best checkpoint on test, from the report's `test_outcomes`."""
    outcomes = report.get("test_outcomes") or {}
    bits = (outcomes.get("correct") or {}).get(_name(report["best_iteration"]))
    if bits is None:
        return None
    return {pid: bit == "1" for pid, bit in zip(outcomes["problem_ids"], bits, strict=True)}


def _same_problems(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Both runs' test problems are known to be the same: same task section and the same problem ids
    (ids alone are not enough: an arithmetic run's ids are the same whatever its seed)."""
    oa, ob = a.get("test_outcomes") or {}, b.get("test_outcomes") or {}
    return (
        bool(oa.get("problem_set"))
        and oa.get("problem_set") == ob.get("problem_set")
        and (oa.get("problem_ids") == ob.get("problem_ids"))
    )


def compare_notes(reports: list[dict[str, Any]]) -> list[str]:
    """Each later run's best checkpoint against the first run's on test: a paired test when both were
    evaluated on the same problems, else a note that only the intervals can be compared."""
    first, notes = reports[0], []
    for rep in reports[1:]:
        a, b = (
            f"{rep['run_id']}:{_name(rep['best_iteration'])}",
            f"{first['run_id']}:{_name(first['best_iteration'])}",
        )
        ours, theirs = _best_outcomes(rep), _best_outcomes(first)
        if ours is None or theirs is None or not _same_problems(rep, first):
            notes.append(
                f"{a} vs {b}: unpaired (not known to be the same test problems, or no per-problem results "
                "in a report): compare the intervals; overlapping intervals are no test"
            )
            continue
        c = compare_paired(ours, theirs)
        verdict = "distinguishable" if c.distinguishable else "not distinguishable (within noise)"
        notes.append(f"{a} vs {b} on the same test problems: {verdict}; {describe(c, a, b)}")
    return notes
