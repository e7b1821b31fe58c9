"""Settings for the infrastructure every service shares: NATS and the artifact store.

Declared once here and embedded in each service's config, so a setting shared by services is
never copied by hand. Secrets (S3 keys, NATS password) default to environment variables so that
they come from a Kubernetes Secret in the chart and never sit in a config file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]  # json: one object per line, for a log stack (shared.logs)
Device = Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
Sharding = Literal["none", "fsdp"]  # how torchrun workers hold the model (shared.llm.distributed)


class StrictModel(BaseModel):
    """Base for every restem config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name)
    return SecretStr(value) if value else None


def _file_secret(path: Path | None, field: str) -> SecretStr | None:
    """The secret in `path` (a mounted Secret), stripped; None when no file is named."""
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{field} {path} cannot be read ({exc.strerror}); fix the path") from None
    if not value:
        raise ValueError(f"{field} {path} is empty; put the secret in it")
    return SecretStr(value)


class NatsConfig(StrictModel):
    """How to reach NATS JetStream."""

    url: str = "nats://127.0.0.1:4222"
    """NATS server URL (comma-separate several for a cluster)."""
    user: str | None = Field(default_factory=lambda: os.environ.get("RESTEM_NATS_USER"))
    """NATS user name; defaults to $RESTEM_NATS_USER."""
    password: SecretStr | None = Field(default_factory=lambda: _env_secret("RESTEM_NATS_PASSWORD"))
    """NATS password; defaults to $RESTEM_NATS_PASSWORD."""
    password_file: Path | None = None
    """File holding the NATS password (a mounted Secret); wins over password."""
    token: SecretStr | None = Field(default_factory=lambda: _env_secret("RESTEM_NATS_TOKEN"))
    """NATS token (token authentication instead of user/password); defaults to $RESTEM_NATS_TOKEN."""
    token_file: Path | None = None
    """File holding the NATS token; wins over token."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds to wait for each connection attempt."""
    prefix: str = Field(default="RESTEM", pattern=r"^[A-Z][A-Z0-9_]*$")
    """Prefix of stream and bucket names, so several restem installs can share one NATS."""

    @model_validator(mode="after")
    def _read_secret_files(self) -> NatsConfig:
        # object.__setattr__: validate_assignment would re-run this validator on each assignment.
        for field, file_field in (("password", "password_file"), ("token", "token_file")):
            value = _file_secret(getattr(self, file_field), f"nats.{file_field}")
            if value is not None:
                object.__setattr__(self, field, value)
        return self


class StoreConfig(StrictModel):
    """Where artifacts (datasets, samples, checkpoints, reports) live."""

    kind: Literal["local", "s3"] = "local"
    """`local`: a directory on this machine (the embedded default); `s3`: MinIO or any S3 API."""
    root: Path = Path(".restem/store")
    """Directory of the local store (kind=local)."""
    endpoint: str = "127.0.0.1:9000"
    """host:port of the S3 endpoint (kind=s3)."""
    bucket: str = Field(default="restem", min_length=3, max_length=63)
    """S3 bucket; created if missing (kind=s3)."""
    access_key: SecretStr | None = Field(default_factory=lambda: _env_secret("RESTEM_S3_ACCESS_KEY"))
    """S3 access key; defaults to $RESTEM_S3_ACCESS_KEY."""
    secret_key: SecretStr | None = Field(default_factory=lambda: _env_secret("RESTEM_S3_SECRET_KEY"))
    """S3 secret key; defaults to $RESTEM_S3_SECRET_KEY."""
    access_key_file: Path | None = None
    """File holding the S3 access key (a mounted Secret); wins over access_key."""
    secret_key_file: Path | None = None
    """File holding the S3 secret key (a mounted Secret); wins over secret_key."""
    secure: bool = False
    """Use TLS to talk to the S3 endpoint."""
    region: str = "us-east-1"
    """S3 region name."""

    @model_validator(mode="after")
    def _s3_needs_credentials(self) -> StoreConfig:
        for field in ("access_key", "secret_key"):
            value = _file_secret(getattr(self, f"{field}_file"), f"store.{field}_file")
            if value is not None:
                object.__setattr__(self, field, value)
        if self.kind == "s3" and (self.access_key is None or self.secret_key is None):
            raise ValueError(
                "store.kind is 's3' but no credentials: set store.access_key and store.secret_key "
                "(or their *_file) or the RESTEM_S3_ACCESS_KEY / RESTEM_S3_SECRET_KEY environment variables"
            )
        return self


class GrpcConfig(StrictModel):
    """Where a service's gRPC server listens."""

    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 in a pod)."""
    port: int = Field(default=0, ge=0, le=65535)
    """Port to bind; 0 picks a free one (the bound port is logged and written to port_file)."""
    port_file: Path | None = None
    """If set, the bound port is written here once the server is up (the local stack reads it)."""
    grace_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight RPCs get to finish on SIGTERM."""
    max_message_mb: int = Field(default=64, ge=1, le=2048)
    """Largest request or response message in MiB."""
    auth_token: SecretStr | None = Field(default_factory=lambda: _env_secret("RESTEM_API_TOKEN"))
    """Bearer token every RPC must carry (health and reflection excepted); defaults to
    $RESTEM_API_TOKEN. Unset: the API is open. Also sent on this service's calls to other services."""
    auth_token_file: Path | None = None
    """File holding the bearer token (a mounted Secret); wins over auth_token."""
    public_reads: bool = False
    """Let read-only RPCs (Get*, List*, Watch*) through without the token; mutating ones need it."""
    max_connection_age_s: float = Field(default=0, ge=0)
    """Close client connections after this long (then as long again for calls in flight), so
    round-robin clients re-resolve the name and reach replicas added since; 0: never. The chart
    sets it for the verifier (its clients spread over its replicas); streams such as WatchRun
    would be cut, so not for the coordinator."""


class MetricsConfig(StrictModel):
    """Where a service serves its Prometheus metrics (`GET /metrics`, see docs/observability.md)."""

    port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the metrics endpoint; 0 picks a free one (written to port_file); None: no endpoint."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 in a pod, so Prometheus can scrape it)."""
    port_file: Path | None = None
    """If set, the bound port is written here once the endpoint is up (the local stack reads it)."""
