"""One scale-bench session: the stack, the simulated fleet, runs started as a user starts them, metrics.

`Session` owns the processes (`scale_stack.Stack`), the simulated replicas (`sim_workers`), the
observer and the API probe. `start_run` writes the user's files and starts a run through the public
API, the way `restem run` does (upload the dataset files and the model directory, then StartRun).
`measure` turns what was observed into a `RunResult`: wall vs the ideal schedule, per-iteration
times, filter time, API latency, events/s, store size, and the lost / doubled shard checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared import keys
from shared.client.client import RunClient
from shared.client.files import upload_files
from shared.infra import NatsConfig

from .scale_data import write_apps_files, write_math_files, write_model_dir
from .scale_probe import ApiProbe, Observer, iteration_times, percentile, stream_counts, wait_until
from .scale_stack import Stack
from .sim_workers import Fleet, Ledger, PromptIndex, run_fleet


@dataclass(frozen=True)
class RunSpec:
    """One run's shape: what the user's config asks for."""

    task: str = "math"
    problems: int = 500
    k: int = 8
    iterations: int = 1
    shard_size: int = 8
    cutoff: int = 10
    validation: int = 100
    test: int = 100
    seed: int = 0
    eval_shard_size: int = 256

    def shards(self, slots: int) -> int:
        """Sample jobs of one iteration with `slots` sampler replicas (`sampler_slots`, as the chart sets)."""
        from services.coordinator.filtering import shard_count

        return shard_count(self.problems, self.shard_size, slots)

    def ideal_s(self, fleet: Fleet, runs_at_once: int = 1) -> dict[str, float]:
        """The simulated work alone, compressed as the bench runs it: E-step, M-step, one evaluation."""
        t = fleet.timing
        estep = t.generation_s(self.problems * self.k) * runs_at_once / fleet.samplers
        # evaluation in shards: the splits' generation spread evenly over the evaluators
        evals = t.generation_s(self.validation + self.test) * runs_at_once / max(1, fleet.evaluators)
        mstep = t.mstep_s / t.time_scale * runs_at_once / max(1, fleet.trainers)
        total = evals + self.iterations * (estep + mstep + evals)
        return {"estep": estep, "mstep": mstep, "eval": evals, "total": total}


def run_config(spec: RunSpec, files: dict[str, Path], model: Path, tokens: int) -> str:
    cfg = {
        "task": {"name": spec.task, "files": {k: str(v) for k, v in files.items()}},
        "model": {"base": str(model), "chat_template": False},
        "em": {
            "iterations": spec.iterations,
            "cutoff": min(spec.cutoff, spec.k),
            "shard_size": spec.shard_size,
        },
        "sampling": {"n": spec.k, "max_new_tokens": tokens, "seed": spec.seed},
        "training": {"validation_stopping": False},
        "evaluation": {
            "splits": [s for s in ("validation", "test") if getattr(spec, s)],
            "shard_size": spec.eval_shard_size,
        },
    }
    return yaml.safe_dump(cfg, sort_keys=False)


@dataclass
class RunResult:
    run_id: str
    spec: RunSpec
    status: str
    wall_s: float
    ideal: dict[str, float]
    iterations: list[dict[str, float | None]] = field(default_factory=list)
    get_ms: tuple[float, float] = (math.nan, math.nan)
    watch_ms: tuple[float, float] = (math.nan, math.nan)
    get_filter_ms: tuple[float, float] = (math.nan, math.nan)
    events_per_s: float = 0.0
    store_objects: int = 0
    store_bytes: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    sample_done_in_stream: int = 0
    kept_sha256: dict[int, str] = field(default_factory=dict)
    kept_identical: bool | None = None  # the kill case: kept sets equal those of a run without the kill
    rss_mib: float = 0.0  # the coordinator's peak (VmHWM) during the case
    evals: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # last iteration: split -> (problems, shard files)
    extra: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.ideal["total"]


class Session:
    """Stack + fleet + observer + API probe, for one or more runs; `async with Session.open(...)`."""

    def __init__(self, state: Path, stack: Stack, fleet: Fleet, observer: Observer, api: ApiProbe) -> None:
        self.state, self.stack, self.fleet, self.obs, self.api = state, stack, fleet, observer, api
        self.ledger = Ledger()
        self.index = PromptIndex()
        self.model = write_model_dir(state / "user" / "base-model")
        self._files: dict[tuple[str, int, int, int, int], dict[str, Path]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, state: Path, fleet: Fleet, *, s3: bool = False, verifiers: int = 1,
                   verifier_concurrency: int = 4, coordinator: dict[str, Any] | None = None,
                   ) -> AsyncIterator[Session]:  # fmt: skip
        """`coordinator`: settings of its config; by default fair share sized like the chart does
        (1.25x the sampler replicas, 1.25x the verifier replicas x their concurrency), and the
        E-step cut into a multiple of the sampler replicas."""
        settings = {
            "sample_jobs_per_run": (fleet.samplers * 5 + 3) // 4,
            "verify_jobs_per_run": (verifiers * verifier_concurrency * 5 + 3) // 4,
            "sampler_slots": fleet.samplers,
            **(coordinator or {}),
        }
        stack = await asyncio.to_thread(Stack, state, s3=s3, verifiers=verifiers,
                                        verifier_concurrency=verifier_concurrency, coordinator=settings)  # fmt: skip
        obs, api = Observer(), ApiProbe(stack.coordinator.address)
        session = cls(state, stack, fleet, obs, api)
        stop = asyncio.Event()
        try:
            await obs.start(stack.nats.url)
            verifier = stack.verifiers[0].address  # the evaluator's one channel, as configured today
            fleet_task = asyncio.create_task(run_fleet(fleet, NatsConfig(url=stack.nats.url), stack.store(),
                                                       session.index, verifier, stop, session.ledger))  # fmt: skip
            yield session
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fleet_task, 60)
            api.close()
            await obs.close()
            write_timeline(obs, state / "timeline.jsonl")
            await asyncio.to_thread(stack.close)

    def files(self, spec: RunSpec, apps: dict[str, Any] | None = None) -> dict[str, Path]:
        """The user's dataset files for `spec` (written once per shape), indexed for the generator."""
        shape = (spec.task, spec.problems, spec.validation, spec.test, spec.seed)
        if shape not in self._files:
            root = self.state / "user" / "-".join(map(str, shape))
            if spec.task == "math":
                paths = write_math_files(root, spec.seed, spec.problems, spec.validation, spec.test)
            else:
                sizes = {"train": spec.problems, "validation": spec.validation, "test": spec.test}
                paths = write_apps_files(root, spec.seed, sizes, **(apps or {}))
            for path in paths.values():
                self.index.add_file(path, spec.task)
            self._files[shape] = paths
        return self._files[shape]

    def start_run(self, spec: RunSpec, apps: dict[str, Any] | None = None) -> tuple[str, float]:
        """Upload the files and StartRun, as `restem run` does; (run id, monotonic start time)."""
        config = run_config(spec, self.files(spec, apps), self.model, self.fleet.timing.tokens_per_sample)
        with RunClient(self.stack.coordinator.address, timeout_s=300) as client:
            config, _ = upload_files(config, client, say=lambda _: None)
            started = time.monotonic()
            run = client.start_run(config)
        self.api.start(run.run_id)
        return run.run_id, started

    async def wait_finished(self, run_id: str, timeout_s: float) -> float:
        await wait_until(lambda: self.api.finished(run_id), timeout_s, f"run {run_id} to finish", 0.05)
        return time.monotonic()


