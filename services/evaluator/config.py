"""Evaluator service settings."""

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


class EvaluatorConfig(StrictModel):
    """Greedy pass@1 (and sampled pass@k / maj@k) of a checkpoint on a split or a shard of one;
    answers are scored by the verifier service."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    verifier_address: str = "127.0.0.1:50053"
    """host:port of the verifier's gRPC API, which scores every answer; `dns:///name:port` of a
    headless Service spreads calls over every verifier replica (round robin; the chart does this)."""
    verify_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of each Verify call (one batch of up to 512 answers)."""
    verify_concurrency: int = Field(default=4, ge=1, le=256)
    """Verify calls in flight at once for one evaluation: a large split is verified by several
    verifier replicas (or sandbox workers) in parallel."""
    backend: BackendName = "transformers"
    """Generation backend, as the sampler's: `transformers` (CPU or GPU) or `vllm` (GPU; the `vllm`
    package, imported only when selected). Run the evaluator on the sampler's backend so evaluation
    decodes as the E-step does."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """vLLM engine settings (with `backend: vllm`)."""
    device: Device = "auto"
    """Device for the model: `auto` picks CUDA when present."""
    cache_dir: Path = Path(".restem/cache/evaluator")
    """Local directory for downloaded checkpoints."""
    max_batch_sequences: int = Field(default=512, ge=1, le=65_536)
    """Most sequences decoded together."""
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
