"""The settings of one generation call and of one M-step: declared here once, torch-free.

``GenerationParams`` and ``TrainParams`` are what the library functions take
(``shared.llm.generation``, ``shared.llm.training``); the contract messages of the same names
(``restem.common.v1.SamplingParams`` / ``TrainParams``) carry them between services field by field,
with the same names, through ``to_proto`` / ``from_proto``. The run config (``shared.runconfig``)
takes its defaults from these classes, so a default is written in one place.

Proto3 scalars have no "unset" unless declared ``optional``: every scalar of those two messages is
``optional``, so a field the sender did not set decodes to the default here and an explicit zero
(``top_k: 0``, ``max_grad_norm: 0``) stays zero. An empty repeated field decodes to the default too.

NOT provided: range checks beyond what a call would get wrong (the run config's validators give the
user-facing messages); conversion of fields the two sides do not both have (a test checks that the
names agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from google.protobuf.message import Message

LossNormalisation = Literal["token", "sample"]
TrainMethod = Literal["full", "lora"]
LrSchedule = Literal["constant", "cosine", "linear"]
SaveDtype = Literal["auto", "bfloat16", "float16", "float32"]  # auto: the base checkpoint's dtype
# A sample's reward (`em.reward`): 1/0 on the whole check, or the share of a program's tests passed.
RewardMode = Literal["binary", "fraction_of_tests"]


@dataclass(frozen=True)
class GenerationParams:
    n: int = 1  # samples per prompt (K); a run's K is `sampling.n`
    temperature: float = 0.7  # the paper's E-step temperature
    top_k: int = 40  # the paper's top-K; 0 disables
    top_p: float = 1.0
    max_new_tokens: int = 40
    stop: tuple[str, ...] = ()  # cut right after the first occurrence; the stop string is kept
    stop_regex: tuple[str, ...] = ()  # cut right after the end of the first match
    greedy: bool = False  # argmax decoding; n must be 1
    seed: int = 0  # the call's seed when generate() gets no per-sample seeds

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1 (got {self.n}, {self.max_new_tokens})")
        if self.greedy and self.n != 1:
            raise ValueError(f"greedy decoding gives one completion per prompt; got n={self.n}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 when sampling (got {self.temperature}); use greedy=True"
            )
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1 (got {self.top_k}, {self.top_p})")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for pattern in self.stop_regex:
            if re.compile(pattern).search(""):
                raise ValueError(
                    f"stop regex {pattern!r} matches the empty string; every completion would be empty"
                )


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float = 2e-5
    epochs: int = 2  # passes over the examples; ignored when max_steps is set
    batch_size: int = 8  # examples per optimiser step (the effective batch)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # linear warmup over this fraction of the steps
    max_seq_len: int = 512  # longest example (also the row length of packed batches)
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    loss_normalisation: LossNormalisation = "token"  # see shared.llm.training's docstring
    lr_schedule: LrSchedule = "constant"  # after warmup
    min_lr_ratio: float = 0.0  # cosine/linear decay to learning_rate * min_lr_ratio
    max_steps: int | None = None  # exactly this many optimiser steps (cycling epochs) instead of epochs
    micro_batch_size: int | None = None  # examples per forward/backward; None = batch_size (no accumulation)
    packing: bool = False  # pack examples into rows instead of padding them
    length_bucketing: bool = False  # group similar lengths into steps (padded batches only)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower
    method: TrainMethod = "full"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    # Resumable state every N steps, when the caller takes it (Hooks.on_state); 0 disables. 50 steps
    # bound what a killed trainer redoes to a few minutes on the demo's CPU M-step.
    checkpoint_every_steps: int = 50
    patience: int = 1  # with Hooks.validate: stop after this many epochs without a better validation reward
    # The trained checkpoint's dtype (training itself runs in fp32 weights): a bf16 base stays bf16.
    save_dtype: SaveDtype = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 2:
            raise ValueError("epochs and batch_size must be >= 1 and max_seq_len >= 2")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (got {self.learning_rate})")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need 0 <= warmup_ratio < 1 and 0 <= min_lr_ratio <= 1")
        if self.loss_normalisation not in ("token", "sample"):
            raise ValueError(
                f"loss_normalisation must be 'token' or 'sample', not {self.loss_normalisation!r}"
            )
        if self.lr_schedule not in ("constant", "cosine", "linear") or self.method not in ("full", "lora"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} or method {self.method!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None (got {self.max_steps})")
        mbs = self.micro_batch_size
        if mbs is not None and not (1 <= mbs <= self.batch_size and self.batch_size % mbs == 0):
            raise ValueError(f"micro_batch_size {mbs} must divide batch_size {self.batch_size}")
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("need lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1")
        if self.checkpoint_every_steps < 0:
            raise ValueError("checkpoint_every_steps must be >= 0")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 (got {self.patience})")
        if self.save_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"save_dtype {self.save_dtype!r}: use auto, bfloat16, float16 or float32")


P = TypeVar("P", GenerationParams, TrainParams)
M = TypeVar("M", bound=Message)


def to_proto(params: GenerationParams | TrainParams, message_cls: type[M]) -> M:
    """The contract message of ``params``, field by field; a None stays unset."""
    message = message_cls()
    for f in fields(params):
        value = getattr(params, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            getattr(message, f.name).extend(value)
        else:
            setattr(message, f.name, value)
    return message


def from_proto(message: Message, params_cls: type[P]) -> P:
    """``params_cls`` from its contract message: unset (or empty repeated) fields keep the defaults."""
    kwargs: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        if fd.is_repeated:
            values = getattr(message, fd.name)
            if values:
                kwargs[fd.name] = tuple(values)
        elif message.HasField(fd.name):
            kwargs[fd.name] = getattr(message, fd.name)
    return params_cls(**kwargs)  # type: ignore[arg-type]  # names and types: tests/unit/test_params.py


def as_dict(params: GenerationParams | TrainParams) -> dict[str, Any]:
    """The fields as JSON-ready values (tuples as lists), for a spec file or a cache key."""
    return {f.name: _plain(getattr(params, f.name)) for f in fields(params)}


def from_dict(values: dict[str, Any], params_cls: type[P]) -> P:
    """The inverse of ``as_dict``."""
    return params_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
