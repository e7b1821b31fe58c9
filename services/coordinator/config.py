"""Coordinator service settings."""

from __future__ import annotations

from pydantic import Field

from shared.infra import GrpcConfig, LogLevel, NatsConfig, StoreConfig, StrictModel


class CoordinatorConfig(StrictModel):
    """Runs the EM iterations and serves the public RunService API."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server (the public API)."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    dead_letter_sweep_s: float = Field(default=10.0, gt=0)
    """How often dead-lettered jobs are checked so their runs fail instead of waiting."""
    event_max_deliver: int = Field(default=120, ge=1, le=10_000)
    """Tries per result event before it is dead-lettered and its run fails (backoff up to 30 s: about
    an hour of store outage is ridden out)."""
    max_config_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest run config accepted by StartRun."""
    max_upload_bytes: int = Field(default=2**30, ge=1024)
    """Largest file UploadFile accepts (an APPS train set with its test cases is a few hundred MB). Uploads are spooled to /tmp while they are checked, and a starting run's files are copied there while they are validated: the chart's `tmpSize` (2Gi) must hold them."""
    log_level: LogLevel = "info"
    """Log level."""
