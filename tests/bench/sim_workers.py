"""Simulated sampler, trainer and evaluator replicas for the scale bench: no model, no CPU to speak of.

Each replica is `EventBus.run_worker(job_type, handler)` (samplers pipelined, as the real one) on
the job type's shared durable consumer, as a real replica is, all of them asyncio workers in the
bench process. The
sample and eval handlers ARE the real services' (`services.sampler.events.SampleHandler`,
`services.evaluator.events.EvalHandler`: same idempotent writes, row schemas, Done events, gRPC
verification of evaluation answers) with `SimGenerator` in place of a model: it sleeps for the
simulated generation time in a thread (`time.sleep`, no CPU) and returns deterministic MATH/APPS
completions (`scale_data.SimTextModel`). The prepare and train handlers are stand-ins that write
what the coordinator and the samplers read: a checkpoint directory of `checkpoint_bytes` committed
by its manifest, and the same PrepareDone / TrainDone fields. A replica downloads each policy once
(as `CheckpointCache` does), so the store serves one checkpoint read per replica per iteration.

`Ledger` counts per job id how often a replica computed an output (the output did not exist yet):
more than once means work was done twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from restem.events.v1 import events_pb2 as ev

from shared.artifacts import DatasetCache
from shared.bus import EventBus
from shared.llm.generation import Completion
from shared.store import ArtifactStore
from shared.tasks import load_problems, loads_jsonl, user_message
from shared.worker import WorkerState, announce, run_is_over, typed_handler

from .scale_data import SimTextModel

MODEL_INFO = "restem_model.json"  # what the trainer's prepare job stores beside a model
TRAIN_SUMMARY = "restem_train.json"


@dataclass(frozen=True)
class TimeModel:
    """Simulated work: generation at `tokens_per_s` per replica, everything divided by `time_scale`."""

    tokens_per_s: float = 8000.0
    tokens_per_sample: int = 600
    time_scale: float = 10.0
    mstep_s: float = 120.0  # one M-step, uncompressed
    checkpoint_bytes: int = 16 * 2**20

    def generation_s(self, sequences: int) -> float:
        return sequences * self.tokens_per_sample / self.tokens_per_s / self.time_scale


@dataclass
class Ledger:
    """Per job id: deliveries handled, and outputs computed (not found already written)."""

    handled: Counter[str] = field(default_factory=Counter)
    computed: Counter[str] = field(default_factory=Counter)
    checkpoint_fetches: int = 0
    checkpoint_bytes: int = 0
    # sample job id -> seconds its handler took beyond the simulated generation (the replica's own
    # work: job, dataset, prompts, writing the samples, the event; and waiting for a policy download)
    sample_overhead_s: dict[str, float] = field(default_factory=dict)
    sampler_busy: list[list[tuple[float, float]]] = field(default_factory=list)  # per sampler replica

    def doubled(self, prefix: str = "") -> list[str]:
        return sorted(j for j, n in self.computed.items() if n > 1 and j.startswith(prefix))


class PromptIndex:
    """The problem behind a rendered prompt (the generator sees prompts only), from the user's files."""

    def __init__(self) -> None:
        self._by_digest: dict[bytes, dict[str, Any]] = {}

    def add_file(self, path: Path, task: str) -> None:
        for p in load_problems(path, task):
            self._by_digest[self._digest(user_message(task, p))] = {"id": p["id"], "answer": p["answer"]}

    @staticmethod
    def _digest(prompt: str) -> bytes:
        return hashlib.blake2b(prompt.encode(), digest_size=16).digest()

    def problem(self, prompt: str) -> dict[str, Any]:
        return self._by_digest[self._digest(prompt)]


