"""Validation-driven stopping of an M-step (the paper's Algorithm 1: train while the validation reward improves).

After every epoch the training loop measures the validation reward (``training.Hooks.validate``) and
hands it to ``EarlyStop.observe``. A strictly better reward than every earlier epoch's makes that epoch
the best one and copies the trainable weights to CPU memory (all weights for full fine-tuning, the
adapters for LoRA); after ``patience`` epochs without a better reward training stops. At the end
``restore`` puts the best epoch's weights back, so the checkpoint is the best epoch's, not the last.

Ties keep the earlier epoch (fewer updates away from the base). There is no "epoch 0" (the base
itself): the M-step always produces a fine-tuned model, and choosing between the base and the
iterations is the coordinator's job (best iteration on validation). The rewards and the best epoch
live in the step state's ``Progress`` and the best weights in the state directory (``train_state``),
so a resumed M-step stops at the same epoch with the same weights.

Sharded weights (``dp.sharding`` ``fsdp``): the best epoch's weights are gathered from the fp32 master
shards to rank 0's CPU in the unsharded layout of the state files (``distributed.full_trainable``, a
collective every rank joins: they all see the same summed reward, so they decide alike), and
``restore`` shards them back into every rank. Rank 0's host then holds 4 bytes per trainable
parameter, as it does while writing a step state; the other ranks hold nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from shared.llm.train_state import Progress, trainable

if TYPE_CHECKING:
    from shared.llm.distributed import DataParallel

log = logging.getLogger("shared.llm.early_stop")


class EarlyStop:
    def __init__(
        self,
        patience: int,
        model: Any,
        best: dict[str, torch.Tensor] | None = None,
        dp: DataParallel | None = None,
    ) -> None:
        self.patience = patience
        self.model = model
        # CPU copy of the best epoch's trainable weights; None until one is chosen ({} on a sharded
        # run's ranks but 0)
        self.best = best
        self.sharded = dp is not None and dp.sharded

    def observe(self, progress: Progress, reward: float) -> bool:
        """Record the reward of the epoch just finished; True when training should stop now."""
        progress.val_rewards.append(float(reward))
        epoch = len(progress.val_rewards)
        if progress.best_epoch == 0 or reward > progress.val_rewards[progress.best_epoch - 1]:
            progress.best_epoch = epoch
            self.best = self._snapshot()
        log.info(
            "validation reward after epoch %d: %.4f (best %.4f, epoch %d)",
            epoch, reward, progress.val_rewards[progress.best_epoch - 1], progress.best_epoch,
        )  # fmt: skip
        return epoch - progress.best_epoch >= self.patience

    def restore(self, progress: Progress) -> None:
        """Load the best epoch's weights into the model when a later epoch was validated after it.

        Sharded: a collective, decided on ``progress`` alone (the same on every rank).
        """
        if progress.best_epoch in (0, len(progress.val_rewards)):
            return
        if self.sharded:
            from shared.llm.distributed import load_full_weights

            load_full_weights(self.model, self.best or {})
        elif self.best is not None:
            with torch.no_grad():
                for name, p in trainable(self.model).items():
                    p.copy_(self.best[name].to(p.device, p.dtype))
        log.info(
            "kept the weights of epoch %d (of %d validated)", progress.best_epoch, len(progress.val_rewards)
        )

    def _snapshot(self) -> dict[str, torch.Tensor]:
        if self.sharded:  # not the gathered compute copy (bf16 on CUDA): the fp32 master weights
            from shared.llm.distributed import full_trainable

            return full_trainable(self.model)
        return {k: p.detach().to("cpu", copy=True) for k, p in trainable(self.model).items()}
