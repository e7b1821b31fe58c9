"""The CLI's tables show every pass@1 with its interval, and `restem compare` pairs runs only when
their checkpoints were evaluated on the same problems."""

from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb
from rich.console import Console

from services.coordinator.core import choose_best_iteration
from services.coordinator.report import build_report
from shared.client.display import compare_notes, compare_table, iterations_table


def _text(table: Any) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return " ".join(console.export_text().split())  # a caption wraps at the table's width


def _rows(split: str, solved: range, n: int) -> list[dict]:
    return [{"problem_id": f"{split}-{i:02d}", "correct": i in solved} for i in range(n)]


def _report(
    run_id: str, best_solves: range, config: str = "{}\n", val_best: range = range(0, 20)
) -> dict[str, Any]:
    """A run of the base and iteration 1: the base solves validation problems 0-7 of 32 and test
    problems 0-9 of 64, iteration 1 `val_best` and `best_solves` (and is best on validation)."""
    run = pb.Run(run_id=run_id, status=pb.RUN_STATUS_SUCCEEDED, task="arithmetic", config_yaml=config)
    run.created.GetCurrentTime()
    run.finished.GetCurrentTime()
    solved = {"base": (range(0, 8), range(0, 10)), "1": (val_best, best_solves)}
    for i, (val, test) in enumerate(solved.values()):
        it = run.iterations.add(iteration=i)
        it.evals.add(split="validation", num_problems=32, num_correct=len(val), pass_at_1=len(val) / 32)
        it.evals.add(split="test", num_problems=64, num_correct=len(test), pass_at_1=len(test) / 64)
    run.best_iteration = choose_best_iteration(run)
    test = {name: _rows("test", t, 64) for name, (_, t) in solved.items()}
    val = {name: _rows("validation", v, 32) for name, (v, _) in solved.items()}
    return build_report(run, test, validation_results=val)


def test_the_final_table_shows_each_pass_at_1_with_its_interval():
    text = _text(iterations_table(_report("r-a", range(0, 27))))
    # Wilson 95 %, 20 of 32: centre (0.625 + z^2/64) / (1 + z^2/32) = 0.68502 / 1.12005 = 0.61160,
    # half-width z * sqrt(0.625 * 0.375 / 32 + z^2/4096) / 1.12005 = 0.15906 -> [45.3, 77.1];
    # 27 of 64 -> [30.9, 54.4] (test_report); 10 of 64 -> [8.7, 26.4]
    assert "62.5% [45.3, 77.1]" in text and "42.2% [30.9, 54.4]" in text and "15.6% [8.7, 26.4]" in text
    assert "in brackets: 95 % interval" in text


def test_the_final_table_says_whether_the_best_iteration_stands_out_from_the_runner_up():
    # iteration 1 alone solves validation 8-15 (8), the base alone 0-3 (4):
    # p = 2 * (C(12,0) + C(12,1) + C(12,2) + C(12,3) + C(12,4)) / 2^12 = 2 * 794 / 4096 = 0.388
    close = _text(iterations_table(_report("r-a", range(0, 27), val_best=range(4, 16))))
    assert "on validation not distinguishable (within noise) from the base, exact McNemar p = 0.388" in close
    # iteration 1 alone solves 8-19 (12), the base nothing it does not: p = 2 / 2^12
    clear = _text(iterations_table(_report("r-a", range(0, 27))))
    assert "on validation distinguishable from the base, exact McNemar p < 0.001" in clear


def test_compare_pairs_two_runs_evaluated_on_the_same_problems():
    first, second = _report("r-a", range(0, 27)), _report("r-b", range(0, 18))
    text = _text(compare_table([first, second]))
    # 18 of 64: centre (0.28125 + z^2/128) / 1.06002 = 0.29364, half-width 0.10770
    assert "1: 42.2% [30.9, 54.4]" in text and "1: 28.1% [18.6, 40.1]" in text
    (note,) = compare_notes([first, second])
    # r-b's best solves 9 fewer problems, and none that r-a's does not: p = 2 * C(9, 0) / 2^9 = 0.0039
    assert note.startswith("r-b:1 vs r-a:1 on the same test problems: distinguishable;")
    assert "difference -14.1 points" in note and "(0 solved only by r-b:1, 9 only by r-a:1)" in note
    assert "exact McNemar p = 0.004" in note


def test_compare_does_not_pair_runs_on_different_problems():
    first = _report("r-a", range(0, 27))
    # the same problem ids, but another seed: other arithmetic problems
    other_seed = _report("r-c", range(0, 18), config="task: {seed: 1}\n")
    older = _report("r-d", range(0, 18)) | {"test_outcomes": None}
    for other in (other_seed, older):
        (note,) = compare_notes([first, other])
        assert "unpaired" in note and "McNemar" not in note
    assert compare_notes([first]) == []
