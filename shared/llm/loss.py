"""The M-step loss: reward-weighted next-token NLL on completion tokens of padded or packed batches.

Every batch carries ``token_weights`` (the sample's reward weight on each of its positions) and
``token_counts`` (its number of completion tokens); ``token_loss_weights`` turns them into the weight
of each label position for ``token`` (w_i) or ``sample`` (w_i / n_i) normalisation, and the loss is
``sum(weight * nll) / denominator``. With the denominator of a whole optimiser step (see
``training``), micro-batches and packed rows add up to exactly the big-batch loss.

Logits on target positions only: for models whose logits are just ``lm_head(final hidden state)``
(``HEAD_ONLY_MODEL_TYPES``: no logit scaling or soft-capping), the decoder runs once and the output
head is applied only to the positions that predict a completion token. Prompt positions (often most
of a sequence) then cost no vocab-sized matmul and no B x T x V logits tensor is ever built; the
two calls are one module call (``TargetLogits``), which FSDP needs to gather their weights. Other
models go through their own forward with ``logits_to_keep`` (the head still runs on every position
after the earliest completion token of the batch).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from shared.llm.packing import IGNORE

# model_type values whose CausalLM forward computes logits = lm_head(hidden) and nothing more
HEAD_ONLY_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def token_loss_weights(batch: dict[str, torch.Tensor], normalisation: str) -> torch.Tensor:
    """Per-position loss weight (aligned with ``labels``): w_i (token) or w_i / n_i (sample); 0 off-label."""
    if normalisation not in ("token", "sample"):
        raise ValueError(f"unknown loss normalisation {normalisation!r}")
    w = batch["token_weights"]
    if normalisation == "sample":
        w = w / batch["token_counts"].clamp(min=1)
    return torch.where(batch["labels"] != IGNORE, w, torch.zeros_like(w))


def _weighted_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t weights[t+1] * nll(labels[t+1] | logits[t]); -100 labels contribute nothing."""
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none"
    )
    return (weights[:, 1:].to(nll.dtype) * nll).sum()


def weighted_nll(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, normalisation: str = "token"
) -> torch.Tensor:
    """Weighted next-token NLL of padded rows (one sample per row, weight per row)."""
    counts = (labels != IGNORE).sum(dim=1, keepdim=True).to(torch.float32)
    batch = {
        "labels": labels,
        "token_weights": weights[:, None].expand(labels.shape).to(torch.float32),
        "token_counts": counts.expand(labels.shape),
    }
    tw = token_loss_weights(batch, normalisation)
    # clamp: all-zero weights give loss 0 (and zero gradient) instead of 0/0
    return _weighted_sum(logits, labels, tw) / tw[:, 1:].sum().clamp(min=1e-8)


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (fp32 master weights stay fp32); nothing on CPU, which trains in fp32."""
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _inner(model: Any) -> Any:
    # A peft wrapper forwards to the transformers model (whose modules hold the LoRA layers).
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def split_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output head) when logits are exactly ``head(decoder(...).last_hidden_state)``; else None."""
    inner = _inner(model)
    if getattr(getattr(inner, "config", None), "model_type", None) not in HEAD_ONLY_MODEL_TYPES:
        return None
    get_decoder, head = getattr(inner, "get_decoder", None), inner.get_output_embeddings()
    if not callable(get_decoder) or head is None:
        return None
    return get_decoder(), head


class TargetLogits(torch.nn.Module):
    """``head(decoder(**inputs).last_hidden_state)`` at the flat positions ``flat`` only, as ONE module call.

    ``batch_loss`` wraps a plain model in one per batch (a few microseconds). A sharded run (FSDP, see
    ``distributed``) wraps the model for good and shards the wrapper as its root: FSDP gathers a
    module's parameters in that module's forward hooks, so the decoder and head must run inside the
    root's forward rather than be called beside it. Only for models ``split_head`` accepts.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, flat: torch.Tensor, **inputs: Any) -> torch.Tensor:
        split = split_head(self.model)
        assert split is not None, "TargetLogits needs a model split_head accepts"
        decoder, head = split
        hidden = decoder(**inputs).last_hidden_state
        return head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat))  # type: ignore[no-any-return]


def _targets_only(
    targets: TargetLogits, inputs: dict[str, Any], labels: torch.Tensor, tw: torch.Tensor, device: str
) -> torch.Tensor:
    target = labels[:, 1:] != IGNORE  # position t predicts labels[:, t + 1]
    rows, cols = target.nonzero(as_tuple=True)  # on the CPU: no device sync for the data-dependent size
    flat = (rows * labels.shape[1] + cols).to(device, non_blocking=True)
    nll = F.cross_entropy(targets(flat, **inputs).float(), labels[:, 1:][target].to(device), reduction="none")
    return (tw[:, 1:][target].to(device) * nll).sum()


def batch_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    normalisation: str,
    device: str,
    denominator: float | None = None,
) -> torch.Tensor:
    """Weighted completion NLL of one padded or packed batch, divided by ``denominator``.

    ``denominator`` defaults to this batch's own total loss weight; pass the whole step's total to
    accumulate micro-batches into exactly the full-batch gradient.
    """
    # Weights, denominator and target positions come from the batch as built (on the CPU), before
    # the copy to the device: reading them back from a GPU would stall it once per batch.
    tw = token_loss_weights(batch, normalisation)
    denom = max(float(tw[:, 1:].sum()) if denominator is None else denominator, 1e-8)
    labels = batch["labels"]
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"].to(device, non_blocking=True),
        "use_cache": False,
    }
    if "position_ids" in batch:  # packed: NO 2-D mask, or transformers would not see the boundaries
        inputs["position_ids"] = batch["position_ids"].to(device, non_blocking=True)
    else:
        inputs["attention_mask"] = batch["attention_mask"].to(device, non_blocking=True)
    targets = model if isinstance(model, TargetLogits) else None
    if targets is None and split_head(model) is not None:
        targets = TargetLogits(model)
    with autocast(device):
        if targets is not None:
            return _targets_only(targets, inputs, labels, tw, device) / denom
        # Logits only from the position before the earliest completion token on (logits_to_keep=k: last k).
        first = int((labels != IGNORE).int().argmax(dim=1).min().item())
        keep = labels.shape[1] - max(first - 1, 0)
        if "logits_to_keep" in inspect.signature(_inner(model).forward).parameters:
            inputs["logits_to_keep"] = keep
        else:
            keep = labels.shape[1]
        out = model(**inputs)
    return _weighted_sum(out.logits, labels[:, -keep:].to(device), tw[:, -keep:].to(device)) / denom
