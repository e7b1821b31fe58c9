"""Logs with job context, the metric catalogue and its conventions, store metering, tracking logic."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from restem.coordinator.v1 import coordinator_pb2 as pb

import services.coordinator.metrics
import services.evaluator.metrics
import services.sampler.metrics
import services.trainer.metrics  # noqa: F401  (each module registers its service's metrics)
from services.coordinator.report import build_report, render_markdown
from services.coordinator.tracking import _finished_iterations, iteration_metrics
from services.trainer.metrics import mfu
from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings
from services.verifier.metrics import SandboxCollector
from shared import telemetry
from shared.llm.training import StepReport
from shared.logs import ContextFilter, JsonFormatter, TextFormatter, job_context
from shared.runconfig import parse_run_config
from shared.store import ArtifactNotFound, LocalStore
from shared.tracking import Point, TrackerLink, Tracking, flatten, settings_of
from tests.chart_helpers import METRIC_NAMES


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.obs.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


async def test_json_lines_carry_the_job_context_into_threads_and_tasks() -> None:
    logger, out = _logger(JsonFormatter("sampler"))
    logger.info("outside")
    with job_context(run_id="run-a", iteration=2, job_id="sample.run-a.i2.s0", job_type="sample"):
        logger.info("in the handler")
        await asyncio.to_thread(logger.info, "in a worker thread")
        await asyncio.create_task(asyncio.sleep(0, logger.info("in a task")))
        with job_context(phase="verifying"):
            logger.warning("nested")
    logger.info("after")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["msg"] for d in docs] == [
        "outside",
        "in the handler",
        "in a worker thread",
        "in a task",
        "nested",
        "after",
    ]
    assert "run_id" not in docs[0] and "run_id" not in docs[-1]
    for d in docs[1:5]:
        assert (d["service"], d["run_id"], d["iteration"], d["job_id"], d["job_type"]) == (
            "sampler", "run-a", 2, "sample.run-a.i2.s0", "sample"
        )  # fmt: skip
    assert docs[4]["phase"] == "verifying" and docs[4]["level"] == "warning" and "phase" not in docs[3]


def test_text_lines_show_the_context_and_unknown_fields_are_refused() -> None:
    logger, out = _logger(TextFormatter("trainer"))
    with job_context(run_id="run-b", job_id="train.run-b.i1"):
        logger.info("step %d", 3)
    line = out.getvalue().strip()
    assert line.endswith("INFO trainer [run=run-b job=train.run-b.i1] step 3")
    with pytest.raises(ValueError, match="unknown log context fields"), job_context(token="x"):
        pass


def _registered() -> set[str]:
    """Exposition names of every restem metric registered in this process (used or not yet)."""
    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else ():
            if family.name.startswith("restem_"):
                names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_the_services_register_exactly_the_documented_catalogue() -> None:
    sandbox = {
        f.name + "_total" if f.type == "counter" else f.name
        for f in SandboxCollector(Checkers(SandboxSettings())).collect()
    }
    assert _registered() | sandbox == METRIC_NAMES


def test_metric_names_and_labels_follow_prometheus_conventions() -> None:
    for family in REGISTRY.collect():
        if not family.name.startswith("restem_"):
            continue
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name  # every histogram here times something
    for collector in list(REGISTRY._collector_to_names):
        labels = getattr(collector, "_labelnames", ())
        assert not {"run_id", "job_id", "problem_id"} & set(labels), f"unbounded label on {collector}"


def test_the_store_counts_its_requests_and_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("restem_store_bytes_total", direction="write"),
        sample("restem_store_bytes_total", direction="read"),
    )
    reads = sample("restem_store_request_seconds_count", op="read")
    errors = sample("restem_store_errors_total", op="read")
    store.put_bytes("a/b.json", b"x" * 1000)
    assert store.get_bytes("a/b.json") == b"x" * 1000
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("a/missing.json")
    assert sample("restem_store_bytes_total", direction="write") - before[0] == 1000
    assert sample("restem_store_bytes_total", direction="read") - before[1] == 1000
    assert sample("restem_store_request_seconds_count", op="read") - reads == 2
    assert sample("restem_store_errors_total", op="read") == errors  # "not found" is an answer, not an error
    with pytest.raises(OSError), telemetry.store_request("read"):
        raise OSError("disk gone")
    assert sample("restem_store_errors_total", op="read") == errors + 1


def test_mfu_is_six_n_tokens_per_second_over_the_peak() -> None:
    r = StepReport(1, 10, 1.0, 1e-5, 100, 4096, 0.5, parameters=1_000_000_000)
    assert mfu(r, 989.0) == pytest.approx(6 * 1e9 * 4096 / 0.5 / 989e12)
    assert mfu(StepReport(1, 10, 1.0, 1e-5, 1, 1, 0.0, parameters=10), 989.0) == 0.0


def test_tracking_config_is_checked_and_flows_into_the_job_message() -> None:
    cfg = parse_run_config(
        "tracking:\n  mlflow: {tracking_uri: 'http://mlflow:5000/', experiment: gsm8k}\n"
        "  wandb: {project: restem, mode: offline, dir: /tmp/wandb}\n"
    )
    s = settings_of(cfg.tracking)
    assert (s.mlflow.tracking_uri, s.mlflow.experiment) == ("http://mlflow:5000", "gsm8k")
    assert (s.wandb.project, s.wandb.mode, s.wandb.dir, s.wandb.entity) == (
        "restem",
        "offline",
        "/tmp/wandb",
        "",
    )
    assert not settings_of(parse_run_config("{}").tracking).HasField("mlflow")
    with pytest.raises(Exception, match=r"tracking_uri.*must be an http\(s\):// tracking server"):
        parse_run_config("tracking: {mlflow: {tracking_uri: ./mlruns}}")
    with pytest.raises(Exception, match=r"tracking\.wandb\.mode"):
        parse_run_config("tracking: {wandb: {project: p, mode: sometimes}}")
    with pytest.raises(ValidationError):
        type(cfg.tracking)(mlflow={"experiment": "x"})  # the server is required
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1]}) == {"a.b": "1", "a.c.d": "x", "e": "[1]"}


def _run_with_iterations() -> pb.Run:
    run = pb.Run(run_id="r", status=pb.RUN_STATUS_RUNNING, iteration=1)
    base = run.iterations.add(iteration=0, seconds=3.0)
    base.evals.add(
        split="test", pass_at_1=0.25, num_problems=8, metrics={"pass@4": 0.5, "maj@4": 0.375, "pass@1": 0.3}
    )
    one = run.iterations.add(iteration=1, samples=64, correct_samples=16, train_pass_rate=0.25, kept=12)
    one.train.CopyFrom(pb.TrainSummary(steps=5, tokens=900, loss_last=0.5))
    one.phase_seconds["sampling"] = 12.5
    return run


def test_an_iteration_is_logged_once_its_evaluations_are_done() -> None:
    run = _run_with_iterations()
    assert [it.iteration for it in _finished_iterations(run)] == [0]  # iteration 1 is still running
    m = iteration_metrics(run.iterations[0])
    assert m == {
        "test/pass@1": 0.25, "test/problems": 8.0, "test/sampled/pass@4": 0.5, "test/sampled/maj@4": 0.375,
        "test/sampled/pass@1": 0.3,
        "time/iteration_seconds": 3.0,
    }  # fmt: skip
    run.iterations[1].evals.add(split="test", pass_at_1=0.5, num_problems=8)
    run.status = pb.RUN_STATUS_SUCCEEDED
    assert [it.iteration for it in _finished_iterations(run)] == [0, 1]
    one = iteration_metrics(run.iterations[1])
    assert one["e_step/samples"] == 64 and one["filter/kept"] == 12 and one["m_step/steps"] == 5
    assert one["time/sampling_seconds"] == 12.5 and one["e_step/train_pass_rate"] == 0.25


def test_the_report_names_the_tracker_runs() -> None:
    run = _run_with_iterations()
    links = [
        {
            "tracker": "mlflow",
            "run_id": "abc",
            "url": "http://mlflow:5000/#/experiments/1/runs/abc",
            "location": "",
        },
        {"tracker": "wandb", "run_id": "r", "url": "", "location": "/data/wandb/offline-run-x-r"},
    ]
    report = build_report(run, tracking=links)
    assert report["tracking"] == links
    md = render_markdown(report)
    assert "- tracked in mlflow: run `abc` — http://mlflow:5000/#/experiments/1/runs/abc" in md
    assert "- tracked in wandb: run `r` — offline, in /data/wandb/offline-run-x-r" in md


class _Recorder:
    """A tracker that records calls; `fail` makes its next calls raise (a server that is down)."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = 0
        self.gate = threading.Event()
        self.gate.set()

    def _record(self, op: str, arg: Any) -> None:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("refused")
        self.calls.append((op, arg))

    def open(self) -> TrackerLink:
        self._record("open", None)
        return TrackerLink("recorder", "1", "")

    def log_params(self, params: Mapping[str, str]) -> None:
        self._record("params", dict(params))

    def log_iteration(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self._record("iteration", iteration)

    def log_steps(self, points: list[Point]) -> None:
        self._record("steps", [step for _, step in points])

    def log_files(self, files: Mapping[str, bytes]) -> None:
        self._record("files", sorted(files))

    def close(self, succeeded: bool) -> None:
        self._record("close", succeeded)


def test_tracking_keeps_the_order_and_batches_queued_steps() -> None:
    rec = _Recorder()
    rec.gate.clear()  # the tracker is slow: calls queue up behind the first one
    tracking = Tracking([rec])
    tracking.log_params({"a": "1"})
    for step in range(1, 6):
        tracking.log_step({"loss": 1.0 / step}, step)
    tracking.log_iteration(1, {"test/pass@1": 0.5})
    tracking.log_step({"loss": 0.1}, 6)
    rec.gate.set()
    tracking.close(True)
    assert rec.calls == [
        ("open", None), ("params", {"a": "1"}), ("steps", [1, 2, 3, 4, 5]), ("iteration", 1), ("steps", [6]),
        ("close", True),
    ]  # fmt: skip


def test_a_failing_tracker_is_retried_then_skipped_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("shared.tracking.RETRY_S", (0.01, 0.01))
    rec = _Recorder()
    rec.fail = 1  # one refused call: the retry gets through, nobody is warned
    tracking = Tracking([rec])
    tracking.log_iteration(0, {})
    assert tracking.flush(10) and ("iteration", 0) in rec.calls
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    rec.fail = 100  # down for good: each call tries, the run goes on, one warning in all
    for it in (1, 2, 3):
        tracking.log_iteration(it, {})
    assert tracking.flush(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "recorder does not answer" in warnings[0]
    rec.fail = 0
    tracking.log_iteration(4, {})
    tracking.close(True)
    assert [c for c in rec.calls if c[0] == "iteration"] == [("iteration", 0), ("iteration", 4)]


def test_docs_list_every_metric() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"`(restem_[a-z_]+)`", page))
    assert documented == METRIC_NAMES, (METRIC_NAMES - documented, documented - METRIC_NAMES)
