"""The trainer's Prometheus metrics (the shared job, store and NATS ones: `shared.telemetry`).

Per optimiser step, from the training loop's `StepReport` (rank 0's view when data-parallel).
MFU = 6 x parameters x input tokens per second / peak FLOP/s of one GPU, on CUDA only (a CPU has
no meaningful peak), from the trainer config's `peak_tflops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from shared.llm.step_report import StepReport

STEPS = Counter("restem_trainer_steps_total", "Optimiser steps taken")
TOKENS = Counter("restem_trainer_tokens_total", "Completion tokens trained on (the loss's tokens)")
INPUT_TOKENS = Counter("restem_trainer_input_tokens_total", "Non-padding input tokens processed")
TOKENS_PER_S = Gauge("restem_trainer_tokens_per_second", "Input tokens per second of the last step")
LOSS = Gauge("restem_trainer_loss", "Loss of the last step")
LEARNING_RATE = Gauge("restem_trainer_learning_rate", "Learning rate of the last step")
STEP_SECONDS = Histogram(
    "restem_trainer_step_seconds",
    "Wall time of one optimiser step",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
MFU = Gauge("restem_trainer_mfu_ratio", "Model FLOPs utilisation of the last step (CUDA only), 0-1")
GPU_MEMORY = Gauge("restem_trainer_gpu_memory_bytes", "CUDA memory allocated by the training process")
VALIDATION_REWARD = Gauge(
    "restem_trainer_validation_reward",
    "Mean validation reward after the last epoch (validation-driven stopping)",
)


def mfu(report: StepReport, peak_tflops: float) -> float:
    """6 x N x input tokens/s over the peak; 0 without a timing or a peak."""
    if report.seconds <= 0 or peak_tflops <= 0:
        return 0.0
    return 6 * report.parameters * report.input_tokens / report.seconds / (peak_tflops * 1e12)


def record(report: StepReport, *, cuda: bool, peak_tflops: float) -> None:
    STEPS.inc()
    TOKENS.inc(report.tokens)
    INPUT_TOKENS.inc(report.input_tokens)
    LOSS.set(report.loss)
    LEARNING_RATE.set(report.learning_rate)
    STEP_SECONDS.observe(report.seconds)
    if report.seconds > 0:
        TOKENS_PER_S.set(report.input_tokens / report.seconds)
    if cuda:
        MFU.set(mfu(report, peak_tflops))
        GPU_MEMORY.set(report.gpu_memory_bytes)
    if report.validation_reward is not None:
        VALIDATION_REWARD.set(report.validation_reward)
