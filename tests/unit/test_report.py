import json
import struct

import pytest
import yaml
from restem.coordinator.v1 import coordinator_pb2 as pb

from services.coordinator.core import choose_best_iteration
from services.coordinator.plots import render_plots
from services.coordinator.report import build_report, render_markdown
from services.coordinator.rewards import REWARD_BUCKETS
from services.evaluator.core import ks_for, sampled_metrics


def _run() -> pb.Run:
    run = pb.Run(
        run_id="r-000001",
        name="r",
        status=pb.RUN_STATUS_SUCCEEDED,
        task="arithmetic",
        config_yaml=yaml.safe_dump({"em": {"cutoff": 4}}),
    )
    run.created.GetCurrentTime()
    run.finished.GetCurrentTime()
    for i, (train, val, test) in enumerate([(None, 0.0, 0.0), (0.01, 0.1, 0.05), (0.4, 0.6, 0.55)]):
        it = run.iterations.add(
            iteration=i, samples=512 if i else 0, kept=10 * i, train_pass_rate=train or 0.0
        )
        it.evals.add(split="validation", pass_at_1=val, num_problems=32)
        it.evals.add(
            split="test",
            pass_at_1=test,
            num_problems=64,
            metrics={"pass@1": test, "pass@8": min(1, 3 * test), "maj@8": test},
        )
        it.phase_seconds["sampling"] = 10.0
    run.best_iteration = choose_best_iteration(run)
    return run


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_has_every_plot_and_a_markdown_summary():
    report = build_report(_run())
    plots = render_plots(report)
    assert set(plots) == {"pass_at_1.png", "train_vs_test.png", "pass_at_k.png", "maj_at_k.png"}
    for data in plots.values():
        w, h = _png_size(data)
        assert w >= 600 and h >= 400 and len(data) > 10_000
    md = render_markdown(report, plots=sorted(plots))
    # Wilson 95 %: 0.6 of 32 -> [42.9, 75.0], 0.55 of 64 -> [42.9, 66.6]
    assert "| 2 | 40.0 % | 0/0 | 20 | 60.0 % [42.9, 75.0] | 55.0 % [42.9, 66.6] |" in md
    assert "| 2 | test | 55.0 % [42.9, 66.6] |" in md
    assert "![pass_at_k.png](pass_at_k.png)" in md
    assert report["best_iteration"] == 2


def test_the_report_shows_the_reward_distribution_of_each_e_step_and_of_its_kept_set():
    run = _run()
    run.config_yaml = yaml.safe_dump(
        {"task": {"name": "apps"}, "em": {"reward": "fraction_of_tests", "min_reward": 0.5}}
    )
    counts = [
        ((300, 100, 60, 30, 2, 20), (0, 0, 6, 2, 0, 2)),
        ((200, 80, 90, 60, 2, 80), (0, 0, 4, 6, 0, 10)),
    ]
    for it, (all_, kept) in zip(run.iterations[1:], counts, strict=True):  # per bucket: all, kept
        it.sample_rewards.update(dict(zip(REWARD_BUCKETS, all_, strict=True)))
        it.kept_rewards.update(dict(zip(REWARD_BUCKETS, kept, strict=True)))
        it.kept_weight = 0.5 * kept[2] + 0.75 * kept[3] + kept[5]
    report = json.loads(json.dumps(build_report(run)))  # what the store holds
    assert report["iterations"][0]["rewards"] is None  # the base has no E-step
    second = report["iterations"][2]["rewards"]
    assert list(second["samples"]) == list(REWARD_BUCKETS) and second["samples"]["1"] == 80
    assert second["kept"]["(0.25,0.5]"] == 4 and second["kept_weight"] == 16.5
    md = render_markdown(report)
    assert "Reward distribution of the E-step (`em.reward: fraction_of_tests`; kept: reward >= 0.5" in md
    assert (
        "| iteration | samples | 0 | (0,0.25] | (0.25,0.5] | (0.5,0.75] | (0.75,1) | 1 | loss weight |" in md
    )
    assert "| 2 | all | 200 | 80 | 90 | 60 | 2 | 80 | – |" in md
    assert "| 2 | kept | 0 | 0 | 4 | 6 | 0 | 10 | 16.5 |" in md


# Per-problem results of a constructed run: 32 validation and 64 test problems, each checkpoint
# solving the problems with these indices.
VALIDATION = {"base": range(0, 2), "1": range(0, 10), "2": range(2, 14)}  # 2, 10, 12 of 32
TEST = {"base": range(0, 10), "1": range(0, 20), "2": range(0, 27)}  # 10, 20, 27 of 64


def _rows(prefix: str, solved: range, n: int) -> list[dict]:
    return [{"problem_id": f"{prefix}-{i:02d}", "correct": i in solved} for i in range(n)]


