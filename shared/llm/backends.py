"""Generation backends the sampler and the evaluator share: transformers (always installed, CPU or
GPU) or vLLM's offline engine (GPU; the `cuda` extra). Both implement one contract
(`tokenizer`, `generate(prompts, params, seeds=)` -> `Completion`s, see `shared.llm.generation`), so
the E-step, evaluation and validation decode alike whichever backend a service runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shared.infra import StrictModel

BackendName = Literal["transformers", "vllm"]
# (name shown by GetStats, checkpoint directory -> generator)
Backend = tuple[str, Callable[[Path], Any]]


class VllmSettings(StrictModel):
    """vLLM's offline engine (`vllm.LLM`); read only with `backend: vllm`."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """GPUs one engine shards the model over."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """Fraction of GPU memory the engine may take (weights + KV cache)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of prompt prefixes the prompts share (system prompt, few-shot examples)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weight and activation dtype; `auto` follows the checkpoint's config."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Longest prompt + completion in tokens; default: the model's own limit."""


def configured_backend(name: BackendName, vllm: VllmSettings) -> Backend | None:
    """The named backend's loader; None for transformers (the checkpoint cache's default)."""
    if name == "vllm":
        from .vllm_backend import VllmGenerator, import_vllm

        import_vllm()  # a missing vllm fails the start-up, not every job
        return "vllm", functools.partial(VllmGenerator.load, settings=vllm)
    return None
