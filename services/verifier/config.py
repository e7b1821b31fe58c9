"""Verifier service settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.infra import GrpcConfig, NatsConfig, StoreConfig, StrictModel


class VerifierConfig(StrictModel):
    """Scores samples with the task's checker (numeric answers now; sandboxed code later)."""

    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    """gRPC server."""
    nats: NatsConfig = Field(default_factory=NatsConfig)
    """NATS JetStream connection."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    concurrency: int = Field(default=4, ge=1, le=256)
    """Verify jobs handled at once by this replica."""
    max_deliver: int = Field(default=5, ge=1, le=100)
    """Attempts per job before it is dead-lettered and the run fails."""
    max_items_per_request: int = Field(default=10_000, ge=1)
    """Largest Verify RPC batch."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""
