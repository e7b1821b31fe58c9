"""The coordinator's Prometheus metrics (the shared store and NATS ones: `shared.telemetry`).

The coordinator runs always (one replica), so it also reports the work queues' backlog: a worker
Deployment scaled to zero by KEDA cannot report its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.bus import JOB_TYPES, EventBus

from .core import PHASE_NAMES

log = logging.getLogger("restem.coordinator.metrics")

RUNS = Gauge("restem_coordinator_runs", "Runs by status", ["status"])
EVENTS = Counter("restem_coordinator_events_total", "Events handled, by kind", ["event"])
JOBS_PUBLISHED = Counter(
    "restem_coordinator_jobs_published_total", "Jobs published (re-publishes included)", ["job_type"]
)
PHASE_SECONDS = Histogram(
    "restem_coordinator_phase_seconds",
    "Wall time of a run's phase (preparing, sampling, verifying, training, evaluating), at its end",
    ["phase"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
FILTER_SECONDS = Histogram(
    "restem_coordinator_filter_seconds",
    "Time to filter an iteration's verified samples (or plan its next sampling round)",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
QUEUE_PENDING = Gauge(
    "restem_queue_pending_jobs", "Jobs waiting in the work queue, by job type", ["job_type"]
)
QUEUE_UNACKED = Gauge(
    "restem_queue_unacked_jobs", "Jobs handed to a worker and not yet finished, by job type", ["job_type"]
)


def phase_name(phase: int) -> str:
    """The phase as `Iteration.phase_seconds` names it, `done` at the end ("" unset)."""
    return "done" if phase == pb.PHASE_DONE else PHASE_NAMES.get(phase, "")  # type: ignore[call-overload]


def phase_ended(run: pb.Run, old_phase: int, old_started: datetime) -> None:
    """Observe the phase a state change ended (called once the change is stored)."""
    if run.phase != old_phase and old_phase in PHASE_NAMES:
        PHASE_SECONDS.labels(phase_name(old_phase)).observe((datetime.now(UTC) - old_started).total_seconds())


async def sample_state(bus: EventBus) -> None:
    """Runs by status (from the run records) and each work queue's backlog (from its consumer)."""
    by_status = Tally(
        pb.RunStatus.Name(pb.Run.FromString(value).status).removeprefix("RUN_STATUS_").lower()
        for _, value, _ in await bus.runs.entries()
    )
    for status in pb.RunStatus.DESCRIPTOR.values_by_name:
        name = status.removeprefix("RUN_STATUS_").lower()
        if name != "unspecified":
            RUNS.labels(name).set(by_status.get(name, 0))
    js = bus.client.jetstream()
    for job_type in JOB_TYPES:
        try:
            info = await js.consumer_info(bus.jobs_stream, f"{job_type}-workers")
        except Exception:  # no worker has created the consumer yet: the queue holds what was published
            continue
        QUEUE_PENDING.labels(job_type).set(info.num_pending or 0)
        QUEUE_UNACKED.labels(job_type).set(info.num_ack_pending or 0)


async def watch(bus: EventBus, stop: asyncio.Event, every_s: float) -> None:
    while not stop.is_set():
        try:
            await sample_state(bus)
        except Exception as exc:  # NATS away for a moment: the next sample catches up
            log.debug("metrics sample skipped: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