def write_timeline(obs: Observer, path: Path) -> None:
    """Every observed job publish and event, in time order (to see where a case spent its time)."""
    rows = [(s.t, "job", run, kind, s.iteration, s.part) for (run, kind), v in obs.jobs.items() for s in v]
    rows += [
        (s.t, "event", run, kind, s.iteration, s.part) for (run, kind), v in obs.events.items() for s in v
    ]
    with path.open("w") as out:
        for t, what, run, kind, iteration, part in sorted(rows):
            out.write(json.dumps({"t": round(t, 4), "what": what, "run": run, "kind": kind,
                                  "iteration": iteration, "part": part}) + "\n")  # fmt: skip


def store_size(stack: Stack, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under a key prefix of the store."""
    if stack.s3 is None:
        root = Path(stack.store_spec["root"]) / prefix
        n = size = 0
        for dirpath, _, names in os.walk(root):
            for name in names:
                n += 1
                size += os.path.getsize(os.path.join(dirpath, name))
        return n, size
    rows = stack.store().listing(prefix)  # type: ignore[attr-defined]
    return len(rows), sum(r[1] for r in rows)


def replica_idle(busy: list[list[tuple[float, float]]], start: float, end: float) -> dict[str, float]:
    """Where the sampler replicas' time in an E-step [start, end] went, averaged over replicas:
    `idle_start` before their first generation, `idle_between` in gaps between generations,
    `idle_tail` after their last one (the end of the E-step waiting for the slowest replica)."""
    parts: dict[str, list[float]] = {"idle_start": [], "idle_between": [], "idle_tail": []}
    for spans in busy:
        mine = sorted((a, b) for a, b in spans if start <= a < end)
        if not mine:
            continue
        parts["idle_start"].append(mine[0][0] - start)
        parts["idle_between"].append(sum(max(0.0, a2 - b1) for (_, b1), (a2, _) in itertools.pairwise(mine)))
        parts["idle_tail"].append(end - mine[-1][1])
    return {k: sum(v) / len(v) for k, v in parts.items() if v}


def _ms(values: list[float]) -> tuple[float, float]:
    return percentile(values, 50) * 1000, percentile(values, 99) * 1000


async def measure(session: Session, run_id: str, spec: RunSpec, started: float, ended: float,
                  runs_at_once: int = 1) -> RunResult:  # fmt: skip
    from restem.coordinator.v1 import coordinator_pb2 as pb

    run = session.api.last[run_id]
    result = RunResult(run_id, spec, pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower(),
                       ended - started, spec.ideal_s(session.fleet, runs_at_once))  # fmt: skip
    if run.iterations:
        result.evals = {e.split: (e.num_problems, len(e.results_keys) or 1) for e in run.iterations[-1].evals}
    windows = []
    for it in range(1, spec.iterations + 1):
        times = iteration_times(session.obs, run_id, it)
        if times is None:
            result.notes.append(f"iteration {it}: not observed whole")
            continue
        result.iterations.append({
            **replica_idle(session.ledger.sampler_busy, times.first_sample_job, times.estep_end),
            "start_to_first_job": times.first_sample_job - times.start,
            "start_to_last_job": times.last_sample_job - times.start,
            "estep": times.estep_end - times.first_sample_job,
            "verify_tail": times.verify_end - times.estep_end,
            "filter": times.filter_s,
        })  # fmt: skip
        windows.append((times.verify_end, times.train_job or times.verify_end))
    result.get_ms = _ms(ApiProbe.latencies(session.api.get, (started, ended)))
    result.watch_ms = _ms(ApiProbe.latencies(session.api.watch, (started, ended)))
    result.get_filter_ms = _ms([x for w in windows for x in ApiProbe.latencies(session.api.get, w)])
    session.stack.memory.sample()
    result.rss_mib = session.stack.memory.peak_kib / 1024
    result.events_per_s = session.obs.event_count(run_id) / result.wall_s
    result.store_objects, result.store_bytes = await asyncio.to_thread(
        store_size, session.stack, keys.run_prefix(run_id)
    )
    await _check_shards(session, run_id, spec, result)
    return result


async def _check_shards(session: Session, run_id: str, spec: RunSpec, result: RunResult) -> None:
    """Lost: a shard without SampleDone or verdicts; doubled: samples computed twice, or two
    SampleDone for one shard in the events stream."""
    store, shards = session.stack.store(), spec.shards(session.fleet.samplers)
    for it in range(1, spec.iterations + 1):
        seen = {s.part for s in session.obs.of(run_id, "sample_done", it)}
        for shard in range(shards):
            verdicts = await asyncio.to_thread(store.exists, keys.verdicts_key(run_id, it, shard))
            if str(shard) not in seen or not verdicts:
                result.lost.append(f"i{it}.{shard}")
        kept = keys.kept_key(run_id, it)
        if await asyncio.to_thread(store.exists, kept):
            result.kept_sha256[it] = hashlib.sha256(
                await asyncio.to_thread(store.get_bytes, kept)
            ).hexdigest()
    result.doubled = session.ledger.doubled(f"sample.{run_id}.")
    extra = [v for k, v in session.ledger.sample_overhead_s.items() if k.startswith(f"sample.{run_id}.")]
    if extra:
        result.extra["sample_job_overhead_s"] = sum(extra) / len(extra)
        result.extra["sample_job_overhead_p99_s"] = percentile(extra, 99)
    counts = await stream_counts(
        session.stack.nats.url, "RESTEM_EVENTS", f"restem.events.{run_id}.sample_done"
    )
    result.sample_done_in_stream = sum(counts.values())
    if result.sample_done_in_stream > shards * spec.iterations:
        result.doubled.append(f"{result.sample_done_in_stream} SampleDone in the stream for "
                              f"{shards * spec.iterations} shards")  # fmt: skip
