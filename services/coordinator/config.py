"""Coordinator service settings."""

from __future__ import annotations

from pydantic import Field

from shared.infra import GrpcConfig, LogFormat, LogLevel, MetricsConfig, NatsConfig, StoreConfig, StrictModel


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
    event_concurrency: int = Field(default=32, ge=1, le=1024)
    """Result events applied at once. Events of different runs run concurrently (a long filter or
    fan-out of one run does not hold up the others); one run's events are applied one at a time,
    in order."""
    event_window: int = Field(default=1024, ge=1, le=100_000)
    """Result events taken from the stream at once (at least `event_concurrency`): a run's events
    beyond the ones running wait their turn here, so one run's burst (a shard finished per event)
    holds up the other runs only once it fills the window."""
    sample_jobs_per_run: int = Field(default=0, ge=0, le=1_000_000)
    """Fair share between runs: at most this many sample jobs of one run are out (queued or running)
    at once; each finished shard lets the next one out, so a run started behind a large one waits
    for this many of its jobs, not for its whole E-step. Set it a little above the sampler replicas
    x `concurrency` (the chart does: 1.25x its most replicas), so a lone run keeps every replica
    busy. 0: all shards at once (no fair share)."""
    verify_jobs_per_run: int = Field(default=0, ge=0, le=1_000_000)
    """The same for verify jobs: at most this many of a run's sampled shards wait for (or are in)
    verification at once, so a run behind a large one is not verified after all its shards. A
    little above the verifier replicas x `concurrency` (the chart sets 1.25x); 0: no limit."""
    sampler_slots: int = Field(default=0, ge=0, le=1_000_000)
    """Sample jobs the sampler pool runs at once (its replicas x `concurrency`; the chart sets it from
    its most replicas). An E-step of more jobs than this is cut into a multiple of this many jobs of
    at most `em.shard_size` problems, so the replicas finish its last round together instead of a
    few finishing it alone; a smaller E-step keeps `em.shard_size`. 0: jobs of exactly
    `em.shard_size` problems."""
    max_config_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest run config accepted by StartRun."""
    max_upload_bytes: int = Field(default=2**30, ge=1024)
    """Largest file UploadFile accepts (an APPS train set with its test cases is a few hundred MB). Uploads are spooled to /tmp while they are checked, and a starting run's files are copied there while they are validated: the chart's `tmpSize` (2Gi) must hold them."""
    log_level: LogLevel = "info"
    """Log level."""
    log_format: LogFormat = "text"
    """`text` (readable, the local default) or `json` (one object per line with service, run_id,
    iteration, job_id and phase: what a log stack indexes; the chart's default)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics endpoint (off unless a port is set; the chart and the local stack set one)."""
