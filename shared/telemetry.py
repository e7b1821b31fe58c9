"""Prometheus metrics every service shares: jobs, the artifact store, NATS; and the /metrics endpoint.

Each process registers its metrics in prometheus-client's default registry when its modules are
imported: the ones here (every service), and its own in `services/<svc>/metrics.py`. The endpoint
(`serve_metrics`) is a small HTTP server thread, started by `shared.service.open_service` when the
service config names a metrics port. docs/observability.md lists every metric.

Labels stay low-cardinality: job types, operations, statuses, never run or job ids (a cluster
serves runs for months; a label per run would grow every series list for ever).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.infra import MetricsConfig

log = logging.getLogger("restem.telemetry")

# Job durations range from a verify batch (well under a second) to an M-step (hours).
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
STORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

SERVICE_INFO = Gauge("restem_service_info", "Always 1; the service and its version", ["service", "version"])

JOBS_STARTED = Counter("restem_jobs_started_total", "Job deliveries a worker started", ["job_type"])
JOBS_DONE = Counter("restem_jobs_completed_total", "Jobs a worker finished successfully", ["job_type"])
JOBS_FAILED = Counter(
    "restem_jobs_failed_total",
    "Job deliveries that failed: `permanent` (reported to the run at once) or `retry` (redelivered)",
    ["job_type", "kind"],
)
JOBS_REDELIVERED = Counter(
    "restem_jobs_redelivered_total",
    "Deliveries of a job that an earlier delivery did not finish",
    ["job_type"],
)
JOB_SECONDS = Histogram(
    "restem_job_duration_seconds",
    "Wall time of one job delivery",
    ["job_type", "outcome"],
    buckets=JOB_BUCKETS,
)
JOBS_IN_FLIGHT = Gauge("restem_jobs_in_flight", "Jobs this replica is working on now", ["job_type"])

STORE_SECONDS = Histogram(
    "restem_store_request_seconds",
    "Artifact store requests (retries included), by operation",
    ["op"],
    buckets=STORE_BUCKETS,
)
STORE_ERRORS = Counter(
    "restem_store_errors_total", "Artifact store requests that failed, by operation", ["op"]
)
STORE_BYTES = Counter(
    "restem_store_bytes_total", "Bytes moved to (`write`) or from (`read`) the artifact store", ["direction"]
)

NATS_CONNECTED = Gauge("restem_nats_connected", "1 while the NATS connection is up")
NATS_DISCONNECTS = Counter("restem_nats_disconnects_total", "Times the NATS connection dropped")
NATS_RECONNECTS = Counter("restem_nats_reconnects_total", "Times the NATS connection came back")


@contextlib.contextmanager
def store_request(op: str) -> Iterator[None]:
    """Time one store operation (`read`, `write`, `stat`, ...) and count it as an error if it raises."""
    started = time.perf_counter()
    try:
        yield
    except KeyError:
        raise  # ArtifactNotFound: an answer ("no such key"), not a failed request
    except Exception:
        STORE_ERRORS.labels(op).inc()
        raise
    finally:
        STORE_SECONDS.labels(op).observe(time.perf_counter() - started)


def store_bytes(direction: str, n: int) -> None:
    STORE_BYTES.labels(direction).inc(n)


def serve_metrics(cfg: MetricsConfig, service: str, version: str) -> int | None:
    """Start the /metrics endpoint when `cfg.port` is set; the bound port (None: no endpoint)."""
    SERVICE_INFO.labels(service, version).set(1)
    if cfg.port is None:
        return None
    server, _ = start_http_server(cfg.port, addr=cfg.host)
    port = int(server.server_port)
    if cfg.port_file is not None:
        write_port_file(cfg.port_file, port)
    log.info("metrics on http://%s:%d/metrics", cfg.host, port)
    return port


def write_port_file(path: Path, port: int) -> None:
    """The bound port, for whoever started the process (the local stack); never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)  # a reader never sees a half-written number
