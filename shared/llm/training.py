"""Reward-weighted fine-tuning (the ReST-EM M-step): weighted NLL on completion tokens only.

Loss. With a binary reward every kept sample has weight 1.0 and this is plain SFT on the correct
samples; other weights (non-binary rewards) scale each sample's contribution, weight 0 removes it.
Normalisation (``loss_normalisation``), over all the completion tokens of one OPTIMISER step:

- ``token``:  sum_i w_i * sum_t nll_it / sum_i w_i * n_i   (long completions weigh more; the SFT default)
- ``sample``: sum_i w_i * mean_t nll_it / sum_i w_i        (every sample weighs the same, whatever its length)

Both divide by the weights, so weight 1 everywhere is plain SFT. The denominator is taken over the
whole step before any micro-batch runs, so gradient accumulation (``micro_batch_size``) gives the
same gradient as one big batch, and packing gives the same loss as padding (to float rounding).
The ``loss`` module computes it, applying the output head only where a completion token is predicted.

Optimisation: full fine-tuning or LoRA (``method``; see ``lora``), AdamW (no weight decay on 1-D
parameters), linear warmup then a constant, cosine or linear schedule down to ``min_lr_ratio``,
gradient-norm clipping, optional gradient checkpointing, ``epochs`` passes or exactly ``max_steps``
steps. Weights stay fp32 on every device; on CUDA the forward pass runs under bf16 autocast (see
``checkpoint.load_for_training`` for why not pure bf16); CPU runs plain fp32.

Batches (``packing``): see the ``packing`` module for the data order, length bucketing and how packed
samples are kept from attending to each other. Resume: every ``checkpoint_every_steps`` steps the full
training state is written to a fresh directory and handed to ``on_state``; ``resume_from`` restores
one (see ``train_state``) and the run continues to the same weights as an uninterrupted one.

Tokenisation: the prompt (exactly as the sampler encodes it, ``generation.encode_prompt``) and the
completion are tokenised SEPARATELY and the ids concatenated, plus EOS. Tokenising ``prompt + completion``
as one string lets BPE merge characters across the boundary (``"\\n"`` + ``"\\n"`` -> ``"\\n\\n"``).

Validation-driven stopping (the paper's Algorithm 1): with a ``Hooks.validate`` callback, the
validation reward is measured after every epoch; the best epoch's weights are kept and training stops
once ``patience`` epochs have passed without improving on it (see ``early_stop``). Data parallelism:
with ``dp`` (one per torchrun process) each step's examples are shared among the ranks and their
gradients summed, every rank holding the whole model or (``dp.sharding`` ``fsdp``) a shard of it;
see ``distributed``. A sharded run leaves ``model`` sharded: ``distributed.consolidate`` gathers the
trained model to rank 0 for saving. With sharded weights, validation decodes inside
``distributed.unsharded`` (the whole model gathered on every rank once, so the ranks' different
numbers of decoding forwards need no collective) and the best epoch's weights are gathered to rank 0
(see ``early_stop``). Larger-than-memory kept sets: ``features`` may be a
``dataset.TokenizedSet`` (memory-mapped token ids) instead of a list.

NOT covered: mixed precision on CPU, LoRA adapters served unmerged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.llm.distributed import DataParallel, clip_grad_norm_, shard_model, unsharded
from shared.llm.early_stop import EarlyStop
from shared.llm.generation import encode_prompt
from shared.llm.lora import apply_lora, merged
from shared.llm.loss import batch_loss, weighted_nll
from shared.llm.optim import lr_factor, make_optimizer
from shared.llm.packing import IGNORE, check_packing, collate, epoch_steps, micro_batches, pack
from shared.llm.step_report import StepReport
from shared.llm.train_state import Progress, StateMismatch, capture, load_best, load_state, save_state
from shared.params import TrainParams

__all__ = [
    "IGNORE",
    "Hooks",
    "StepReport",
    "TrainExample",
    "TrainParams",
    "TrainStats",
    "batch_loss",
    "collate",
    "lr_factor",
    "train_features",
    "train_reward_weighted",
    "weighted_nll",
]

log = logging.getLogger("shared.llm.training")


@dataclass(frozen=True)
class TrainExample:
    prompt: str  # the rendered prompt text (chat template applied)
    completion: str  # the completion text; EOS is appended in training so the model learns to stop
    weight: float = 1.0  # reward weight, >= 0 (binary reward: 1.0 for every kept sample = SFT)


@dataclass
class TrainStats:
    steps: int
    epochs: int  # epochs started (the last one may be partial when should_stop fired or max_steps hit)
    examples: int
    tokens: int  # completion tokens (EOS included) seen, summed over steps
    loss_first: float
    loss_last: float
    seconds: float  # this process's training time (a resumed run does not count the earlier part)
    tokens_per_s: float  # completion tokens per second (of this process)
    input_tokens: int = 0  # prompt + completion tokens (no padding) processed by this process
    input_tokens_per_s: float = 0.0  # the throughput figure: non-padding tokens per second
    resumed_from_step: int = 0  # 0: started from the base; n: continued from a step-n state
    method: str = "full"
    validation_rewards: list[float] = field(default_factory=list)  # after each epoch (validation on)
    best_epoch: int = 0  # 1-based epoch whose weights were kept; 0: no validation (the last weights)


def tokenize_examples(
    tokenizer: Any, examples: Sequence[TrainExample], max_seq_len: int
) -> list[dict[str, Any]]:
    """``input_ids``, ``labels`` (prompt masked to -100, completion + EOS kept) and ``weight`` per example.

    Raises ValueError when any example is longer than ``max_seq_len``: training on silently truncated
    samples would teach the wrong thing.
    """
    features: list[dict[str, Any]] = []
    too_long: list[int] = []
    for ex in examples:
        input_ids, prompt_len, weight = encode_example(tokenizer, ex)
        if len(input_ids) > max_seq_len:
            too_long.append(len(input_ids))
        labels = [IGNORE] * prompt_len + input_ids[prompt_len:]
        features.append({"input_ids": input_ids, "labels": labels, "weight": weight})
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(examples)} examples exceed max_seq_len={max_seq_len} "
            f"(longest {max(too_long)} tokens); raise TrainParams.max_seq_len or shorten prompts/completions"
        )
    return features


def encode_example(tokenizer: Any, ex: TrainExample) -> tuple[list[int], int, float]:
    """(prompt + completion + EOS ids, prompt length, weight) of one example; ValueError when unusable."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; cannot teach the model to stop")
    prompt_ids = encode_prompt(tokenizer, ex.prompt)
    if not prompt_ids:
        raise ValueError("an example has an empty prompt; its first completion token has nothing to follow")
    if not (ex.weight >= 0 and math.isfinite(ex.weight)):
        raise ValueError(f"example weights must be finite and >= 0 (got {ex.weight})")
    completion_ids = [*tokenizer(ex.completion, add_special_tokens=False)["input_ids"], int(eos)]
    return prompt_ids + completion_ids, len(prompt_ids), float(ex.weight)


