"""Data parallelism of one M-step over the processes torchrun starts (one per GPU, or per CPU slot).

Every rank holds the whole model and the whole data order (a pure function of the seed, see
``packing.epoch_steps``); each optimiser step's examples are dealt out longest first, round robin
(``shard``), so every rank gets a similar number of tokens. Each rank divides its loss by the
denominator of the WHOLE step (see ``training``), so the per-rank gradients SUM to exactly the
single-process gradient; ``all_reduce_grads`` sums them (in ~64 MB buckets) before clipping and the
optimiser step, which then run identically on every rank and keep the weights identical.

Why an explicit all-reduce rather than the ``DistributedDataParallel`` wrapper or FSDP ``fully_shard``:
the loss calls the decoder and the output head directly (``loss.split_head``, logits on completion
positions only), which bypasses ``DDP.forward`` and so its reducer; and packed shards give ranks
different numbers of micro-batches (a rank may even get no example of a short last step), which DDP's
per-backward hooks cannot express. The explicit sum works the same on gloo (CPU) and NCCL (CUDA); it
does not overlap communication with the backward pass, which costs little at the sub-billion sizes
this project trains. FSDP (sharded weights and optimizer state) is what 7B+ models need and is not
covered: every rank here holds the full fp32 weights and AdamW state (16 bytes per parameter).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_ELEMENTS = 1 << 24  # 64 MB of fp32 gradients per all-reduce call


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int

    def shard(self, indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """This rank's examples of one step: longest first, dealt round robin."""
        ordered = sorted(indices, key=lambda i: (-lengths[i], i))
        return ordered[self.rank :: self.world]

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks (a rank without a gradient contributes zeros)."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            bucket.append(g)
            size += g.numel()
            if size >= BUCKET_ELEMENTS:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)

    def sum(self, values: Sequence[float], device: str) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]


def _reduce_bucket(bucket: list[torch.Tensor]) -> None:
    flat = _flatten_dense_tensors(bucket)
    dist.all_reduce(flat)
    for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
        g.copy_(reduced)


def init_from_env(device: str) -> tuple[DataParallel, str]:
    """Join the process group torchrun described in the environment; (this rank's role, its device).

    NCCL with one GPU per local rank on CUDA, gloo on CPU.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return DataParallel(rank=rank, world=world), device