def _constructed() -> tuple[pb.Run, dict, dict]:
    run = pb.Run(run_id="r-000002", status=pb.RUN_STATUS_SUCCEEDED, task="arithmetic", config_yaml="{}\n")
    run.created.GetCurrentTime()
    run.finished.GetCurrentTime()
    for i, name in enumerate(("base", "1", "2")):
        it = run.iterations.add(iteration=i)
        for split, solved, n in (("validation", VALIDATION[name], 32), ("test", TEST[name], 64)):
            it.evals.add(split=split, num_problems=n, num_correct=len(solved), pass_at_1=len(solved) / n)
    run.best_iteration = choose_best_iteration(run)
    val = {name: _rows("validation", solved, 32) for name, solved in VALIDATION.items()}
    test = {name: _rows("test", solved, 64) for name, solved in TEST.items()}
    return run, test, val


def test_every_pass_at_1_of_the_report_carries_its_wilson_interval():
    run, test, val = _constructed()
    report = build_report(run, test, validation_results=val)
    assert report["ci_method"] == "wilson" and report["ci_level"] == 0.95
    assert json.loads(json.dumps(report)) == report  # report.json holds exactly this
    best = report["iterations"][2]
    # 27 of 64, by hand: z^2/n = 3.8415/64 = 0.06002; centre (0.42188 + 0.03001) / 1.06002 = 0.42630;
    # half-width 1.96 * sqrt(0.42188 * 0.57813 / 64 + 3.8415 / 64^2 / 4) / 1.06002 = 0.11760
    assert best["test_pass_at_1_ci"] == pytest.approx([0.30870, 0.54390], abs=5e-5)
    assert best["evals"][1]["pass_at_1_ci"] == best["test_pass_at_1_ci"]
    # 12 of 32 on validation: centre (0.375 + 0.06002) / 1.12005 = 0.38840, half-width 0.15906
    assert best["validation_pass_at_1_ci"] == pytest.approx([0.22934, 0.54746], abs=5e-5)
    md = render_markdown(report)
    assert "| 2 | 0.0 % | 0/0 | 0 | 37.5 % [22.9, 54.7] | 42.2 % [30.9, 54.4] |" in md
    assert "- in brackets: 95 % Wilson score intervals over each split's problems" in md


def test_the_report_says_when_the_best_iteration_is_not_distinguishable_from_the_runner_up():
    run, test, val = _constructed()
    report = build_report(run, test, validation_results=val)
    s = report["selection"]
    assert (s["chosen"], s["runner_up"]) == (2, 1)
    # validation: iteration 2 alone solves 10-13 (4 problems), iteration 1 alone 0-1 (2): the exact
    # McNemar p is 2 * (C(6,0) + C(6,1) + C(6,2)) / 2^6 = 44 / 64
    t = s["test"]
    assert (t["only_a"], t["only_b"], t["problems"]) == (4, 2, 32)
    assert t["p_value"] == pytest.approx(44 / 64) and s["distinguishable"] is False
    md = render_markdown(report)
    assert (
        "- best iteration vs the runner-up on validation: not distinguishable from iteration 1 (37.5 % vs 31.2 %)"
        in md
    )
    assert "the choice is within noise" in md
    untested = build_report(run, test)["selection"]
    assert untested["runner_up"] == 1 and untested["distinguishable"] is None
    assert "not tested: no per-problem validation results" in render_markdown(build_report(run, test))


def test_the_best_iteration_is_tested_against_the_base_on_test_problems():
    run, test, val = _constructed()
    report = build_report(run, test, validation_results=val)
    (vs_base,) = report["paired_tests"]
    # iteration 2 solves 17 test problems the base does not, the base none that 2 does not:
    # p = 2 / 2^17
    assert (vs_base["a"], vs_base["b"], vs_base["only_a"], vs_base["only_b"]) == ("2", "base", 17, 0)
    assert vs_base["p_value"] == pytest.approx(2 / 2**17) and vs_base["distinguishable"] is True
    assert vs_base["difference"] == pytest.approx(17 / 64)
    lo, hi = vs_base["difference_ci"]
    assert 0 < lo < 17 / 64 < hi < 1
    md = render_markdown(report)
    assert "- iteration 2 vs base: distinguishable; difference +26.6 points" in md
    assert "(17 solved only by iteration 2, 0 only by base), exact McNemar p < 0.001" in md
    outcomes = report["test_outcomes"]
    assert outcomes["problem_ids"][:2] == ["test-00", "test-01"]
    assert outcomes["correct"]["base"] == "1" * 10 + "0" * 54 and outcomes["problem_set"]


def test_sampled_metrics_from_rows():
    rows = [
        {"samples": [{"extracted": "5", "correct": True}, {"extracted": "6", "correct": False}]},
        {"samples": [{"extracted": "1", "correct": False}, {"extracted": "1", "correct": False}]},
    ]
    m = sampled_metrics(rows)
    assert m == {"pass@1": 0.25, "maj@1": 0.5, "pass@2": 0.5, "maj@2": 0.5}
    assert sampled_metrics([{"problem_id": "x"}]) == {}
    assert ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6]