def _fingerprint(params: TrainParams, features: Sequence[dict[str, Any]]) -> str:
    # Everything that changes the result; checkpoint_every_steps does not, so a changed cadence still resumes.
    meta = {k: v for k, v in asdict(params).items() if k != "checkpoint_every_steps"}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=list).encode())
    if hasattr(features, "digest"):  # a TokenizedSet: hashed once while it was written
        digest.update(features.digest().encode())
        return digest.hexdigest()
    for f in features:
        digest.update(json.dumps([f["input_ids"], f["labels"], f["weight"]]).encode())
    return digest.hexdigest()


def _loss_mass(f: dict[str, Any], normalisation: str) -> float:
    """An example's share of a step's loss denominator: w * n (token) or w (sample; n completion tokens)."""
    n = sum(1 for lab in f["labels"][1:] if lab != IGNORE)  # position 0 predicts nothing
    return float(f["weight"]) * n if normalisation == "token" else (float(f["weight"]) if n else 0.0)


def _prepare_model(model: Any, params: TrainParams) -> Any:
    """The module to train: the model itself, or its LoRA wrapper; checks packing on it."""
    train_model = model
    if params.method == "lora":
        train_model = apply_lora(
            model,
            r=params.lora_r,
            alpha=params.lora_alpha,
            dropout=params.lora_dropout,
            target_modules=params.lora_target_modules,
        )
    if params.gradient_checkpointing:
        # non-reentrant: works when the inputs need no grad (frozen embeddings under LoRA)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if params.packing:  # where the weights are (a model to be sharded waits on the CPU)
        check_packing(train_model, str(next(model.parameters()).device), int(model.config.vocab_size))
    train_model.train()
    return train_model


