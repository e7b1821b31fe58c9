"""Experiment tracking against a real MLflow server and W&B in offline mode (shared.tracking).

The coordinator's and a trainer's view of one restem run: iteration points, step curves, params,
files, a restarted coordinator that must not log an iteration twice, and a tracker that goes down
and comes back while the run goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from restem.common.v1 import common_pb2

from shared.tracking import open_tracking
from tests.fixtures.mlflow import MlflowServer
from tests.fixtures.proxy import ThreadedProxy
from tests.fixtures.wandb_log import history

pytestmark = pytest.mark.integration


def _settings(
    uri: str, wandb_dir: Path | None = None, experiment: str = "tracking-test"
) -> common_pb2.TrackingSettings:
    s = common_pb2.TrackingSettings(mlflow=common_pb2.MlflowSettings(tracking_uri=uri, experiment=experiment))
    if wandb_dir is not None:
        s.wandb.CopyFrom(common_pb2.WandbSettings(project="restem-test", mode="offline", dir=str(wandb_dir)))
    return s


def test_a_run_and_its_m_step_land_in_mlflow_and_wandb(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    settings = _settings(mlflow_server.uri, tmp_path)
    em = open_tracking(settings, run_id="run-t1", name="t1", role="em", config={"em": {"iterations": 2}})
    assert em is not None
    em.log_params({"em.iterations": "2"})
    em.log_iteration(0, {"test/pass@1": 0.25})
    em.log_iteration(1, {"test/pass@1": 0.5, "test/maj@4": 0.75, "filter/kept": 12})
    assert em.flush(60)  # the coordinator opened the run long before any M-step starts
    m1 = open_tracking(settings, run_id="run-t1", name="t1", role="m1", config={"iteration": 1})
    assert m1 is not None
    for step in range(1, 8):
        m1.log_step({"m_step_1/loss": 2.0 / step, "m_step_1/learning_rate": 1e-5 * step}, step)
    m1.close(True)
    em.log_files({"report/report.md": b"# run-t1\n", "config/run.yaml": b"em: {iterations: 2}\n"})
    assert em.flush(60)
    link = em.links["mlflow"]
    em.close(True)

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(link.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["restem.run_id"] == "run-t1"
    assert link.url == f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{link.run_id}"
    assert run.data.params["em.iterations"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(link.run_id, "test/pass_at_1")] == [
        (0, 0.25),
        (1, 0.5),
    ]
    assert client.get_metric_history(link.run_id, "test/maj_at_4")[0].value == 0.75
    loss = client.get_metric_history(link.run_id, "m_step_1/loss")  # the trainer's, in the same run
    assert [m.step for m in loss] == list(range(1, 8)) and loss[-1].value == pytest.approx(2 / 7)
    files = {a.path for a in client.list_artifacts(link.run_id, "report")}
    assert files == {"report/report.md"}

    # A restarted coordinator finds the same run and does not log iteration 1 twice.
    again = open_tracking(_settings(mlflow_server.uri), run_id="run-t1", name="t1", role="em", config={})
    assert again is not None
    again.log_iteration(1, {"test/pass@1": 0.5})
    again.log_iteration(2, {"test/pass@1": 0.625})
    assert again.flush(60) and again.links["mlflow"].run_id == link.run_id
    again.close(True)
    history_now = client.get_metric_history(link.run_id, "test/pass_at_1")
    assert [(m.step, m.value) for m in history_now] == [(0, 0.25), (1, 0.5), (2, 0.625)]

    # W&B: the coordinator's run and the M-step's, in the restem run's group
    (em_dir,) = (tmp_path / "wandb").glob("offline-run-*-run-t1")
    (m1_dir,) = (tmp_path / "wandb").glob("offline-run-*-run-t1-m1")
    rows = history(em_dir)
    assert [(r["_step"], r["test/pass@1"]) for r in rows] == [(0, 0.25), (1, 0.5)]
    assert rows[1]["test/maj@4"] == 0.75 and rows[1]["filter/kept"] == 12
    steps = history(m1_dir)
    assert [r["_step"] for r in steps] == list(range(1, 8)) and steps[-1]["m_step_1/loss"] == pytest.approx(
        2 / 7
    )


def test_a_tracker_that_is_down_warns_once_and_catches_up(
    mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(mlflow_server.uri.rsplit(":", 1)[1])
    proxy = ThreadedProxy(port)
    proxy.start()
    proxy.cut()  # the tracking server is unreachable from the start
    try:
        uri = f"http://127.0.0.1:{proxy.port}"
        caplog.set_level(logging.INFO, logger="restem.tracking")
        tracking = open_tracking(
            _settings(uri, experiment="outage"), run_id="run-down", name="d", role="em", config={}
        )
        assert tracking is not None
        for it in range(3):
            tracking.log_iteration(it, {"test/pass@1": it / 4})  # returns at once: queued for the thread
        assert tracking.flush(120)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "mlflow does not answer" in warnings[0].getMessage()
        assert "mlflow" not in tracking.links

        proxy.start()  # back: the next log opens the run and goes through
        tracking.log_iteration(3, {"test/pass@1": 0.75})
        assert tracking.flush(60) and "mlflow" in tracking.links
        assert any("answers again" in r.getMessage() for r in caplog.records)
        tracking.close(True)
        client = MlflowClient(mlflow_server.uri)
        values = client.get_metric_history(tracking.links["mlflow"].run_id, "test/pass_at_1")
        assert [(m.step, m.value) for m in values] == [(3, 0.75)]  # what was sent while down is gone
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    finally:
        proxy.close()
