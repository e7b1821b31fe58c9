"""Trainer service settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from shared.infra import (
    Device,
    GrpcConfig,
    LogFormat,
    LogLevel,
    MetricsConfig,
    NatsConfig,
    Sharding,
    StoreConfig,
    StrictModel,
)


class HubSettings(StrictModel):
    """Base models named by a Hugging Face Hub id (`org/name[@revision]`), fetched by prepare jobs."""

    offline: bool = True
    """Read Hub models only from the cache (`cache_dir`), never from the network: a cluster without egress, or a cache filled beforehand. `false` downloads what the cache lacks (`HF_ENDPOINT` names a mirror)."""
    cache_dir: Path | None = None
    """The huggingface_hub cache to read and fill; default: its own ($HF_HUB_CACHE, $HF_HOME/hub)."""
    token_file: Path | None = None
    """File holding a Hub token (a mounted Secret) for gated or private models; default: $HF_TOKEN."""


class TrainerConfig(StrictModel):
    """Imports base models into the store and runs M-steps (fine-tuning from the base)."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    device: Device = "auto"
    """Device for training: `auto` picks CUDA when present."""
    cache_dir: Path = Path(".restem/cache/trainer")
    """Local directory for downloaded base checkpoints."""
    work_dir: Path = Path(".restem/work/trainer")
    """Scratch space: the tokenised kept set, step states and checkpoints being written before upload."""
    import_cache_dir: Path | None = None
    """Host directory of converted base models (one subdirectory per model key), shared by the trainers and stores of this host: a base model converted once (a GGUF de-quantised, ~25 s for SmolLM2 on 2 cores) is copied from here into a store that lacks it instead of converted again. Unset: convert whenever a store lacks the model. The local stack sets it to ~/.cache/restem/imports."""
    nproc: int = Field(default=1, ge=1, le=64)
    """Training processes per M-step (one per GPU): >1 starts that many torchrun workers for each job, which share every batch (data parallel; rank 0 writes the checkpoint). 1 trains in the service process."""
    sharding: Sharding = "none"
    """How the `nproc` workers hold the model: `none` = each holds all of it (16 bytes/parameter with AdamW: up to ~3B on 80 GB GPUs; fastest for small models); `fsdp` = each holds 1/nproc of the weights, gradients and optimizer state (FSDP2; bf16 compute on CUDA), for models that do not fit one GPU. Needs nproc > 1. Validation-driven stopping gathers the whole model on every GPU while it decodes (bf16: 2 bytes/parameter; see shared/llm/distributed.py)."""
    hub: HubSettings = Field(default_factory=HubSettings)
    """Hugging Face Hub models."""
    peak_tflops: float = Field(default=989.0, gt=0)
    """Dense bf16 peak of one GPU in TFLOP/s, the denominator of the MFU metric (H100 SXM: 989; A100: 312; H200: 989)."""
    verifier_address: str = "127.0.0.1:50053"
    """host:port of the verifier's gRPC API, which scores the validation answers of validation-driven stopping."""
    verify_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of each Verify call."""
    max_deliver: int = Field(default=3, ge=1, le=100)
    """Attempts per job before it is dead-lettered and the run fails."""
    ack_wait_s: float = Field(default=120.0, gt=1)
    """Seconds without a heartbeat before a job is handed to another replica."""
    log_level: LogLevel = "info"
    """Log level."""
    log_format: LogFormat = "text"
    """`text` (readable, the local default) or `json` (one object per line with service, run_id,
    iteration, job_id and phase: what a log stack indexes; the chart's default)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics endpoint (off unless a port is set; the chart and the local stack set one)."""

    @model_validator(mode="after")
    def _sharding_needs_workers(self) -> TrainerConfig:
        if self.sharding == "fsdp" and self.nproc < 2:
            raise ValueError(
                "sharding: fsdp shards the model over the torchrun workers, but nproc is 1: set nproc "
                "to the number of GPUs (>= 2), or sharding: none"
            )
        return self
