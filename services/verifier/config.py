"""Verifier service settings."""

from __future__ import annotations

from pydantic import Field

from shared.infra import GrpcConfig, LogFormat, LogLevel, MetricsConfig, NatsConfig, StoreConfig, StrictModel

from .sandbox.cpus import PinCpus
from .sandbox.envelope import ModeSetting
from .sandbox.pool import PoolConfig


# Fields named like PoolConfig's take its defaults and reach both pools by name (checkers.pool_config).
class SandboxSettings(StrictModel):
    """The sandbox pools that run model code (apps, humaneval) and math-verify (math).

    A pool starts on the first request that needs it, so a replica that only scores numeric tasks
    never starts one; `start_at_boot` starts the code pool with the service instead, so a pod that
    cannot sandbox fails its readiness probe before it takes work.
    """

    mode: ModeSetting = PoolConfig.mode
    """Isolation: `bwrap` (namespaces via bubblewrap), `unshare`, or `rlimits` (resource limits + seccomp only, for pods that cannot create namespaces); `auto` picks the strongest that starts and logs which protections are active."""
    workers: int = Field(default=PoolConfig.workers, ge=0, le=512)
    """Code zygotes (each runs one program at a time); 0: two per CPU the pod may use (its CPU limit when one is set)."""
    queue_size: int = Field(default=PoolConfig.queue_size, ge=1, le=100_000)
    """Programs waiting beyond the running ones; a full queue pushes back (jobs retry, RPCs get RESOURCE_EXHAUSTED)."""
    uid_base: int = Field(default=PoolConfig.uid_base, ge=1000, le=2**31 - 1024)
    """When the service runs as root, worker i runs model code as uid uid_base + i (the process limit does not bind root)."""
    tmp_mb: int = Field(default=PoolConfig.tmp_mb, ge=1, le=65_536)
    """Size of each worker's private /tmp (tmpfs) in MiB."""
    recycle_after: int = Field(default=PoolConfig.recycle_after, ge=1)
    """Programs a zygote runs before it is replaced by a fresh one."""
    math_workers: int = Field(default=0, ge=0, le=512)
    """math-verify zygotes; 0: one per CPU core."""
    math_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Wall-clock limit of one math-verify equivalence check."""
    cache_entries: int = Field(default=100_000, ge=0)
    """Code and MATH verdicts kept in this replica's memory, in front of the shared cache; 0: none."""
    shared_cache: bool = True
    """Keep code and MATH verdicts in the artifact store under `cache/verdicts/<checker>/<version>/`, shared by every replica and every run: a repeated or redelivered check reads its verdict instead of running again. A checker version bump starts afresh; off: memory only (`cache_entries`)."""
    pin_cpus: PinCpus = PoolConfig.pin_cpus
    """Pin each sandbox worker (zygote, programs, tester) to one of the pod's CPUs (programs running past 20 ms may use any): fewer cross-core wake-ups. `auto` pins unless a CPU limit (CFS quota) is narrower than the CPUs the pod may run on, i.e. its cores are shared with other pods."""
    start_at_boot: bool = False
    """Start the code pool with the service instead of on first use."""


class VerifierConfig(StrictModel):
    """Scores samples with the task's checker: numeric answers in-process, MATH and code in sandbox pools."""

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
    ack_wait_s: float = Field(default=20.0, gt=1)
    """Seconds without a heartbeat before JetStream redelivers a job: how soon a killed replica's in-flight job is retried (live handlers send a heartbeat every third of it)."""
    max_items_per_request: int = Field(default=10_000, ge=1)
    """Largest Verify RPC batch."""
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    """Sandbox pools for code and math checking."""
    log_level: LogLevel = "info"
    """Log level."""
    log_format: LogFormat = "text"
    """`text` (readable, the local default) or `json` (one object per line with service, run_id,
    iteration, job_id and phase: what a log stack indexes; the chart's default)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics endpoint (off unless a port is set; the chart and the local stack set one)."""