class SimGenerator:
    """A policy that sleeps for its generation time and writes `SimTextModel` completions."""

    backend = "simulated-scale"
    tokenizer = None

    def __init__(self, index: PromptIndex, fleet: Fleet) -> None:
        self.index, self.fleet = index, fleet  # the fleet's text model may change between runs

    def generate(
        self,
        prompts: Sequence[str],
        params: Any,
        *,
        seeds: Sequence[Sequence[int]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        started, text, timing = time.monotonic(), self.fleet.text, self.fleet.timing
        out = []
        for i, prompt in enumerate(prompts):
            problem = self.index.problem(prompt)
            # Greedy evaluation has no seeds: one fixed answer per problem.
            row_seeds = seeds[i] if seeds is not None else [int.from_bytes(problem["id"].encode()[-6:])]
            texts = [text.completion(problem, s) for s in row_seeds[: params.n]]
            n = timing.tokens_per_sample
            out.append([Completion(text=t, num_tokens=n, finish_reason="stop") for t in texts])
        # The row building above is real CPU; the sleep is what a GPU would take.
        left = timing.generation_s(len(prompts) * params.n) - (time.monotonic() - started)
        time.sleep(max(0.0, left))
        if on_progress is not None:
            on_progress(len(prompts) * params.n)
        return out


class ReplicaGenerator:
    """The shared `SimGenerator` as one replica sees it: records when this replica's model is busy."""

    backend = SimGenerator.backend
    tokenizer = None

    def __init__(self, sim: SimGenerator, busy: list[tuple[float, float]]) -> None:
        self.sim, self.busy = sim, busy

    def generate(self, prompts: Sequence[str], params: Any, **kwargs: Any) -> list[list[Completion]]:
        started = time.monotonic()
        try:
            return self.sim.generate(prompts, params, **kwargs)
        finally:
            self.busy.append((started, time.monotonic()))


class SimCheckpoints:
    """One replica's `CheckpointCache`: downloads a policy's files once (a prefetch and a job share
    the download), then hands out the generator."""

    def __init__(self, store: ArtifactStore, generator: SimGenerator, ledger: Ledger) -> None:
        self.store, self.ledger = store, ledger
        self.busy: list[tuple[float, float]] = []  # (start, end) of each generation on this replica
        self.sim = ReplicaGenerator(generator, self.busy)
        self._have: set[str] = set()
        self._disk: dict[str, asyncio.Future[None]] = {}

    def _download(self, key: str) -> int:
        manifest = json.loads(self.store.get_bytes(f"{key}/MANIFEST.json"))
        return sum(len(self.store.get_bytes(f"{key}/{rel}")) for rel in manifest["files"])

    async def _counted(self, key: str) -> None:
        nbytes = await asyncio.to_thread(self._download, key)
        self.ledger.checkpoint_fetches += 1
        self.ledger.checkpoint_bytes += nbytes

    async def fetch(self, key: str) -> Path:
        task = self._disk.get(key)
        if task is None or (task.done() and task.exception() is not None):
            task = self._disk[key] = asyncio.ensure_future(self._counted(key))
        await asyncio.shield(task)
        return Path(key)

    async def generator(self, key: str) -> ReplicaGenerator:
        if key not in self._have:
            await self.fetch(key)
            self._have = {key}  # one policy in memory at a time, as the real cache
        return self.sim


def write_checkpoint(store: ArtifactStore, key: str, nbytes: int, extra: dict[str, bytes]) -> None:
    """A directory artifact of about `nbytes` (one weights file) committed by its manifest."""
    with tempfile.TemporaryDirectory(prefix="sim-ckpt-") as tmp:
        root = Path(tmp)
        with (root / "model.safetensors").open("wb") as f:
            block = b"\x5a" * 2**20
            for start in range(0, nbytes, len(block)):
                f.write(block[: min(len(block), nbytes - start)])
        (root / "config.json").write_text(json.dumps({"architectures": ["SimulatedForCausalLM"]}))
        for name, data in extra.items():
            (root / name).write_bytes(data)
        store.put_dir(key, root)


class SimTrainer:
    """Prepare and train jobs: the artifacts and events of the real trainer, after a sleep."""

    def __init__(self, bus: EventBus, store: ArtifactStore, timing: TimeModel, ledger: Ledger) -> None:
        self.bus, self.store, self.timing, self.ledger = bus, store, timing, ledger

    async def prepare(self, job: ev.PrepareJob) -> None:
        started = time.monotonic()
        self.ledger.handled[job.job_id] += 1
        info = {"architecture": "SimulatedForCausalLM", "num_parameters": 8_000_000_000}
        if not await asyncio.to_thread(self.store.dir_exists, job.model_key):
            self.ledger.computed[job.job_id] += 1
            extra = {MODEL_INFO: json.dumps(info).encode()}
            await asyncio.to_thread(
                write_checkpoint, self.store, job.model_key, self.timing.checkpoint_bytes, extra
            )
        await announce(self.bus, job, ev.PrepareDone, started, **info, max_position_embeddings=4096)

    async def train(self, job: ev.TrainJob) -> None:
        self.ledger.handled[job.job_id] += 1
        if not await asyncio.to_thread(self.store.dir_exists, job.output_key):
            self.ledger.computed[job.job_id] += 1
            kept = loads_jsonl(await asyncio.to_thread(self.store.get_bytes, job.kept_key))
            await asyncio.sleep(self.timing.mstep_s / self.timing.time_scale)
            summary = {
                "steps": max(1, len(kept) // 64),
                "examples": len(kept),
                "seconds": self.timing.mstep_s,
            }
            summary["tokens"] = len(kept) * self.timing.tokens_per_sample
            extra = {TRAIN_SUMMARY: json.dumps(summary).encode()}
            await asyncio.to_thread(
                write_checkpoint, self.store, job.output_key, self.timing.checkpoint_bytes, extra
            )
        summary = json.loads(
            await asyncio.to_thread(self.store.get_bytes, f"{job.output_key}/{TRAIN_SUMMARY}")
        )
        fields = {k: summary[k] for k in ("steps", "examples", "tokens", "seconds")}
        await announce(
            self.bus,
            job,
            ev.TrainDone,
            checkpoint_key=job.output_key,
            loss_first=1.0,
            loss_last=0.5,
            **fields,
        )


@dataclass
class Fleet:
    """How many simulated replicas of each kind, and how they behave."""

    samplers: int = 8
    trainers: int = 1
    evaluators: int = 2
    timing: TimeModel = field(default_factory=TimeModel)
    text: SimTextModel = field(default_factory=SimTextModel)
    ack_wait_s: float = 30.0
    max_deliver: int = 3
    prefetch_spread_s: float | None = 10.0  # the sampler's setting (None: off), divided by the time scale
    pipelined: bool = True  # as the sampler: the next shard pulled once the last one has generated


def _counted(handle: Callable[[Any], Any], store: ArtifactStore, ledger: Ledger) -> Callable[[Any], Any]:
    """Count deliveries and computations (output not yet in the store) of a real handler."""

    async def wrapped(job: Any) -> None:
        ledger.handled[job.job_id] += 1
        if not await asyncio.to_thread(store.exists, job.output_key):
            ledger.computed[job.job_id] += 1
        await handle(job)

    return wrapped


async def run_fleet(
    fleet: Fleet,
    nats: Any,
    store: ArtifactStore,
    index: PromptIndex,
    verifier: str,
    stop: asyncio.Event,
    ledger: Ledger,
) -> None:
    """Run every simulated replica until `stop`, counting their work in `ledger`."""
    import grpc
    from restem.verifier.v1 import verifier_pb2_grpc

    import shared.llm.checkpoint  # noqa: F401  (imports torch: once here, not inside the first eval job)
    from services.evaluator.events import EvalHandler
    from services.sampler.events import SampleHandler
    from services.sampler.prefetch import prefetch_hinted

    # Sleeping generators hold a thread each: the default pool (cores + 4) would serialise them.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=fleet.samplers + 32))
    bus = await EventBus.connect(nats, name="bench-sim")
    await bus.ensure_topology()
    channel = grpc.aio.insecure_channel(verifier)
    sim = SimGenerator(index, fleet)
    trainer = SimTrainer(bus, store, fleet.timing, ledger)
    workers = []

    def worker(job_type: str, cls: type, handle: Callable[[Any], Any], pipelined: bool = False) -> None:
        state = WorkerState(f"sim-{job_type}")
        handler = typed_handler(bus, job_type, cls, handle, state, max_deliver=fleet.max_deliver)
        workers.append(bus.run_worker(job_type, handler, stop=stop, concurrency=2 if pipelined else 1,
                                      pipelined=pipelined, ack_wait_s=fleet.ack_wait_s,
                                      max_deliver=fleet.max_deliver, abandon_if=run_is_over(bus)))  # fmt: skip

    stops = []

    def timed(handle: Callable[[ev.SampleJob], Any]) -> Callable[[ev.SampleJob], Any]:
        async def wrapped(job: ev.SampleJob) -> None:
            started = time.monotonic()
            await handle(job)
            generation = fleet.timing.generation_s(len(job.problem_ids) * job.params.n)
            ledger.sample_overhead_s[job.job_id] = time.monotonic() - started - generation

        return wrapped

    # On a cluster every replica reads and parses a run's train split once, on its own CPU, at the
    # same time as the others; here they share one process, and 64 parses one after another would
    # bill the simulation's single core to the E-step. One cache stands for those parallel parses.
    datasets = DatasetCache(store)
    for _ in range(fleet.samplers):
        checkpoints = SimCheckpoints(store, sim, ledger)
        ledger.sampler_busy.append(checkpoints.busy)
        sampler = SampleHandler(bus, store, checkpoints, max_samples=1 << 30)  # type: ignore[arg-type]
        sampler.datasets = datasets
        worker("sample", ev.SampleJob, _counted(timed(sampler), store, ledger), pipelined=fleet.pipelined)
        if fleet.prefetch_spread_s is not None:
            spread = fleet.prefetch_spread_s / fleet.timing.time_scale
            stops.append(await prefetch_hinted(bus, checkpoints, spread))
    for _ in range(fleet.evaluators):
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        evaluator = EvalHandler(bus, store, SimCheckpoints(store, sim, ledger), stub, 600.0)  # type: ignore[arg-type]
        worker("eval", ev.EvalJob, _counted(evaluator, store, ledger))
    for _ in range(fleet.trainers):
        worker("prepare", ev.PrepareJob, trainer.prepare)
        worker("train", ev.TrainJob, trainer.train)
    try:
        await asyncio.gather(*workers)
    finally:
        for stop_prefetch in stops:
            await stop_prefetch()
        await channel.close()
        await bus.close()
