"""Reward-weighted fine-tuning (the ReST-EM M-step): weighted NLL on completion tokens only.

With a binary reward every kept sample has weight 1.0 and this is plain SFT on the correct samples;
weights other than 1 scale each sample's contribution (weight 0 removes it).

What it does: full fine-tuning with AdamW (no weight decay on 1-D parameters: norms and biases), linear
warmup then a CONSTANT learning rate, gradient-norm clipping, reshuffling each epoch with a
``torch.Generator`` seeded ``seed + epoch``, right-padded batches. Weights stay fp32 on every device; on
CUDA the forward pass runs under bf16 autocast (see ``checkpoint.load_for_training`` for why not pure bf16).

Tokenisation: the prompt (exactly as the sampler encodes it, ``generation.encode_prompt``) and the
completion are tokenised SEPARATELY and the ids concatenated, plus EOS. Tokenising ``prompt + completion``
as one string lets BPE merge characters across the boundary (``"\\n"`` + ``"\\n"`` -> ``"\\n\\n"``): a token
would straddle prompt and completion, the mask would be ambiguous, and the model would be trained on a
prompt tokenisation it never sees when sampling.

NOT covered yet: cosine/decay schedules, gradient accumulation, sequence packing, gradient
checkpointing, LoRA/PEFT, multi-GPU (DDP/FSDP), mixed-precision on CPU, evaluation during training.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from shared.llm.generation import encode_prompt

IGNORE = -100  # label value cross_entropy skips: prompt tokens and padding


@dataclass(frozen=True)
class TrainExample:
    prompt: str  # the rendered prompt text (chat template applied)
    completion: str  # the completion text; EOS is appended in training so the model learns to stop
    weight: float = 1.0  # reward weight, >= 0 (binary reward: 1.0 for every kept sample = SFT)


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float = 2e-5
    epochs: int = 2
    batch_size: int = 8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # linear warmup over this fraction of the steps, then constant
    max_seq_len: int = 512
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    # "token":  sum_i w_i * sum_t nll_it / sum_i w_i * n_i  (long completions weigh more; the SFT default)
    # "sample": sum_i w_i * mean_t nll_it / sum_i w_i        (every sample weighs the same, whatever its length)
    # Both divide by the weights, so a weight-0 sample changes nothing and weight 1 everywhere is plain SFT.
    loss_normalisation: Literal["token", "sample"] = "token"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 2:
            raise ValueError("epochs and batch_size must be >= 1 and max_seq_len >= 2")
        if not 0 <= self.warmup_ratio <= 1 or self.learning_rate <= 0:
            raise ValueError("need 0 <= warmup_ratio <= 1 and learning_rate > 0")
        if self.loss_normalisation not in ("token", "sample"):
            raise ValueError(
                f"loss_normalisation must be 'token' or 'sample', not {self.loss_normalisation!r}"
            )


@dataclass
class TrainStats:
    steps: int
    epochs: int  # epochs started (the last one may be partial when should_stop fired)
    examples: int
    tokens: int  # completion tokens (EOS included) seen, summed over steps
    loss_first: float
    loss_last: float
    seconds: float
    tokens_per_s: float  # completion tokens per second


def tokenize_examples(
    tokenizer: Any, examples: Sequence[TrainExample], max_seq_len: int
) -> list[dict[str, Any]]:
    """``input_ids``, ``labels`` (prompt masked to -100, completion + EOS kept) and ``weight`` per example.

    Raises ValueError when any example is longer than ``max_seq_len``: training on silently truncated
    samples would teach the wrong thing.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; cannot teach the model to stop")
    features: list[dict[str, Any]] = []
    too_long: list[int] = []
    for ex in examples:
        prompt_ids = encode_prompt(tokenizer, ex.prompt)
        if not prompt_ids:
            raise ValueError(
                "an example has an empty prompt; its first completion token has nothing to follow"
            )
        completion_ids = [*tokenizer(ex.completion, add_special_tokens=False)["input_ids"], int(eos)]
        input_ids = prompt_ids + completion_ids
        if len(input_ids) > max_seq_len:
            too_long.append(len(input_ids))
        if not (ex.weight >= 0 and math.isfinite(ex.weight)):
            raise ValueError(f"example weights must be finite and >= 0 (got {ex.weight})")
        labels = [IGNORE] * len(prompt_ids) + completion_ids
        features.append({"input_ids": input_ids, "labels": labels, "weight": float(ex.weight)})
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(examples)} examples exceed max_seq_len={max_seq_len} "
            f"(longest {max(too_long)} tokens); raise TrainParams.max_seq_len or shorten prompts/completions"
        )
    return features


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (padding -100) and weights."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    weights = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def weighted_nll(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, normalisation: str = "token"
) -> torch.Tensor:
    """Weighted next-token NLL; ``logits[:, t]`` predicts ``labels[:, t + 1]``, -100 labels are skipped."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )  # (batch, time); 0 where ignored
    counts = (targets != IGNORE).sum(dim=1).to(nll.dtype)
    per_sample = nll.sum(dim=1)
    if normalisation == "token":
        # clamp: all-zero weights give loss 0 (and zero gradient) instead of 0/0
        return (weights * per_sample).sum() / (weights * counts).sum().clamp(min=1e-8)
    if normalisation == "sample":
        means = per_sample / counts.clamp(min=1)
        return (weights * means).sum() / weights.sum().clamp(min=1e-8)
    raise ValueError(f"unknown loss normalisation {normalisation!r}")


def _autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(model: Any, batch: dict[str, torch.Tensor], normalisation: str, device: str) -> torch.Tensor:
    """Weighted completion NLL of one collated batch (with gradients unless called under no_grad)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch["labels"]
    # Logits are only needed from the position before the earliest completion token on: skipping the
    # LM head on prompt positions saves its (vocab-sized) matmul and memory (logits_to_keep=k: the last k).
    first = int((labels != IGNORE).int().argmax(dim=1).min().item())
    keep = labels.shape[1] - max(first - 1, 0)
    extra = (
        {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )
    with _autocast(device):
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **extra
        )
    if not extra:
        keep = labels.shape[1]
    return weighted_nll(out.logits, labels[:, -keep:], batch["weights"], normalisation)


