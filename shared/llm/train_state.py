"""Resumable M-step state in a local directory: what a killed trainer needs to continue bit-for-bit.

A state directory holds:

- ``trainable.safetensors`` — every trainable parameter (all weights for full fine-tuning, only the
  adapters for LoRA: the frozen base is reloaded from the base checkpoint anyway);
- ``optimizer.pt`` — AdamW moments and the LR scheduler position (``torch.load(weights_only=True)``);
- ``rng.pt`` — the torch CPU (and CUDA) RNG states, which dropout draws from;
- ``best.safetensors`` — with validation-driven stopping, the best epoch's trainable weights so far
  (see ``early_stop``): as large as ``trainable.safetensors``;
- ``state.json`` — optimiser steps done, epochs started, tokens and losses so far, and a fingerprint
  of the training inputs (parameters + tokenised examples). A state whose fingerprint differs from the
  job's is refused (``StateMismatch``) rather than silently mixed into a different M-step.

The data order needs no file: it is a pure function of (seed, epoch) (see ``packing.epoch_steps``).
Moving the directory to durable storage (the store) is the caller's job; this module only reads and
writes files. In a data-parallel run every rank holds the same weights and optimizer state, so
rank 0's state is the whole state and every rank resumes from it (with rank 0's RNG state). A
sharded (FSDP) run gathers its weights and AdamW moments to rank 0 in the unsharded layout before
writing (``capture``) and shards them again when it resumes, so the files are the same whatever
the ``sharding`` and number of processes, and a state resumes under either. Not covered: sharded
state files (every shard written by its own rank), which would spare rank 0 holding the whole
state in host memory (12 bytes per trainable parameter) while it writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from shared.llm.distributed import DataParallel

STATE_JSON = "state.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
BEST = "best.safetensors"


class StateMismatch(ValueError):
    """A saved state belongs to other training inputs (parameters or examples) than this run's."""


@dataclass
class Progress:
    step: int = 0  # optimiser steps done
    epochs: int = 0  # epochs started
    tokens: int = 0  # completion tokens trained on
    losses: list[float] = field(default_factory=list)  # loss of every step so far
    val_rewards: list[float] = field(default_factory=list)  # validation reward after each epoch so far
    best_epoch: int = 0  # 1-based epoch with the best validation reward; 0: none yet


def trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    # named_parameters drops duplicates, so tied embeddings are saved once (safetensors refuses shared storage)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def capture(
    model: Any, optimizer: Any, dp: DataParallel | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The trainable weights (CPU) and optimizer state a state directory holds.

    Sharded runs: a collective every rank must call; None on every rank but 0.
    """
    names = trainable(model)
    if dp is not None and dp.sharded:
        from shared.llm.distributed import full_optimizer_state, full_weights

        weights, opt = full_weights(model, trainable_only=True), full_optimizer_state(model, optimizer)
        return None if dp.rank else ({k: weights[k] for k in names}, opt)
    return {k: p.detach().to("cpu") for k, p in names.items()}, optimizer.state_dict()


def save_state(
    out_dir: Path,
    state: tuple[dict[str, torch.Tensor], dict[str, Any]],
    scheduler: Any,
    progress: Progress,
    fingerprint: str,
    best: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the state files into ``out_dir`` (created; expected empty).

    ``state``: ``capture``'s (weights, optimizer state); ``best``: the best epoch's weights.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if best is not None:
        save_file({k: t.contiguous() for k, t in best.items()}, out_dir / BEST)
    weights, optimizer_state = state
    save_file({k: t.contiguous() for k, t in weights.items()}, out_dir / WEIGHTS)
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, out_dir / OPTIMIZER)
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, out_dir / RNG)
    (out_dir / STATE_JSON).write_text(json.dumps({**asdict(progress), "fingerprint": fingerprint}))


def read_progress(state_dir: Path) -> tuple[Progress, str]:
    meta = json.loads((state_dir / STATE_JSON).read_text())
    fingerprint = str(meta.pop("fingerprint", ""))
    return Progress(**meta), fingerprint


def load_state(
    state_dir: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    fingerprint: str,
    dp: DataParallel | None = None,
) -> Progress:
    """Restore model, optimizer, scheduler and RNG from ``state_dir``; the progress it had reached.

    Sharded runs: every rank checks the state alike (no collective before it is known to fit), then
    rank 0 reads the tensors and they are sharded into every rank.
    """
    progress, saved = read_progress(state_dir)
    if saved != fingerprint:
        raise StateMismatch(f"state in {state_dir} was saved for other training inputs ({saved[:12]})")
    with safe_open(state_dir / WEIGHTS, framework="pt") as f:
        names = set(f.keys())
    params = trainable(model)
    if names != set(params):
        raise StateMismatch(f"state in {state_dir} holds other parameters than the model's trainable ones")
    if dp is not None and dp.sharded:
        from shared.llm.distributed import load_full_state

        # mmap: the other ranks only need the scheduler, not 8 bytes per parameter of AdamW moments
        opt = torch.load(state_dir / OPTIMIZER, weights_only=True, map_location="cpu", mmap=True)
        rank0 = dp.rank == 0
        load_full_state(
            model,
            optimizer,
            load_file(state_dir / WEIGHTS) if rank0 else {},
            opt["optimizer"] if rank0 else {},
        )
    else:
        tensors = load_file(state_dir / WEIGHTS)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name].to(p.device, p.dtype))
        opt = torch.load(state_dir / OPTIMIZER, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(opt["optimizer"])  # moves the moments to each parameter's device
    scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(state_dir / RNG, weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return progress


def load_best(state_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights saved with a state (CPU tensors); None when it has none."""
    if state_dir is None or not (state_dir / BEST).is_file():
        return None
    return load_file(state_dir / BEST)
