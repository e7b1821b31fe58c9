"""Contract messages to library parameters: the one place proto settings become Python ones."""

from __future__ import annotations

from typing import Any

from restem.common.v1 import common_pb2


def generation_params(p: common_pb2.SamplingParams) -> Any:
    from shared.llm.generation import GenerationParams

    return GenerationParams(
        n=max(1, p.n),
        temperature=p.temperature or 1.0,
        top_k=p.top_k,
        top_p=p.top_p or 1.0,
        max_new_tokens=p.max_new_tokens,
        stop=tuple(p.stop),
        stop_regex=tuple(p.stop_regex),
        greedy=p.greedy,
        seed=p.seed,
    )


def train_params(p: common_pb2.TrainParams) -> Any:
    from shared.llm.training import TrainParams

    return TrainParams(
        learning_rate=p.learning_rate,
        epochs=p.epochs,
        batch_size=p.batch_size,
        weight_decay=p.weight_decay,
        warmup_ratio=p.warmup_ratio,
        max_seq_len=p.max_seq_len,
        max_grad_norm=p.max_grad_norm,
        seed=p.seed,
        loss_normalisation=p.loss_normalisation or "token",  # type: ignore[arg-type]
        method=p.method or "full",  # type: ignore[arg-type]
        lr_schedule=p.lr_schedule or "constant",  # type: ignore[arg-type]
        min_lr_ratio=p.min_lr_ratio,
        max_steps=p.max_steps or None,
        micro_batch_size=p.micro_batch_size or None,
        packing=p.packing,
        length_bucketing=p.length_bucketing,
        gradient_checkpointing=p.gradient_checkpointing,
        checkpoint_every_steps=p.checkpoint_every_steps,
        # an unset LoRA section (a full fine-tune, or an older coordinator) keeps the library defaults
        **(_lora(p) if p.method == "lora" else {}),
    )


def _lora(p: common_pb2.TrainParams) -> dict[str, Any]:
    return {
        "lora_r": p.lora_r,
        "lora_alpha": p.lora_alpha,
        "lora_dropout": p.lora_dropout,
        "lora_target_modules": tuple(p.lora_target_modules),
    }
