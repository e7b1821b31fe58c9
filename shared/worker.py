"""The work-queue services' common part: wiring, typed job calls, failure reporting, idempotent outputs.

`run_worker_service` is a worker service's whole life once its config is loaded: it opens the bus
and the store, lets the service wire its handlers (`Wiring`: the queues it pulls, its gRPC API) and
pulls every queue until SIGTERM. A handler makes its output once per job (`rows_once`: a redelivered
job reads back what an earlier delivery wrote) and announces it (`announce`, deduplicated by job id).

A handler gets the decoded job message. It raises `PermanentError` (re-exported from the bus)
when retrying cannot help; the run's coordinator is then told at once through a `JobFailed`
event, and the bus dead-letters the message. Any other exception is retried with backoff; on the
last allowed delivery the failure is reported the same way, so a run never waits forever on a job
that will not succeed. An unreachable store (`StoreUnavailable`) is retried in place first, with
jittered backoff for up to `STORE_OUTAGE_S`, so an outage does not use up the job's deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from restem.common.v1 import common_pb2
from restem.coordinator.v1 import coordinator_pb2
from restem.events.v1 import events_pb2

from shared import __version__, abandon, telemetry
from shared.bus import Delivery, EventBus, PermanentError
from shared.grpc_server import ServiceBinding
from shared.logs import job_context
from shared.service import ServiceConfig, WorkerLoop, open_service, run_service
from shared.store import ArtifactStore, StoreUnavailable
from shared.tasks import dumps_jsonl, loads_jsonl

log = logging.getLogger("restem.worker")
PHASES = {
    "prepare": "preparing",
    "sample": "sampling",
    "verify": "verifying",
    "train": "training",
    "eval": "evaluating",
}
STORE_OUTAGE_S = 600.0  # how long a job waits for an unreachable store before it counts as failed
J = TypeVar("J", bound=Message)


@dataclass
class WorkerState:
    """What a worker service is doing, served by its GetStats RPC."""

    service: str
    device: str = ""
    backend: str = ""  # generation backend (sampler, evaluator), shown by GetStats
    active_jobs: set[str] = field(default_factory=set)
    jobs_done: int = 0
    jobs_failed: int = 0
    loaded_checkpoints: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def to_proto(self) -> common_pb2.WorkerStats:
        return common_pb2.WorkerStats(
            service=self.service,
            version=__version__,
            active_jobs=sorted(self.active_jobs),
            jobs_done=self.jobs_done,
            jobs_failed=self.jobs_failed,
            loaded_checkpoints=self.loaded_checkpoints,
            device=self.device,
            backend=self.backend,
        )


async def report_failure(bus: EventBus, job_type: str, job: Any, reason: str) -> None:
    failed = events_pb2.JobFailed(run_id=job.run_id, job_id=job.job_id, job_type=job_type, reason=reason)
    await bus.publish_event(
        job.run_id, "job_failed", failed.SerializeToString(), msg_id=f"{job.job_id}.failed"
    )


async def _riding_out_store_outages(
    handle: Callable[[J], Awaitable[None]], job: J, job_type: str, job_id: str, budget_s: float
) -> None:
    """`handle(job)`, re-run while the store is unavailable, for up to `budget_s` seconds.

    Retrying here instead of through redelivery keeps an outage from using up the job's
    max_deliver (the heartbeat keeps the message ours meanwhile); handlers are idempotent.
    """
    deadline = time.monotonic() + budget_s
    delay = 1.0
    while True:
        try:
            await handle(job)
            return
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s job %s: store unavailable (%s); retrying in %.1fs", job_type, job_id, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0) * random.uniform(0.75, 1.25)  # jitter: replicas must not retry in step


_OVER = (
    coordinator_pb2.RUN_STATUS_SUCCEEDED,
    coordinator_pb2.RUN_STATUS_FAILED,
    coordinator_pb2.RUN_STATUS_CANCELLED,
)


def run_is_over(bus: EventBus) -> Callable[[str], Awaitable[bool]]:
    """`abandon_if` for `EventBus.run_worker`: the run's state in the KV bucket says it ended.

    A run with no state is not over: a job is never dropped for a run this bus cannot see. Nor is a
    finished run being re-verified (`ReverifyRun`): its verify jobs are wanted."""

    async def over(run_id: str) -> bool:
        entry = await bus.runs.get(run_id)
        if entry is None:
            return False
        run = coordinator_pb2.Run.FromString(entry[0])
        return run.status in _OVER and all(r.done for r in run.reverifications)

    return over


class _JobMeter:
    """A job delivery's metrics: started (and redelivered), in flight, then done or failed, timed."""

    def __init__(self, job_type: str, num_delivered: int) -> None:
        self.job_type, self.outcome, self.num_delivered = job_type, "done", num_delivered

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> _JobMeter:
        self.started = time.monotonic()
        telemetry.JOBS_STARTED.labels(self.job_type).inc()
        if self.num_delivered > 1:
            telemetry.JOBS_REDELIVERED.labels(self.job_type).inc()
        telemetry.JOBS_IN_FLIGHT.labels(self.job_type).inc()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        telemetry.JOBS_IN_FLIGHT.labels(self.job_type).dec()
        telemetry.JOB_SECONDS.labels(self.job_type, self.outcome).observe(self.seconds())
        if self.outcome == "done" and exc_type is None:
            telemetry.JOBS_DONE.labels(self.job_type).inc()
        elif self.outcome in ("permanent", "retry"):
            telemetry.JOBS_FAILED.labels(self.job_type, self.outcome).inc()


