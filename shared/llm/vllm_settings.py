"""Settings of vLLM's offline engine, apart from the backend so a service config reads them without
importing torch or vllm."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.infra import StrictModel


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
