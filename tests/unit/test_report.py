import struct

import yaml
from restem.coordinator.v1 import coordinator_pb2 as pb

from services.coordinator.core import choose_best_iteration
from services.coordinator.plots import render_plots
from services.coordinator.report import build_report, render_markdown
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
    assert "| 2 | 40.0 % | 0/0 | 20 | 60.0 % | 55.0 % |" in md
    assert "| 2 | test | 55.0 % | 100.0 % | 55.0 % |" in md
    assert "![pass_at_k.png](pass_at_k.png)" in md
    assert report["best_iteration"] == 2


def test_sampled_metrics_from_rows():
    rows = [
        {"samples": [{"extracted": "5", "correct": True}, {"extracted": "6", "correct": False}]},
        {"samples": [{"extracted": "1", "correct": False}, {"extracted": "1", "correct": False}]},
    ]
    m = sampled_metrics(rows)
    assert m == {"pass@1": 0.25, "maj@1": 0.5, "pass@2": 0.5, "maj@2": 0.5}
    assert sampled_metrics([{"problem_id": "x"}]) == {}
    assert ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6]
