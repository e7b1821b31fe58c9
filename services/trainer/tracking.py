"""An M-step's per-step metrics on the run's experiment trackers (`shared.tracking`).

Keys are prefixed by the M-step (`m_step_2/loss`, `sft/loss` for the SFT baseline), so MLflow's one
run per restem run shows each iteration's curve apart; step = the optimiser step. The MLflow run is
the coordinator's (found by its tag); W&B gets a run of its own in the restem run's group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.json_format import MessageToDict
from restem.events.v1 import events_pb2 as ev

from shared.tracking import Tracking, open_tracking

if TYPE_CHECKING:
    from shared.llm.step_report import StepReport


class MStepTracking:
    """Per-step loss, learning rate, tokens and validation reward of one train job (no-op untracked)."""

    def __init__(self, job: ev.TrainJob) -> None:
        sft = job.variant == "sft"
        self.prefix = "sft" if sft else f"m_step_{job.iteration}"
        config = {
            "iteration": job.iteration,
            "variant": job.variant or "em",
            **MessageToDict(job.params, preserving_proto_field_name=True),
        }
        self.tracking: Tracking | None = open_tracking(
            job.tracking,
            run_id=job.run_id,
            name=job.run_id,
            role="sft" if sft else f"m{job.iteration}",
            config=config,
        )
        self.tokens = 0

    def log_step(self, report: StepReport) -> None:
        if self.tracking is None:
            return
        self.tokens += report.tokens
        p = self.prefix
        metrics = {
            f"{p}/loss": report.loss,
            f"{p}/learning_rate": report.learning_rate,
            f"{p}/tokens": self.tokens,
        }
        if report.seconds > 0:
            metrics[f"{p}/tokens_per_second"] = report.input_tokens / report.seconds
        if report.validation_reward is not None:
            metrics[f"{p}/validation_reward"] = report.validation_reward
        self.tracking.log_step(metrics, report.step)

    def close(self, succeeded: bool) -> None:
        """Send what is queued and finish this M-step's tracker runs (the MLflow run stays open)."""
        if self.tracking is not None:
            self.tracking.close(succeeded)
