"""Evaluation features of the coordinator and its report, over plain data:
- transfer sets (`evaluation.transfer`): loaded with the run, evaluated with every checkpoint under
  their own task's prompt, checker and budget, reported beside the run's splits, never used to choose;
- early stop of the EM loop on validation (`em.early_stop_patience`);
- test accuracy by difficulty bucket of the base model's pass rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from services.coordinator import jobs as coordinator_jobs
from services.coordinator.plots import render_plots
from services.coordinator.report import build_report, render_markdown
from shared.configio import ConfigError
from shared.runconfig import parse_run_config
from shared.tasks import CODE_BLOCK_STOP, DatasetError, build_transfer_sets

CFG = """
task: {arithmetic: {train: 8, validation: 4, test: 4}}
em: {iterations: 1, shard_size: 8}
evaluation:
  transfer:
    - {name: he, task: humaneval, file: "builtin:humaneval", limit: 5}
    - {name: code, task: apps, file: examples/data/apps-tiny-test.jsonl, max_new_tokens: 200}
"""
ROOT = Path(__file__).resolve().parents[2]


def test_transfer_sets_load_as_extra_splits_cut_to_their_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    cfg = parse_run_config(CFG)
    sets = build_transfer_sets(cfg.evaluation)
    assert {k: len(v) for k, v in sets.items()} == {"transfer-he": 5, "transfer-code": 4}
    assert sets["transfer-he"][0]["answer"]["entry_point"] == "has_close_elements"


def test_a_missing_transfer_file_names_the_set(tmp_path: Path) -> None:
    cfg = parse_run_config(CFG.replace("examples/data/apps-tiny-test.jsonl", str(tmp_path / "nope.jsonl")))
    with pytest.raises(
        DatasetError, match=r"evaluation.transfer 'code': dataset file .*nope.jsonl does not exist"
    ):
        build_transfer_sets(cfg.evaluation)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("{name: he, task: humaneval, file: a}, {name: he, task: math, file: b}", "repeated: he"),
        ("{name: He!, task: humaneval, file: a}", "evaluation.transfer.0.name"),
        ("{name: x, task: arithmetic, file: a}", "evaluation.transfer.0.task"),
        ("{name: x, task: math}", "evaluation.transfer.0.file"),
    ],
)
def test_bad_transfer_entries_name_the_field(entry: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_run_config(f"evaluation: {{transfer: [{entry}]}}")


def test_every_checkpoint_is_evaluated_on_the_transfer_sets_with_their_own_task() -> None:
    cfg = parse_run_config(CFG)
    sizes = {"train": 8, "validation": 4, "test": 4, "transfer-he": 5, "transfer-code": 4}
    splits = coordinator_jobs.eval_splits(cfg, sizes)
    assert list(splits) == ["validation", "test", "transfer-he", "transfer-code"]
    assert list(coordinator_jobs.eval_splits(cfg, {**sizes, "transfer-he": 0}))[-1] == "transfer-code"
    run, _ = core.new_run("t-000001", cfg, CFG, base_model_key="models/base")
    jobs = {
        j.message.split: j.message
        for j in core.on_prepare_done(run, cfg, ev.PrepareDone(run_id=run.run_id), splits).jobs
    }
    assert (jobs["test"].task, jobs["test"].params.max_new_tokens) == ("arithmetic", 40)
    assert (jobs["transfer-he"].task, jobs["transfer-he"].params.max_new_tokens) == ("humaneval", 512)
    assert list(jobs["transfer-he"].params.stop_regex) == [CODE_BLOCK_STOP]
    assert (jobs["transfer-code"].task, jobs["transfer-code"].params.max_new_tokens) == ("apps", 200)
    assert jobs["transfer-he"].dataset_key.endswith("/data/transfer-he.jsonl")
    # the base iteration waits for all four evaluations; a transfer set never decides the best iteration
    for split, score in (("validation", 0.5), ("test", 0.4), ("transfer-he", 0.9)):
        d = core.on_eval_done(run, cfg, ev.EvalDone(iteration=0, split=split, pass_at_1=score), splits, ["a"])
        assert d.jobs == [] and run.phase == pb.PHASE_EVALUATING
    d = core.on_eval_done(
        run, cfg, ev.EvalDone(iteration=0, split="transfer-code", pass_at_1=0.2), splits, ["a"]
    )
    assert run.phase == pb.PHASE_SAMPLING and d.jobs


def _report_run() -> pb.Run:
    run = pb.Run(run_id="r-1", status=pb.RUN_STATUS_SUCCEEDED, task="math", config_yaml=yaml.safe_dump({}))
    run.created.GetCurrentTime()
    run.finished.GetCurrentTime()
    for i, (val, test, he) in enumerate([(0.1, 0.1, 0.05), (0.3, 0.25, 0.0), (0.2, 0.3, 0.1)]):
        it = run.iterations.add(iteration=i)
        it.evals.add(split="validation", pass_at_1=val)
        it.evals.add(split="test", pass_at_1=test)
        it.evals.add(split="transfer-humaneval", pass_at_1=he)
    run.best_iteration = core.choose_best_iteration(run)
    return run


def test_the_report_shows_transfer_columns_and_plots_them() -> None:
    report = build_report(_report_run())
    assert report["best_iteration"] == 1  # validation decides, not the transfer set
    assert [r["transfer_pass_at_1"] for r in report["iterations"]] == [
        {"humaneval": 0.05},
        {"humaneval": 0.0},
        {"humaneval": 0.1},
    ]
    md = render_markdown(report)
    assert "| iteration | humaneval |" in md and "| 2 | 10.0 % |" in md
    assert len(render_plots(report)["pass_at_1.png"]) > 10_000


def test_early_stop_ends_the_loop_when_validation_stops_improving() -> None:
    text = "task: {arithmetic: {train: 2, validation: 2, test: 2}}\nem: {iterations: 5, early_stop_patience: 2}\n"
    cfg = parse_run_config(text)
    run, _ = core.new_run("e-000001", cfg, text, base_model_key="models/base")
    splits = {"validation": 8, "test": 8}
    core.on_prepare_done(run, cfg, ev.PrepareDone(run_id=run.run_id), splits)
    finished = []
    for iteration, val in enumerate([0.1, 0.5, 0.4, 0.5]):  # best at 1; 2 and 3 do not beat it
        if iteration:
            it = run.iterations[-1]
            assert run.iteration == iteration and it.iteration == iteration
            run.phase = pb.PHASE_EVALUATING
        d = core.Decision()
        for split in splits:
            d = core.on_eval_done(
                run, cfg, ev.EvalDone(iteration=iteration, split=split, pass_at_1=val), splits, ["a", "b"]
            )
        finished.append(d.finished)
    assert finished == [False, False, False, True]
    assert run.status == pb.RUN_STATUS_SUCCEEDED and run.iterations_total == 3 and run.best_iteration == 1
    report = build_report(run)
    assert report["stopped_early"] is True and "stopped early" in render_markdown(report)
    with pytest.raises(ConfigError, match="early_stop_patience watches validation"):
        parse_run_config(text + "evaluation: {splits: [test]}\n")


def test_test_accuracy_by_difficulty_bucket_of_the_base_pass_rate() -> None:
    def rows(correct: dict[str, bool], samples: dict[str, list[bool]] | None = None) -> list[dict]:
        return [
            {
                "problem_id": p,
                "correct": ok,
                **({"samples": [{"correct": c} for c in samples[p]]} if samples else {}),
            }
            for p, ok in correct.items()
        ]

    base = rows(
        {"a": False, "b": False, "c": True, "d": True},
        {"a": [False] * 4, "b": [True, False, False, False, False], "c": [True, False], "d": [True] * 4},
    )
    it1 = rows({"a": True, "b": True, "c": True, "d": True})
    it2 = rows({"a": False, "b": True, "c": False, "d": True})
    report = build_report(_report_run(), {"base": base, "1": it1, "2": it2})
    d = report["difficulty"]
    assert d["base_rate_from"] == "sampled"
    assert d["problems"] == {"very hard": 1, "hard": 1, "medium": 1, "easy": 1}
    assert d["accuracy"]["1"] == {"very hard": 1.0, "hard": 1.0, "medium": 1.0, "easy": 1.0}
    assert d["accuracy"]["2"] == {"very hard": 0.0, "hard": 1.0, "medium": 0.0, "easy": 1.0}
    assert d["accuracy"]["base"]["easy"] == 1.0 and d["accuracy"]["base"]["very hard"] == 0.0
    md = render_markdown(report)
    assert "| checkpoint | easy (1) | medium (1) | hard (1) | very hard (1) |" in md
    # one problem per bucket: Wilson for 1/1 is [1 / (1 + z^2), 1] = [20.7 %, 100 %], for 0/1 its mirror
    assert (
        "| 2 | 100.0 % [20.7, 100.0] | 0.0 % [0.0, 79.3] | 100.0 % [20.7, 100.0] | 0.0 % [0.0, 79.3] |" in md
    )
    assert build_report(_report_run())["difficulty"] is None
