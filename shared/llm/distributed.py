"""Data parallelism of one M-step over the processes torchrun starts (one per GPU, or per CPU slot).

Every rank holds the whole data order (a pure function of the seed, see ``packing.epoch_steps``);
each optimiser step's examples are dealt out longest first, round robin (``shard``), so every rank
gets a similar number of tokens. Each rank divides its loss by the denominator of the WHOLE step
(see ``training``), so the per-rank gradients SUM to exactly the single-process gradient. Two ways
to hold the weights (``sharding``, the trainer's setting):

- ``none``: every rank holds the full fp32 weights and AdamW state (16 bytes per parameter: up to
  ~3B parameters on 80 GB GPUs); ``all_reduce_grads`` sums the gradients (in ~64 MB buckets) after
  the backward passes, and clipping and the optimiser step then run identically on every rank. One
  collective per step: the fastest way for the sub-billion models this project trains by default.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, ``shard_model``): each decoder layer is
  one unit and the rest (embeddings, final norm, output head) the root; every rank keeps 1/world of
  the weights, gradients and AdamW state, all-gathers a unit's weights for its forward and backward,
  and reduce-scatters its gradients (summed, not averaged) after each backward. On CUDA the gathered
  weights are bf16 for compute while reductions and the fp32 master weights stay fp32
  (``MixedPrecisionPolicy``); CPU (gloo) stays fp32. Clipping takes the norm over all shards; AdamW
  steps the sharded (DTensor) parameters. Step states and the final checkpoint are gathered to
  rank 0 in the unsharded layout (``full_weights``, ``full_optimizer_state``, ``consolidate``), so
  a state saved with one setting resumes with the other, and the checkpoint is the same
  safetensors as ever.

Why no ``DistributedDataParallel`` wrapper: the loss calls the decoder and the output head directly
(``loss.split_head``, logits on completion positions only), which bypasses ``DDP.forward`` and its
reducer. FSDP also gathers weights in forward hooks, so the sharded root is a ``loss.TargetLogits``
wrapper whose forward makes those two calls. Packed shards give ranks different numbers of
micro-batches (a rank may get no example of a short last step); with ``none`` that needs nothing,
with ``fsdp`` every forward/backward is a collective, so a rank with fewer micro-batches runs
zero-weight copies of the step's shortest example until it has as many as the busiest rank
(``micro_batches``).

Gradient accumulation under FSDP reduce-scatters after EVERY micro-batch and accumulates sharded
gradients. Skipping the sync until the last micro-batch (``set_requires_gradient_sync(False)``)
would keep every unit's UNSHARDED fp32 gradient alive between micro-batches, i.e. 4 bytes per
parameter of the whole model on every rank: the memory FSDP exists to save, for at most a third
of the communication (the two all-gathers per micro-batch happen either way).

Decoding during training (validation-driven stopping) under ``fsdp``: every rank decodes its own
share of the validation prompts, so the ranks run different numbers of forward passes, while FSDP
all-gathers a unit's weights in its forward pre-hook, a collective that would then not match across
ranks (a deadlock). ``unsharded`` therefore gathers every unit's weights on every rank ONCE, keeps
them through the forwards (``set_reshard_after_forward(False)``), and reshards after the block; the
forwards inside it communicate nothing. Facts of FSDP2 (torch 2.13, ``fsdp/_fully_shard``) this
rests on: ``FSDPParamGroup.unshard`` returns at once when the group is already unsharded and
``wait_for_unshard`` when no all-gather is pending, so the pre-forward hook of a gathered unit issues
no collective; its ``post_forward`` reshards only when ``reshard_after_forward`` is on; under
``inference_mode`` no backward hooks are registered; ``reset_iter_state`` on the root reshards
every unit locally and forgets the decoding forwards that ``post_forward`` recorded for backward
prefetching (left there, the next backward would prefetch a unit with a stray all-gather). The
sharded fp32 master weights are never written, so training continues exactly as without validation;
the best epoch's weights are gathered from them, not from the bf16 copy (``early_stop``).
The cost: the whole model on every rank while validation runs, in ``param_dtype`` (bf16 on CUDA:
2 bytes per parameter, fp32 on CPU), on top of the sharded weights and AdamW state (12/world bytes
per parameter) and the decoding's KV cache: on 80 GB GPUs roughly up to 8B parameters with 2 GPUs
and 20B with 8. Beyond that, validation runs out of memory: drop the run's validation-driven stopping
(``training.validation_stopping: false``). The greedy answers come from the bf16 weights on CUDA
(as FSDP's training forward does), so they may differ slightly from ``none``'s fp32 decoding.
Alternatives not taken: a plain unsharded copy of the model for decoding (the same memory plus a
second model and a weight copy per validation), or decoding in lockstep (every rank the same number
of forwards, each all-gathering every unit: a collective per generated token and layer).

Not covered: loading the base weights on rank 0 only (every rank reads the checkpoint into host
memory once, then keeps only its shard on the device), sharded (DCP) state files, CPU offload and
tensor/pipeline parallelism.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from shared.infra import Sharding
from shared.llm.loss import TargetLogits, split_head
from shared.llm.packing import micro_batches

if TYPE_CHECKING:
    from shared.params import TrainParams

BUCKET_ELEMENTS = 1 << 24  # 64 MB of fp32 gradients per all-reduce call


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int
    sharding: Sharding = "none"

    @property
    def sharded(self) -> bool:
        return self.sharding == "fsdp"

    def shard(self, indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """This rank's examples of one step: longest first, dealt round robin."""
        ordered = sorted(indices, key=lambda i: (-lengths[i], i))
        return ordered[self.rank :: self.world]

    def micro_batches(
        self, indices: Sequence[int], lengths: Sequence[int], size: int
    ) -> tuple[list[list[int]], int]:
        """This rank's micro-batches of one step, and the most micro-batches any rank has in it.

        Every rank knows the whole step, so the count needs no communication: rank 0 is dealt the
        most examples (ceil(n / world)).
        """
        mine = self.shard(indices, lengths)
        most = math.ceil(math.ceil(len(indices) / self.world) / size)
        return (micro_batches(mine, lengths, size) if mine else []), most

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