def _finish_model(model: Any, train_model: Any, params: TrainParams, dp: DataParallel | None) -> None:
    """Leave ``model`` a plain trained model: LoRA merged in (in place), checkpointing off.

    Not a sharded one: merging needs whole weights, so ``distributed.consolidate`` merges rank 0's gathered copy.
    """
    if dp is not None and dp.sharded:
        return
    if params.method == "lora":
        merged(train_model)  # merge_and_unload swaps the LoRA layers of ``model`` for merged Linear ones
        for p in model.parameters():
            p.requires_grad_(True)
    if params.gradient_checkpointing:
        model.activation_checkpointing_disable()


@dataclass
class _Loop:
    """What one optimiser step needs."""

    model: Any  # the model being trained (its parameters, their names in step states)
    runner: Any  # the module batch_loss calls: the model, or its sharded root (see distributed)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    features: Sequence[dict[str, Any]]  # a list, or a dataset.TokenizedSet
    lengths: list[int]
    params: TrainParams
    device: str
    pad_id: int
    masses: list[float]  # each example's share of a step's loss denominator (see _loss_mass)
    completions: list[int]  # each example's completion tokens (EOS included)
    dp: DataParallel | None = None
    parameters: int = 0  # counted before sharding: the whole model's

    def step(self, indices: Sequence[int]) -> tuple[float, int, int]:
        """One optimiser step over the examples ``indices``: (loss, completion tokens, input tokens)."""
        p, dp = self.params, self.dp
        size = p.micro_batch_size or p.batch_size
        chunks, most = micro_batches(indices, self.lengths, size), 0
        if dp is not None:
            chunks, most = dp.micro_batches(indices, self.lengths, size)
        # The whole step's denominator (every rank's examples): per-rank losses then sum to the step's loss.
        denom = sum(self.masses[i] for i in indices)
        loss_sum = torch.zeros((), device=self.device)
        for chunk in chunks:
            loss_sum += self._backward(chunk, denom)
        if dp is not None and dp.sharded:
            # Every forward/backward gathers and reduces: match the busiest rank with zero-weight batches.
            shortest = min(indices, key=lambda i: (self.lengths[i], i))
            for _ in range(most - len(chunks)):
                self._backward([shortest], denom, scale=0.0)
        total_loss = float(loss_sum)
        trained = [p_ for p_ in self.model.parameters() if p_.requires_grad]
        if dp is not None:
            if not dp.sharded:
                dp.all_reduce_grads(trained)
            total_loss = dp.sum([total_loss], self.device)[0]
        if p.max_grad_norm > 0:
            clip_grad_norm_(trained, p.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, sum(self.completions[i] for i in indices), sum(self.lengths[i] for i in indices)

    def _backward(self, chunk: Sequence[int], denom: float, scale: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch (its loss times ``scale``); the loss, detached."""
        p = self.params
        feats = [self.features[i] for i in chunk]
        batch = pack(feats, self.pad_id, p.max_seq_len) if p.packing else collate(feats, self.pad_id)
        loss = batch_loss(self.runner, batch, p.loss_normalisation, self.device, denominator=denom) * scale
        loss.backward()
        return loss.detach()


def _resume(loop: _Loop, resume_from: Path | None, fingerprint: str) -> Progress:
    if resume_from is None:
        return Progress()
    try:
        progress = load_state(resume_from, loop.model, loop.optimizer, loop.scheduler, fingerprint, loop.dp)
    except StateMismatch as exc:
        log.warning("not resuming: %s; training from step 0", exc)
        return Progress()
    log.info("resuming the M-step from step %d", progress.step)
    return progress


def _save(loop: _Loop, progress: Progress, fingerprint: str, hooks: Hooks, best: EarlyStop) -> None:
    state = capture(loop.model, loop.optimizer, loop.dp)  # sharded: every rank gathers, rank 0 gets it
    if hooks.on_state is None or state is None:
        return
    if hooks.scratch_dir is not None:
        hooks.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="restem-state-", dir=hooks.scratch_dir) as tmp:
        save_state(Path(tmp), state, loop.scheduler, progress, fingerprint, best=best.best)
        hooks.on_state(progress.step, Path(tmp))


def train_reward_weighted(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TrainExample],
    params: TrainParams,
    *,
    device: str,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: Path | None = None,
    on_state: Callable[[int, Path], None] | None = None,
) -> TrainStats:
    """Fine-tune ``model`` in place (LoRA: merged into it at the end); ``on_step`` after each step.

    ``on_state(step, dir)`` receives a resumable state every ``checkpoint_every_steps`` steps (the dir
    is deleted when it returns); ``resume_from`` is such a dir to continue from.
    """
    if not examples:
        raise ValueError("no training examples (no sample was kept): skip this M-step instead of training")
    features = tokenize_examples(tokenizer, examples, params.max_seq_len)
    hooks = Hooks(on_step, should_stop, on_state)
    return train_features(
        model,
        features,
        params,
        pad_id=pad_id_of(tokenizer),
        device=device,
        hooks=hooks,
        resume_from=resume_from,
    )


def pad_id_of(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


@dataclass
class Hooks:
    """Callbacks of the training loop (all optional)."""

    on_step: Callable[[StepReport], None] | None = None  # after each step (and its validation, if any)
    should_stop: Callable[[], bool] | None = None  # polled after each step
    on_state: Callable[[int, Path], None] | None = None  # (step, state dir) every checkpoint_every_steps
    validate: Callable[[], float] | None = None  # validation reward of the model now (after each epoch)
    scratch_dir: Path | None = None  # where step states are written before on_state (None: system temp)


def train_features(
    model: Any,
    features: Sequence[dict[str, Any]],
    params: TrainParams,
    *,
    pad_id: int,
    device: str,
    hooks: Hooks | None = None,
    resume_from: Path | None = None,
    dp: DataParallel | None = None,
) -> TrainStats:
    """``train_reward_weighted`` on examples already tokenised (``tokenize_examples``' format, or a
    ``dataset.TokenizedSet``); ``dp``: this process's rank of a data-parallel run (see ``distributed``).
    """
    if not len(features):
        raise ValueError("no training examples")
    hooks = hooks or Hooks()
    sharded = dp is not None and dp.sharded
    lengths = list(getattr(features, "lengths", None) or [len(f["input_ids"]) for f in features])
    masses, completions = _masses(features, params.loss_normalisation)
    # Seeded before LoRA creates its adapters (their init draws from the global RNG), and dropout after;
    # every rank seeds alike, so LoRA adapters start identical on all of them.
    torch.manual_seed(params.seed)
    train_model = _prepare_model(model, params)
    parameters = sum(p.numel() for p in train_model.parameters())
    try:
        runner = shard_model(train_model, device) if sharded else train_model
        optimizer = make_optimizer(train_model, params, device)  # sharded: over each rank's shards
        total = params.max_steps or params.epochs * math.ceil(len(features) / params.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, params))
        loop = _Loop(
            model=train_model,
            runner=runner,
            optimizer=optimizer,
            scheduler=scheduler,
            features=features,
            lengths=lengths,
            params=params,
            device=device,
            pad_id=pad_id,
            masses=masses,
            completions=completions,
            dp=dp,
            parameters=parameters,
        )
        fingerprint = _fingerprint(params, features)
        progress = _resume(loop, resume_from, fingerprint)
        keeps_best = dp is None or not dp.sharded or dp.rank == 0  # sharded: rank 0 holds them gathered
        kept = load_best(resume_from) if progress.step and keeps_best else None
        best = EarlyStop(params.patience, loop.model, kept, dp)
        resumed, tokens_before = progress.step, progress.tokens
        start = time.perf_counter()
        input_tokens = _run(loop, progress, total, fingerprint, hooks, best)
        seconds = max(time.perf_counter() - start, 1e-9)
        best.restore(progress)  # the best epoch's weights, not the last ones (validation on)
    finally:
        _finish_model(model, train_model, params, dp)
    rates = (progress.tokens - tokens_before) / seconds, input_tokens / seconds
    return _stats(progress, len(features), input_tokens, seconds, rates, resumed, params)


def _masses(features: Sequence[dict[str, Any]], normalisation: str) -> tuple[list[float], list[int]]:
    """Each example's loss-denominator share and completion-token count (one pass over the set)."""
    if hasattr(features, "masses"):  # a TokenizedSet: from its index arrays, without building examples
        return features.masses(normalisation)  # type: ignore[no-any-return]
    masses, completions = [], []
    for f in features:
        masses.append(_loss_mass(f, normalisation))
        completions.append(sum(1 for lab in f["labels"] if lab != IGNORE))
    return masses, completions


def _run(loop: _Loop, progress: Progress, total: int, fingerprint: str, hooks: Hooks, best: EarlyStop) -> int:
    """Steps from ``progress.step`` to ``total`` (or until asked to stop); the input tokens processed."""
    params, input_tokens = loop.params, 0
    per_epoch = math.ceil(len(loop.features) / params.batch_size)
    steps: list[list[int]] = []
    while progress.step < total:
        epoch, index = divmod(progress.step, per_epoch)
        if index == 0 or not steps:
            steps = epoch_steps(loop.lengths, params.batch_size, params.seed, epoch, _bucketing(params))
        learning_rate = float(loop.optimizer.param_groups[0]["lr"])
        began = time.perf_counter()
        loss, tokens, inputs = loop.step(steps[index])
        seconds = time.perf_counter() - began
        progress.step, progress.epochs = progress.step + 1, max(progress.epochs, epoch + 1)
        progress.tokens, input_tokens = progress.tokens + tokens, input_tokens + inputs
        progress.losses.append(loss)
        stop, reward = False, None
        if hooks.validate is not None and (progress.step % per_epoch == 0 or progress.step == total):
            reward = _validate(loop, hooks.validate)
            stop = best.observe(progress, reward)
        if hooks.on_step is not None:
            memory = torch.cuda.memory_allocated() if loop.device.startswith("cuda") else 0
            report = StepReport(
                progress.step,
                total,
                loss,
                learning_rate,
                tokens,
                inputs,
                seconds,
                reward,
                loop.parameters,
                memory,
            )
            hooks.on_step(report)
        every = params.checkpoint_every_steps
        # sharded: rank 0 alone has on_state, but every rank takes part in gathering the state
        saves = hooks.on_state is not None or (loop.dp is not None and loop.dp.sharded)
        if saves and every and progress.step % every == 0 and progress.step < total:
            _save(loop, progress, fingerprint, hooks, best)
        if stop or (hooks.should_stop is not None and hooks.should_stop()):
            break
    return input_tokens


def _validate(loop: _Loop, validate: Callable[[], float]) -> float:
    """The validation reward of the model now; sharded: decoded with its whole weights on every rank."""
    if loop.dp is None or not loop.dp.sharded:
        return validate()
    with unsharded(loop.runner):
        return validate()


def _bucketing(params: TrainParams) -> bool:
    return params.length_bucketing and not params.packing  # packing already removes the padding


def _stats(
    progress: Progress,
    examples: int,
    input_tokens: int,
    seconds: float,
    rates: tuple[float, float],
    resumed: int,
    params: TrainParams,
) -> TrainStats:
    losses = progress.losses
    return TrainStats(
        steps=progress.step,
        epochs=progress.epochs,
        examples=examples,
        tokens=progress.tokens,
        loss_first=losses[0] if losses else math.nan,
        loss_last=losses[-1] if losses else math.nan,
        seconds=seconds,
        tokens_per_s=rates[0],
        input_tokens=input_tokens,
        input_tokens_per_s=rates[1],
        resumed_from_step=resumed,
        method=params.method,
        validation_rewards=list(progress.val_rewards),
        best_epoch=progress.best_epoch,
    )