def _optimizer(model: Any, params: TrainParams) -> torch.optim.Optimizer:
    # Norm gains and biases are not decayed (standard practice: decaying them only hurts).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.learning_rate)


def _batches(
    features: list[dict[str, Any]], params: TrainParams, epoch: int
) -> Iterator[list[dict[str, Any]]]:
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(params.seed + epoch))
    for start in range(0, len(features), params.batch_size):
        yield [features[i] for i in order[start : start + params.batch_size].tolist()]


def train_reward_weighted(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TrainExample],
    params: TrainParams,
    *,
    device: str,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainStats:
    """Fine-tune ``model`` in place on the examples; ``on_step(step, total_steps, loss)`` after each step."""
    if not examples:
        raise ValueError("no training examples (no sample was kept): skip this M-step instead of training")
    features = tokenize_examples(tokenizer, examples, params.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = params.epochs * math.ceil(len(features) / params.batch_size)
    warmup = int(total * params.warmup_ratio)
    optimizer = _optimizer(model, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    model.train()
    torch.manual_seed(params.seed)  # dropout, for models that have it
    losses: list[float] = []
    tokens, epochs, start = 0, 0, time.perf_counter()
    for epoch in range(params.epochs):
        epochs += 1
        for chunk in _batches(features, params, epoch):
            batch = collate(chunk, int(pad_id))
            loss = batch_loss(model, batch, params.loss_normalisation, device)
            loss.backward()
            if params.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            tokens += int((batch["labels"] != IGNORE).sum().item())
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
            if should_stop is not None and should_stop():
                return _stats(losses, epochs, len(features), tokens, start)
    return _stats(losses, epochs, len(features), tokens, start)


def _stats(losses: list[float], epochs: int, examples: int, tokens: int, start: float) -> TrainStats:
    seconds = time.perf_counter() - start
    return TrainStats(
        steps=len(losses),
        epochs=epochs,
        examples=examples,
        tokens=tokens,
        loss_first=losses[0] if losses else math.nan,
        loss_last=losses[-1] if losses else math.nan,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
    )