def shard_model(model: Any, device: str) -> torch.nn.Module:
    """Shard ``model`` (plain or LoRA-wrapped) in place with FSDP2; returns the module to call for the loss.

    One unit per decoder layer (the model's ``_no_split_modules`` classes), then the root: a
    ``TargetLogits`` around the model when ``split_head`` accepts it, else the model itself.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(
            f"sharding: fsdp cannot find the decoder layers of {type(inner).__name__} (no _no_split_modules); "
            "set the trainer's sharding: none"
        )
    policy = MixedPrecisionPolicy()  # CPU: fp32 throughout
    if device.startswith("cuda"):
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    root = TargetLogits(model) if split_head(model) is not None else model
    fully_shard(root, mp_policy=policy)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            # Each rank's loss already carries the whole step's denominator: SUM the gradients (the
            # default divides by the world size), and only with SUM (gloo has no PREMUL_SUM).
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return root


@contextlib.contextmanager
def unsharded(root: torch.nn.Module) -> Iterator[None]:
    """Collective on entry: the whole weights of every FSDP unit under ``root`` (``shard_model``'s
    result) on every rank until the block ends, so the forwards inside it issue NO collective and the
    ranks may run different numbers of them (see the module docstring). Resharding on exit is local.

    Call it between optimiser steps, after the first one (FSDP initialises the root lazily in its
    first forward), and only for forwards without gradients. Restores ``shard_model``'s settings:
    the layers reshard after their forward, the root does not (FSDP's default for a root).
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    try:
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:  # the same units in the same order on every rank: the all-gathers match
            unit.unshard()
        yield
    finally:
        cast(FSDPModule, root).reset_iter_state()  # reshard all, forget the forwards' prefetch order
        for unit in units:
            unit.set_reshard_after_forward(unit is not root, recurse=False)


def clip_grad_norm_(params: Sequence[torch.nn.Parameter], max_norm: float) -> None:
    """Clip gradients to a total norm of ``max_norm``, the norm taken over every shard of every gradient."""
    from torch.distributed.tensor import DTensor

    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(total, DTensor):  # each rank's partial norm: combine them
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


def _full_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Collective: ``model.state_dict()`` unsharded, on rank 0's CPU ({} on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    opts = _full_options(cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=opts)  # type: ignore[return-value]


def full_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the trainable parameters unsharded on rank 0's CPU ({} elsewhere), named as
    ``named_parameters`` names them (tied weights once): the layout of the state files."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    weights = full_weights(model, trainable_only=True)
    return {k: weights[k] for k in names} if weights else {}


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in the order its ``state_dict`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the optimizer's state unsharded on rank 0's CPU ({} elsewhere), numbered like
    ``optimizer.state_dict()`` of the unsharded model (so either kind of run loads it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state: dict[str, Any] = get_optimizer_state_dict(
        model, optimizer, options=_full_options(cpu_offload=True)
    )
    if dist.get_rank() != 0:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[name]: s for name, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Collective: shard rank 0's unsharded ``weights`` (a subset of the parameters) and optimizer state
    (``full_optimizer_state``'s layout) into every rank; the other ranks pass empty dicts."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    load_full_weights(model, weights)
    by_name: dict[str, Any] = {}
    if optimizer_state:
        names = _param_names(model, optimizer)
        by_name = {
            "state": {names[i]: s for i, s in optimizer_state["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]
            ],
        }
    opts = _full_options(broadcast_from_rank0=True, strict=False)
    set_optimizer_state_dict(model, optimizer, by_name, options=opts)


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Collective: shard rank 0's unsharded ``weights`` (a subset of the parameters) into every rank;
    the other ranks pass an empty dict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    opts = _full_options(broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, cast(dict[str, Any], weights), options=opts)


def consolidate(model: Any, params: TrainParams, dp: DataParallel) -> Any:
    """Collective: the model a sharded run trained, as a plain CPU model on rank 0 (LoRA merged), for
    ``checkpoint.save_checkpoint``; None on the other ranks.

    Rank 0 gathers every weight (LoRA: the adapters and their frozen base layers) into host memory, 4
    bytes per parameter, and moves them into an empty copy of the architecture (with the same LoRA
    layers, so the names match) built on the meta device: no second copy of the weights is allocated.
    For saving only: buffers that are not saved (rotary frequencies) stay on the meta device.
    """
    from transformers import AutoModelForCausalLM

    from shared.llm.lora import apply_lora, merged

    weights = full_weights(model)
    if dp.rank != 0:
        return None
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    target = plain
    if params.method == "lora":
        target = apply_lora(
            plain,
            r=params.lora_r,
            alpha=params.lora_alpha,
            dropout=0.0,
            target_modules=params.lora_target_modules,
        )
    plain.load_state_dict(weights, strict=True, assign=True)
    plain.tie_weights()  # assign replaced the tied parameter objects: tie the output head to the embeddings again
    plain.generation_config = model.generation_config
    merged(target)  # in place: plain's LoRA layers become merged Linear ones
    return plain


def init_from_env(device: str, sharding: Sharding = "none") -> tuple[DataParallel, str]:
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
    return DataParallel(rank=rank, world=world, sharding=sharding), device
