"""What the training loop reports after each optimiser step (no torch import: the trainer service,
its metrics and the torchrun relay read it without loading the model stack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepReport:
    """What the loop reports after each optimiser step (``Hooks.on_step``); rank 0's view when data-parallel."""

    step: int
    total: int  # steps planned
    loss: float  # the step's loss (over every rank's examples)
    learning_rate: float  # the rate this step used
    tokens: int  # completion tokens of this process's examples in the step
    input_tokens: int  # non-padding input tokens of this process's examples
    seconds: float  # wall time of the step (forward, backward, optimiser; not validation)
    validation_reward: float | None = None  # set on the steps that end an epoch with validation on
    parameters: int = 0  # the model's parameters (for MFU: 6 x parameters x input tokens per second)
    gpu_memory_bytes: int = 0  # CUDA memory allocated by this process after the step (0 on CPU)
