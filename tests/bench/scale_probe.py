"""What the scale bench measures from outside the coordinator: job publishes, events, API latency.

`Observer` is a plain (core) NATS subscriber on `restem.jobs.>` and `restem.events.>`: core
subscribers see every message published to a stream's subjects, so it timestamps each job the
coordinator publishes and each result event the workers publish, without taking them from any
consumer. A re-published job or re-announced event is seen again (it is a new publish, even when
the stream dedupes it); counts of what the streams hold come from `stream_counts`.

`ApiProbe` is a gRPC client polling GetRun, and opening WatchRun for its first message, from a
thread during the run: the latency a user or a dashboard sees, per phase of the run.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

JOBS: dict[str, Any] = {"prepare": ev.PrepareJob, "sample": ev.SampleJob, "verify": ev.VerifyJob, "train": ev.TrainJob,
        "eval": ev.EvalJob}  # fmt: skip
EVENTS: dict[str, Any] = {"prepare_done": ev.PrepareDone, "sample_done": ev.SampleDone, "verify_done": ev.VerifyDone,
          "train_done": ev.TrainDone, "eval_done": ev.EvalDone, "job_failed": ev.JobFailed}  # fmt: skip


@dataclass(frozen=True)
class Seen:
    t: float  # time.monotonic() when it arrived
    iteration: int
    part: str  # shard number or split; "" when the message has neither


def _seen(t: float, msg: Any) -> Seen:
    part = str(msg.shard) if hasattr(msg, "shard") else getattr(msg, "split", "")
    if getattr(msg, "variant", ""):
        part = f"{msg.variant}.{part}"
    return Seen(t, int(getattr(msg, "iteration", 0)), part)


@dataclass
class Observer:
    jobs: dict[tuple[str, str], list[Seen]] = field(default_factory=lambda: defaultdict(list))
    events: dict[tuple[str, str], list[Seen]] = field(default_factory=lambda: defaultdict(list))
    hooks: list[Callable[[str, str, str, Seen], None]] = field(default_factory=list)
    _nc: Any = None

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url, name="bench-observer")
        limits = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 1 << 30}
        await self._nc.subscribe("restem.jobs.>", cb=self._on_job, **limits)
        await self._nc.subscribe("restem.events.>", cb=self._on_event, **limits)

    async def _on_job(self, msg: Any) -> None:
        _, _, job_type, run_id = msg.subject.split(".", 3)
        cls = JOBS.get(job_type)
        if cls is not None:
            self._add(self.jobs, "job", run_id, job_type, _seen(time.monotonic(), cls.FromString(msg.data)))

    async def _on_event(self, msg: Any) -> None:
        _, _, run_id, kind = msg.subject.split(".", 3)
        cls = EVENTS.get(kind)
        if cls is not None:
            self._add(self.events, "event", run_id, kind, _seen(time.monotonic(), cls.FromString(msg.data)))

    def _add(self, where: dict[tuple[str, str], list[Seen]], what: str, run: str, kind: str, s: Seen) -> None:
        where[(run, kind)].append(s)
        for hook in list(self.hooks):
            hook(what, run, kind, s)

    def of(self, run: str, kind: str, iteration: int | None = None, *, job: bool = False) -> list[Seen]:
        seen = (self.jobs if job else self.events).get((run, kind), [])
        return [s for s in seen if iteration is None or s.iteration == iteration]

    def event_count(self, run: str) -> int:
        return sum(len(v) for (r, _), v in self.events.items() if r == run)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@dataclass
class IterationTimes:
    """One iteration of one run, from the observed messages (seconds since `start`)."""

    start: float
    first_sample_job: float
    last_sample_job: float
    estep_end: float  # last SampleDone
    verify_end: float  # last VerifyDone
    train_job: float | None  # None when the M-step was skipped or not reached

    @property
    def filter_s(self) -> float | None:
        return None if self.train_job is None else self.train_job - self.verify_end


def iteration_times(obs: Observer, run: str, iteration: int) -> IterationTimes | None:
    """Start = the last EvalDone of the previous iteration (what makes the coordinator start this one)."""
    evals = [s.t for s in obs.of(run, "eval_done", iteration - 1) if "." not in s.part]
    jobs = [s.t for s in obs.of(run, "sample", iteration, job=True)]
    samples = [s.t for s in obs.of(run, "sample_done", iteration)]
    verifies = [s.t for s in obs.of(run, "verify_done", iteration)]
    if not (evals and jobs and samples and verifies):
        return None
    train = [s.t for s in obs.of(run, "train", iteration, job=True) if not s.part]
    return IterationTimes(
        max(evals), min(jobs), max(jobs), max(samples), max(verifies), min(train, default=None)
    )


async def stream_counts(url: str, stream: str, subject: str) -> Counter[str]:
    """How many messages the stream holds per subject (after its deduplication)."""
    nc = await nats.connect(url, name="bench-counts")
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
        return Counter({s: int(n) for s, n in (info.state.subjects or {}).items()})
    finally:
        await nc.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


class ApiProbe:
    """Polls GetRun every `every_s` (and WatchRun's first message every 5th time) from a thread."""

    def __init__(self, address: str, every_s: float = 0.1) -> None:
        from restem.coordinator.v1 import coordinator_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.RunServiceStub(self.channel)
        self.every_s = every_s
        self.get: list[tuple[float, float]] = []  # (time sent, latency s)
        self.watch: list[tuple[float, float]] = []
        self.errors = 0
        self.run_ids: list[str] = []
        self.last: dict[str, pb.Run] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, run_id: str) -> None:
        self.run_ids.append(run_id)
        if not self._thread.is_alive():
            self._thread.start()

    def _timed(self, call: Callable[[], pb.Run], into: list[tuple[float, float]]) -> pb.Run | None:
        started = time.monotonic()
        try:
            run = call()
        except grpc.RpcError:
            self.errors += 1  # e.g. the coordinator is being restarted
            return None
        into.append((started, time.monotonic() - started))
        return run

    def _get(self, run_id: str) -> pb.Run:
        return self.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run

    def _watch_first(self, run_id: str) -> pb.Run:
        stream = self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30)
        try:
            return next(iter(stream)).run
        finally:
            stream.cancel()

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.every_s):
            for run_id in list(self.run_ids):
                run = self._timed(functools.partial(self._get, run_id), self.get)
                if run is not None:
                    self.last[run_id] = run
                if n % 5 == 0:
                    self._timed(functools.partial(self._watch_first, run_id), self.watch)
            n += 1

    @staticmethod
    def latencies(
        samples: list[tuple[float, float]], window: tuple[float, float] | None = None
    ) -> list[float]:
        """Latencies of the calls sent within `window` (all of them without one)."""
        lo, hi = window if window is not None else (float("-inf"), float("inf"))
        return [lat for t, lat in samples if lo <= t <= hi]

    def finished(self, run_id: str) -> bool:
        run = self.last.get(run_id)
        done = (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED)
        return run is not None and run.status in done and bool(run.report_key)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.channel.close()


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(every_s)
