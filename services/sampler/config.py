"""Sampler service settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.infra import (
    Device,
    GrpcConfig,
    LogFormat,
    LogLevel,
    MetricsConfig,
    NatsConfig,
    StoreConfig,
    StrictModel,
)
from shared.llm.backends import BackendName
from shared.llm.vllm_settings import VllmSettings


class SamplerConfig(StrictModel):
    """Generates K completions per problem with the current policy (transformers or vLLM backend)."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    backend: BackendName = "transformers"
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
    prefetch_spread_s: float | None = Field(default=10.0, ge=0, le=3600)
    """Download a run's next policy when the coordinator hints it (while the run evaluates), after a
    random delay of up to this many seconds, so replicas neither wait for the download in the next
    E-step nor all ask the store at once. None: no prefetch (the first job downloads it)."""
    max_deliver: int = Field(default=3, ge=1, le=100)
    """Attempts per job before it is dead-lettered and the run fails."""
    ack_wait_s: float = Field(default=60.0, gt=1)
    """Seconds without a heartbeat before a job is handed to another replica."""
    log_level: LogLevel = "info"
    """Log level."""
    log_format: LogFormat = "text"
    """`text` (readable, the local default) or `json` (one object per line with service, run_id,
    iteration, job_id and phase: what a log stack indexes; the chart's default)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics endpoint (off unless a port is set; the chart and the local stack set one)."""