def typed_handler(
    bus: EventBus,
    job_type: str,
    message_cls: type[J],
    handle: Callable[[J], Awaitable[None]],
    state: WorkerState,
    *,
    max_deliver: int,
    store_outage_s: float = STORE_OUTAGE_S,
) -> Callable[[Delivery], Awaitable[None]]:
    async def on_delivery(delivery: Delivery) -> None:
        try:
            job = message_cls.FromString(delivery.data)
        except DecodeError as exc:
            raise PermanentError(
                f"{job_type} job on {delivery.subject} is not a valid {message_cls.__name__}"
            ) from exc
        job_id = getattr(job, "job_id", "?")
        context = job_context(
            run_id=getattr(job, "run_id", None),
            iteration=getattr(job, "iteration", None),
            job_id=job_id,
            job_type=job_type,
            phase=PHASES.get(job_type),
        )
        with context, _JobMeter(job_type, delivery.num_delivered) as meter:
            state.active_jobs.add(job_id)
            try:
                await _riding_out_store_outages(handle, job, job_type, job_id, store_outage_s)
            except abandon.Abandoned:
                meter.outcome = "abandoned"
                raise  # the run is over: not a failure of this job (the bus terminates the message)
            except PermanentError as exc:
                state.jobs_failed += 1
                meter.outcome = "permanent"
                log.error("%s job %s failed permanently: %s", job_type, job_id, exc)
                await report_failure(bus, job_type, job, str(exc))
                raise
            except Exception as exc:
                state.jobs_failed += 1
                meter.outcome = "retry"
                if delivery.num_delivered >= max_deliver:
                    await report_failure(bus, job_type, job, f"gave up after {max_deliver} attempts: {exc!r}")
                raise
            finally:
                state.active_jobs.discard(job_id)
            state.jobs_done += 1
            log.info("%s job %s done in %.1fs", job_type, job_id, meter.seconds())

    return on_delivery


@dataclass(frozen=True)
class JobQueue:
    """A work queue a service pulls: its job type, message class, handler and jobs in flight per replica."""

    job_type: str
    message_cls: type[Message]
    handle: Callable[[Any], Awaitable[None]]
    concurrency: int = 1
    pipelined: bool = False  # see `shared.ordering.ModelSlot`


@dataclass
class Wiring:
    """What a worker service adds to the skeleton: its queues, its gRPC API and its own health / cleanup."""

    queues: list[JobQueue]
    bindings: list[ServiceBinding]
    healthy: Callable[[], bool] | None = None
    close: Callable[[], Awaitable[None]] | None = None


class WorkerConfig(ServiceConfig, Protocol):
    @property
    def max_deliver(self) -> int: ...
    @property
    def ack_wait_s(self) -> float: ...


Wire = Callable[[EventBus, ArtifactStore, WorkerState], Awaitable[Wiring]]


async def run_worker_service(name: str, cfg: WorkerConfig, wire: Wire, *, device: str = "") -> None:
    """Open the bus and the store, wire the service, pull its queues until SIGTERM, then clean up."""
    bus, store = await open_service(name, cfg)
    state = WorkerState(name, device=device)
    wiring = await wire(bus, store, state)
    loops = [_work_loop(bus, queue, cfg, state) for queue in wiring.queues]
    try:
        await run_service(name, cfg.grpc, bus, wiring.bindings, loops, healthy=wiring.healthy, store=store)
    finally:
        if wiring.close is not None:
            await wiring.close()


def _work_loop(bus: EventBus, queue: JobQueue, cfg: WorkerConfig, state: WorkerState) -> WorkerLoop:
    handler = typed_handler(
        bus, queue.job_type, queue.message_cls, queue.handle, state, max_deliver=cfg.max_deliver
    )

    async def loop(stop: asyncio.Event) -> None:
        await bus.run_worker(
            queue.job_type,
            handler,
            stop=stop,
            concurrency=queue.concurrency,
            pipelined=queue.pipelined,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    return loop


async def rows_once(
    store: ArtifactStore, key: str, compute: Callable[[], Awaitable[list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    """The JSONL rows at `key`: read back when an earlier delivery of the job wrote them, else computed
    and written. The write is the job's commit point: a job killed before it is simply done again."""
    if await asyncio.to_thread(store.exists, key):
        return loads_jsonl(await asyncio.to_thread(store.get_bytes, key))
    rows = await compute()
    # Encoded in the thread too: a shard of samples is megabytes of JSON, and the event loop keeps
    # the job heartbeats (and a pipelined sampler's next pull) going meanwhile.
    await asyncio.to_thread(lambda: store.put_bytes(key, dumps_jsonl(rows)))
    return rows


async def announce(
    bus: EventBus, job: Any, done_cls: type[Message], started: float | None = None, **fields: Any
) -> None:
    """Publish the job's Done event (`SampleDone` as `sample_done`) to its run.

    Every field the Done shares with its job by name (run and job id, iteration, shard, split,
    variant, model key) is copied from the job, and `seconds` is the time since `started` unless
    given; the job id dedupes a redelivered job's second announcement.
    """
    names = done_cls.DESCRIPTOR.fields_by_name
    echoed = {name: getattr(job, name) for name in job.DESCRIPTOR.fields_by_name if name in names}
    if started is not None:
        fields.setdefault("seconds", time.monotonic() - started)
    done = done_cls(**echoed, **fields)
    event = re.sub(r"(?<!^)(?=[A-Z])", "_", done_cls.__name__).lower()
    await bus.publish_event(job.run_id, event, done.SerializeToString(), msg_id=f"{job.job_id}.done")
