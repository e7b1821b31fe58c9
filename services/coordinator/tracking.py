"""The coordinator's side of experiment tracking: per-iteration metrics, the config, the report.

A run's trackers (`shared.tracking`) open at its first state change seen by this coordinator. Each
iteration is logged once it is over (its evaluations done: the run moved on or ended), with
step = iteration; the SFT baseline's evaluations (`sft/...`) with the last one. At the end the report files
go up as artifacts and the tracker run is closed. A restarted coordinator finds the same MLflow
run by its tag and skips the iterations it holds (`MlflowBackend.logged_through`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.runconfig import RunConfig
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tracking import Tracking, enabled, flatten, open_tracking, settings_of

from . import core

log = logging.getLogger("restem.coordinator.tracking")


def eval_metrics(evals: Any, prefix: str = "") -> dict[str, float]:
    """`test/pass@1` (greedy), `test/sampled/pass@4`, `test/sampled/maj@4`, ... of a checkpoint's
    evaluations (`sampled/`: from `evaluation.samples` completions at the evaluation temperature)."""
    out: dict[str, float] = {}
    for e in evals:
        out[f"{prefix}{e.split}/pass@1"] = e.pass_at_1
        out[f"{prefix}{e.split}/problems"] = float(e.num_problems)
        for name, value in e.metrics.items():
            out[f"{prefix}{e.split}/sampled/{name}"] = value
    return out


def iteration_metrics(it: pb.Iteration) -> dict[str, float]:
    """What a finished iteration logs (step = its number; iteration 0 is the base model)."""
    out = eval_metrics(it.evals)
    if it.iteration > 0:
        out |= {
            "e_step/samples": float(it.samples),
            "e_step/correct_samples": float(it.correct_samples),
            "e_step/train_pass_rate": it.train_pass_rate,
            "e_step/problems_solved": float(it.problems_solved),
            "e_step/tokens_generated": float(it.tokens_generated),
            "filter/kept": float(it.kept),
        }
        if it.HasField("train") and not it.train.skipped:
            t = it.train
            out |= {
                "m_step/steps": float(t.steps),
                "m_step/tokens": float(t.tokens),
                "m_step/loss_last": t.loss_last,
            }
    out |= {f"time/{phase}_seconds": s for phase, s in it.phase_seconds.items()}
    out["time/iteration_seconds"] = it.seconds
    return out


def _finished_iterations(run: pb.Run) -> list[pb.Iteration]:
    over = run.status in core.FINISHED
    return [it for it in run.iterations if it.evals and (over or it.iteration < run.iteration)]


class RunTrackers:
    """The open trackers of the runs this coordinator serves, and what each has been sent."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._open: dict[str, Tracking] = {}
        self._sent: dict[str, int] = {}  # the last iteration sent per run

    def links(self, run_id: str, timeout_s: float = 30.0) -> list[dict[str, str]]:
        """The tracker runs of `run_id` (waits for their opening, up to `timeout_s`), for the report."""
        tracking = self._open.get(run_id)
        if tracking is None:
            return []
        tracking.flush(timeout_s)
        return [
            {"tracker": link.tracker, "run_id": link.run_id, "url": link.url, "location": link.location}
            for link in tracking.links.values()
        ]

    async def observe(self, run: pb.Run, cfg: RunConfig) -> None:
        """Send what changed since the last call: finished iterations, and the end of the run."""
        settings = settings_of(cfg.tracking)
        if not enabled(settings):
            return
        tracking = self._open.get(run.run_id)
        if tracking is None:
            if run.status in core.FINISHED and run.run_id not in self._sent:
                return  # ended before this coordinator saw it (a redelivered event after the end)
            tracking = self._start(run, cfg, settings)
        finished = _finished_iterations(run)
        for it in finished:
            if it.iteration > self._sent.get(run.run_id, -1):
                metrics = iteration_metrics(it)
                if it is finished[-1] and run.status in core.FINISHED:
                    metrics |= eval_metrics(run.sft.evals, "sft/")  # the baseline, beside the last iteration
                tracking.log_iteration(it.iteration, metrics)
                self._sent[run.run_id] = it.iteration
        if run.status in core.FINISHED and run.report_key:
            await self._finish(run, tracking)

    def _start(self, run: pb.Run, cfg: RunConfig, settings: Any) -> Tracking:
        config = cfg.model_dump(mode="json")
        tracking = open_tracking(
            settings, run_id=run.run_id, name=run.name or run.run_id, role="em", config=config
        )
        assert tracking is not None  # settings are enabled
        tracking.log_params({**flatten(config), "restem.run_id": run.run_id})
        tracking.log_files({"config/run.yaml": run.config_yaml.encode()})
        self._open[run.run_id] = tracking
        return tracking

    async def _finish(self, run: pb.Run, tracking: Tracking) -> None:
        files = await asyncio.to_thread(self._report_files, run)
        tracking.log_files({f"report/{name}": data for name, data in files.items()})
        del self._open[run.run_id]
        await asyncio.to_thread(tracking.close, run.status == pb.RUN_STATUS_SUCCEEDED)
        log.info("run %s: tracking closed", run.run_id)

    def _report_files(self, run: pb.Run) -> dict[str, bytes]:
        try:
            report = json.loads(self.store.get_bytes(run.report_key))
        except ArtifactNotFound:
            return {}
        names = [*report.get("files", []), "report.json"]
        return {name: self.store.get_bytes(keys.report_key(run.run_id, name)) for name in names}
