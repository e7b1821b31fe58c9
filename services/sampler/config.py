"""Sampler service settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.infra import Device, GrpcConfig, LogLevel, NatsConfig, StoreConfig, StrictModel


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


class SamplerConfig(StrictModel):
    """Generates K completions per problem with the current policy (transformers or vLLM backend)."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """Generation backend: `transformers` (CPU or GPU, always installed) or `vllm` (GPU; needs the `vllm` package, imported only when selected)."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """vLLM engine settings (with `backend: vllm`)."""
    device: Device = "auto"
    """Device for the model: `auto` picks CUDA when present."""
    cache_dir: Path = Path(".restem/cache/sampler")
    """Local directory for downloaded checkpoints."""
    max_batch_sequences: int = Field(default=512, ge=1, le=65_536)
    """Most sequences (prompts x K) decoded together."""
    max_samples_per_job: int = Field(default=65_536, ge=1)
    """Largest shard (problems x K) accepted; bigger jobs fail with a clear error."""
    max_deliver: int = Field(default=3, ge=1, le=100)
    """Attempts per job before it is dead-lettered and the run fails."""
    ack_wait_s: float = Field(default=60.0, gt=1)
    """Seconds without a heartbeat before a job is handed to another replica."""
    log_level: LogLevel = "info"
    """Log level."""
