"""Optimiser and learning-rate schedule of the M-step.

AdamW over the trainable parameters (LoRA: only the adapters), with no weight decay on 1-D parameters
(norm gains, biases). Schedule: linear warmup over ``warmup_ratio`` of the steps, then constant, or a
cosine / linear decay to ``learning_rate * min_lr_ratio`` at the last step. Not covered: other
optimisers, per-layer learning rates, restarts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from shared.params import TrainParams


def make_optimizer(model: Any, params: TrainParams, device: str) -> torch.optim.Optimizer:
    # Norm gains and biases are not decayed (standard practice: decaying them only hurts).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters on CUDA (the default multi-tensor path is slower there)
    return torch.optim.AdamW(groups, lr=params.learning_rate, fused=device.startswith("cuda") or None)


def lr_factor(step: int, total: int, params: TrainParams) -> float:
    """Multiplier of the learning rate for the 0-based ``step`` of ``total``: warmup, then the schedule."""
    warmup = int(total * params.warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    if params.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    cosine = params.lr_schedule == "cosine"
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cosine else 1.0 - progress
    return params.min_lr_ratio + (1.0 - params.min_lr_ratio) * shape
