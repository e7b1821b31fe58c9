"""Sampler benchmarks: service vs raw backend, replica scaling, adaptive vs fixed-K sampling.

    python tests/bench/bench_sampler.py              (make bench-sampler: ratio + scaling, ~4 min)
    python tests/bench/bench_sampler.py --adaptive   (make bench-adaptive: two demo runs, ~10 min)

1. **Service / raw** (transformers backend, CPU): the demo's E-step of iteration 1 (64 arithmetic
   problems x K=8, the shards and iteration seed the coordinator sends) generated twice in the same
   run: by `TransformersGenerator.generate` called in this process, and by a real sampler process
   pulling the same `SampleJob`s from NATS JetStream and writing them to the local store. Both have
   the model loaded first (a warm-up job for the service); the service's time runs from the first
   publish to the last `SampleDone`. Same seeds and batches, so both generate the same tokens.
2. **Scaling**: 1, 2, 4 sampler replicas (real processes on one work queue) with the
   *simulated fixed-latency backend* of tests/bench/sim_sampler.py: generation is a sleep per token,
   so on this 2-core machine the table measures the orchestration (queue, heartbeats, store writes,
   events), not a model. Each replica's GetStats says how many shards it did.
   Both sides run with OMP_WAIT_POLICY=PASSIVE (see below).
3. **Adaptive vs fixed K** (`--adaptive`): examples/arithmetic-demo.yaml through the local stack
   twice, as is and with `sampling.adaptive.enabled: true` (or `--adaptive-settings`): tokens
   generated, kept samples and test pass@1 per iteration, and wall time. Per iteration it also reads
   both runs' samples and kept sets from the store: how many problems stopped after round 1, how
   many of the adaptive samples equal the fixed-K sample of the same (problem, index) (all of them
   while both runs sample from the same policy: a sample's seed is its problem and index, not its
   shard or round), and whether the kept sets are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# Measured here: on a 2-core machine with other processes busy, libgomp's default active spin-wait made
# generate() called from the main thread 5-10x slower than the same call in a worker thread (where the
# service runs it). Passive waiting, set before torch loads and inherited by the sampler processes,
# removes that artefact from both sides of the service/raw comparison.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from shared.logs import quiet_model_libraries  # noqa: E402

DEMO = ROOT / "examples" / "arithmetic-demo.yaml"
BASE_KEY = "models/bench-base"


# --- a minimal stack: nats-server, a local store, sampler processes ---------------------------


class Bench:
    def __init__(self, state: Path) -> None:
        from shared.client.stack import _nats_binary, free_port

        self.state = state
        port = free_port()
        self.url = f"nats://127.0.0.1:{port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nats = self._spawn(
            [_nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(state / "nats")], "nats"
        )
        self.store_spec = {"kind": "local", "root": str(state / "store")}

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def store(self) -> Any:
        from shared.infra import StoreConfig
        from shared.store import open_store

        return open_store(StoreConfig.model_validate(self.store_spec))

    def start_samplers(
        self, count: int, entry: list[str], tag: str
    ) -> list[tuple[subprocess.Popen[bytes], str]]:
        """`count` sampler processes (each its own cache dir and gRPC port); waits until they serve."""
        from shared.client.client import check_health

        started = []
        for i in range(count):
            name = f"{tag}-{i}"
            port_file = self.state / "ports" / f"{name}.port"
            port_file.parent.mkdir(parents=True, exist_ok=True)
            cfg = {
                "grpc": {"host": "127.0.0.1", "port": 0, "port_file": str(port_file)},
                "nats": {"url": self.url},
                "store": self.store_spec,
                "cache_dir": str(self.state / "cache" / name),
                "device": "cpu",
            }
            path = self.state / "config" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(cfg))
            started.append((self._spawn([*entry, "--config", str(path)], name), port_file))
        out = []
        deadline = time.monotonic() + 180
        for (proc, port_file), i in zip(started, range(count), strict=True):
            while (
                not port_file.is_file()
                or check_health(f"127.0.0.1:{port_file.read_text().strip()}") != "SERVING"
            ):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.state / "logs" / f"{tag}-{i}.log").read_text(errors="replace")
                    raise SystemExit(f"sampler {tag}-{i} did not start:\n{log[-3000:]}")
                time.sleep(0.2)
            out.append((proc, f"127.0.0.1:{port_file.read_text().strip()}"))
        return out

    @staticmethod
    def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        self.stop([p for p in self.procs if p is not self.nats])
        self.stop([self.nats])


@asynccontextmanager
async def connected(url: str) -> Any:
    from shared.bus import EventBus
    from shared.infra import NatsConfig

    bus = await EventBus.connect(NatsConfig(url=url), name="bench")
    await bus.ensure_topology()
    try:
        yield bus
    finally:
        await bus.close()


async def run_jobs(url: str, run_id: str, jobs: Sequence[Any]) -> tuple[float, int]:
    """Publish sample jobs and wait for all their SampleDone events: (seconds, tokens)."""
    from restem.events.v1 import events_pb2 as ev

    done: dict[int, int] = {}
    failed: list[str] = []
    stop = asyncio.Event()

    async def on_event(delivery: Any) -> None:
        kind = delivery.subject.rsplit(".", 1)[-1]
        if kind == "job_failed":
            failed.append(ev.JobFailed.FromString(delivery.data).reason)
            stop.set()
        if kind == "sample_done":
            msg = ev.SampleDone.FromString(delivery.data)
            done[msg.shard] = msg.num_tokens
            if len(done) == len(jobs):
                stop.set()

    async with connected(url) as bus:
        waiter = asyncio.create_task(
            bus.consume_events(
                f"bench-{run_id}", on_event, stop=stop, filter_subject=f"restem.events.{run_id}.>"
            )
        )
        start = time.monotonic()
        for job in jobs:
            await bus.publish_job("sample", run_id, job.SerializeToString(), msg_id=job.job_id)
        await asyncio.wait_for(stop.wait(), timeout=1800)
        seconds = time.monotonic() - start
        await waiter
    if failed:
        raise SystemExit(f"a sample job failed: {failed[0]}")
    return seconds, sum(done.values())


def sample_jobs(cfg: Any, run_id: str, problem_ids: list[str], *, chat: bool = True) -> list[Any]:
    """The iteration-1 sample jobs the coordinator would publish for these problems."""
    from restem.coordinator.v1 import coordinator_pb2 as pb

    from services.coordinator import core
    from shared import keys

    run = pb.Run(run_id=run_id)
    it = run.iterations.add(iteration=1, policy_key=BASE_KEY)
    jobs = []
    for index, ids in enumerate(core.plan_shards(problem_ids, cfg.em.shard_size)):
        job = core.sample_job(run, cfg, it, index, ids).message
        job.dataset_key = keys.dataset_key("bench-data", "train")
        job.prompt_format.chat_template = chat
        jobs.append(job)
    return jobs


def put_dataset(store: Any, cfg: Any) -> list[dict[str, Any]]:
    from shared import keys
    from shared.tasks import build_splits, dumps_jsonl

    train = build_splits(cfg.task)["train"]
    store.put_bytes(keys.dataset_key("bench-data", "train"), dumps_jsonl(train))
    return train


# --- 1. service / raw ------------------------------------------------------------------------


def raw_generate(
    model_dir: Path, cfg: Any, problems: list[dict[str, Any]], jobs: Sequence[Any]
) -> tuple[float, int, Any]:
    from services.sampler.core import render_prompts
    from shared.llm.checkpoint import load_for_inference
    from shared.llm.generation import TransformersGenerator
    from shared.params import GenerationParams, from_proto
    from shared.seeds import sample_seeds

    model, tok = load_for_inference(model_dir, "cpu")
    gen = TransformersGenerator(model, tok, device="cpu")  # the sampler's defaults
    by_id = {p["id"]: p for p in problems}
    start, tokens = time.monotonic(), 0
    for job in jobs:
        shard = [by_id[i] for i in job.problem_ids]
        prompts = render_prompts(tok, job.task, shard, chat=True, system=None)
        params = from_proto(job.params, GenerationParams)
        seeds = sample_seeds(job.params.seed, job.problem_ids, params.n, job.first_index)  # as the sampler
        outs = gen.generate(prompts, params, seeds=seeds)
        tokens += sum(c.num_tokens for cs in outs for c in cs)
    return time.monotonic() - start, tokens, gen


def bench_ratio(bench: Bench, cfg: Any, repeats: int, count: int) -> None:
    from shared.llm.checkpoint import import_checkpoint
    from shared.models import resolve_model_source

    store = bench.store()
    problems = put_dataset(store, cfg)
    ids = [p["id"] for p in problems][:count]
    model_dir = bench.state / "base"
    import_checkpoint(resolve_model_source(cfg.model.base), model_dir)
    store.put_dir(BASE_KEY, model_dir)
    [(proc, _)] = bench.start_samplers(1, [sys.executable, "-m", "services.sampler"], "sampler")
    asyncio.run(
        run_jobs(bench.url, "bench-warmup", sample_jobs(cfg, "bench-warmup", ids[:2]))
    )  # loads the model
    raw_s, svc_s = [], []
    for r in range(repeats):
        jobs = sample_jobs(cfg, f"bench-ratio-{r}", ids)
        seconds, raw_tokens, _ = raw_generate(model_dir, cfg, problems, jobs)
        raw_s.append(seconds)
        seconds, svc_tokens = asyncio.run(run_jobs(bench.url, f"bench-ratio-{r}", jobs))
        svc_s.append(seconds)
        same = "same tokens" if raw_tokens == svc_tokens else f"DIFFERENT tokens (service {svc_tokens})"
        print(
            f"  repeat {r + 1}: raw {raw_s[-1]:.2f} s, service {svc_s[-1]:.2f} s, {raw_tokens} tokens ({same})",
            flush=True,
        )
    bench.stop([proc])
    tokens = raw_tokens
    print()
    print(
        f"| transformers on CPU, {len(ids)} problems x K={cfg.sampling.n}, {len(jobs)} shards | seconds (best of {repeats}) | tokens/s |"
    )
    print("|---|---|---|")
    print(
        f"| raw `TransformersGenerator.generate` in-process | {min(raw_s):.2f} | {tokens / min(raw_s):.1f} |"
    )
    print(
        f"| sampler service (work queue -> store -> SampleDone) | {min(svc_s):.2f} | {tokens / min(svc_s):.1f} |"
    )
    print(f"\nservice / raw throughput ratio: {min(raw_s) / min(svc_s):.3f} (goal >= 0.95)")


# --- 2. scaling -------------------------------------------------------------------------------


def replica_stats(address: str) -> Any:
    import grpc
    from restem.sampler.v1 import sampler_pb2, sampler_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return (
            sampler_pb2_grpc.SamplerServiceStub(channel)
            .GetStats(sampler_pb2.GetStatsRequest(), timeout=10)
            .stats
        )


def bench_scaling(bench: Bench, cfg: Any, shards: int, latency_ms: float, tokens: int) -> None:
    store = bench.store()
    problems = put_dataset(store, cfg)
    ids = [p["id"] for p in problems]
    src = bench.state / "sim-ckpt"
    src.mkdir(exist_ok=True)
    (src / "README").write_text("the simulated backend reads no weights\n")
    store.put_dir(BASE_KEY, src)
    per_shard = (
        cfg.em.shard_size * cfg.sampling.n * min(tokens, cfg.sampling.max_new_tokens) * latency_ms / 1000
    )
    print(f"simulated fixed-latency backend: {latency_ms} ms/token, {tokens} tokens/sample, {shards} shards of "
          f"{cfg.em.shard_size} problems x K={cfg.sampling.n} = {per_shard:.2f} s of simulated generation each")  # fmt: skip
    entry = [sys.executable, str(ROOT / "tests" / "bench" / "sim_sampler.py"), "--token-latency-ms", str(latency_ms), "--tokens", str(tokens)]  # fmt: skip
    rows = []
    for n in (1, 2, 4):
        replicas = bench.start_samplers(n, entry, f"sim{n}")
        run_id = f"bench-scale-{n}"
        problem_ids = (ids * (shards * cfg.em.shard_size // len(ids) + 1))[: shards * cfg.em.shard_size]
        jobs = sample_jobs(cfg, run_id, problem_ids, chat=False)
        seconds, total_tokens = asyncio.run(run_jobs(bench.url, run_id, jobs))
        stats = [replica_stats(addr) for _, addr in replicas]
        bench.stop([p for p, _ in replicas])
        rows.append((n, seconds, total_tokens, [s.jobs_done for s in stats], {s.backend for s in stats}))
    print(
        "\n| replicas | seconds | shards/s | tokens/s | speed-up | efficiency (ideal / measured) | shards per replica | backend (GetStats) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ideal = shards * per_shard
    for n, seconds, total_tokens, per_replica, backends in rows:
        speedup = rows[0][1] / seconds
        # ideal: the simulated generation split evenly, with no orchestration cost at all
        print(f"| {n} | {seconds:.2f} | {shards / seconds:.2f} | {total_tokens / seconds:.0f} | {speedup:.2f} | "
              f"{ideal / n / seconds:.0%} | {per_replica} | {', '.join(sorted(backends))} |")  # fmt: skip
    print(f"\n(simulated generation alone: {ideal:.2f} s on one replica; the rest is orchestration)")


# --- 3. adaptive vs fixed K -------------------------------------------------------------------


def _iteration_samples(store: Any, run_id: str, iteration: int) -> dict[str, str]:
    """sample_id -> completion over every shard (all rounds) of an iteration."""
    from shared import keys
    from shared.tasks import loads_jsonl

    out: dict[str, str] = {}
    shard = 0
    while store.exists(key := keys.samples_key(run_id, iteration, shard)):
        out.update({r["sample_id"]: r["completion"] for r in loads_jsonl(store.get_bytes(key))})
        shard += 1
    return out


def _kept(store: Any, run_id: str, iteration: int) -> set[tuple[str, str]]:
    from shared import keys
    from shared.tasks import loads_jsonl

    key = keys.kept_key(run_id, iteration)
    return (
        {(r["sample_id"], r["completion"]) for r in loads_jsonl(store.get_bytes(key))}
        if store.exists(key)
        else set()
    )


def compare_runs(store: Any, fixed_id: str, adaptive_id: str, iterations: int, k: int) -> None:
    """Per iteration: problems stopped after round 1, adaptive samples equal to fixed K's, kept sets."""
    print(
        "\n| iteration | problems stopped early (adaptive) | adaptive samples equal to fixed K's | same kept set |"
    )
    print("|---|---|---|---|")
    for it in range(1, iterations + 1):
        fixed, adapt = _iteration_samples(store, fixed_id, it), _iteration_samples(store, adaptive_id, it)
        if not fixed or not adapt:
            continue
        per_problem: dict[str, int] = {}
        for sid in adapt:
            problem = sid.split("/", 1)[1].rsplit("/", 1)[0]
            per_problem[problem] = per_problem.get(problem, 0) + 1
        stopped = sum(1 for n in per_problem.values() if n < k)
        equal = sum(1 for sid, text in adapt.items() if fixed.get(sid) == text)
        same_kept = _kept(store, fixed_id, it) == _kept(store, adaptive_id, it)
        print(
            f"| {it} | {stopped}/{len(per_problem)} | {equal}/{len(adapt)} | {'yes' if same_kept else 'no'} |"
        )


def bench_adaptive(config_yaml: str, state: Path, settings: dict[str, Any]) -> None:
    from shared.client.client import RunClient
    from shared.client.stack import down, up
    from shared.infra import StoreConfig
    from shared.runconfig import parse_run_config
    from shared.store import open_store

    adaptive = yaml.safe_load(config_yaml)
    adaptive.setdefault("sampling", {})["adaptive"] = {"enabled": True, **settings}
    print(f"adaptive settings: {adaptive['sampling']['adaptive']}", flush=True)
    reports, run_ids = {}, {}
    stack = up(state)
    try:
        with RunClient(stack.coordinator) as client:
            for name, text in (("fixed K", config_yaml), ("adaptive", yaml.safe_dump(adaptive))):
                print(f"{name} ...", flush=True)
                run = client.start_run(text)
                run_ids[name] = run.run_id
                for _ in client.watch_run(run.run_id, timeout_s=3600):
                    pass
                reports[name] = client.report(run.run_id)
                if reports[name]["status"] != "succeeded":
                    raise SystemExit(f"the {name} run failed: {reports[name]['error']}")
        store = open_store(StoreConfig.model_validate(stack.info["store"]))
        cfg = parse_run_config(config_yaml)
        compare_runs(store, run_ids["fixed K"], run_ids["adaptive"], cfg.em.iterations, cfg.sampling.n)
    finally:
        down(state)
    print(
        "\n| policy | iteration | rounds | samples | tokens generated | kept | solved | test pass@1 | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, report in reports.items():
        for r in report["iterations"]:
            test = "–" if r["test_pass_at_1"] is None else f"{100 * r['test_pass_at_1']:.1f} %"
            solved = f"{r['problems_solved']}/{r['problems_total']}" if r["iteration"] else "–"
            print(f"| {name} | {r['iteration']} | {r.get('sampling_rounds', 0) or '–'} | {r['samples']} | "
                  f"{r['tokens_generated']} | {r['kept']} | {solved} | {test} | {r['seconds']} |")  # fmt: skip
    print()
    for name, report in reports.items():
        last = report["iterations"][-1]
        best = report["iterations"][report["best_iteration"]]
        print(f"{name}: {report['tokens_generated']} tokens, {sum(r['kept'] for r in report['iterations'])} kept, "
              f"wall {report['wall_seconds']} s, final test pass@1 {100 * (last['test_pass_at_1'] or 0):.1f} %, "
              f"best-on-validation iteration {report['best_iteration']} test pass@1 {100 * (best['test_pass_at_1'] or 0):.1f} %")  # fmt: skip
    fixed, adapt = reports["fixed K"]["tokens_generated"], reports["adaptive"]["tokens_generated"]
    print(f"adaptive / fixed tokens generated: {adapt / fixed:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEMO, help="run config (default: the demo's)")
    parser.add_argument(
        "--adaptive", action="store_true", help="run only the adaptive-vs-fixed comparison (~10 min)"
    )
    parser.add_argument(
        "--adaptive-settings",
        type=yaml.safe_load,
        default={},
        help="with --adaptive: sampling.adaptive settings besides enabled, e.g. '{first_round_n: 2}'",
    )
    parser.add_argument("--repeats", type=int, default=2, help="service/raw repetitions (best of)")
    parser.add_argument(
        "--problems", type=int, default=64, help="service/raw: train problems sampled (K each)"
    )
    parser.add_argument("--shards", type=int, default=32, help="shards in the scaling runs")
    parser.add_argument(
        "--token-latency-ms", type=float, default=0.5, help="simulated backend: time per token"
    )
    parser.add_argument("--tokens", type=int, default=16, help="simulated backend: tokens per sample")
    parser.add_argument("--skip-ratio", action="store_true", help="only the scaling table")
    args = parser.parse_args()
    quiet_model_libraries()
    from shared.runconfig import parse_run_config

    config_yaml = args.config.read_text()
    cfg = parse_run_config(config_yaml)
    with tempfile.TemporaryDirectory() as tmp:
        if args.adaptive:
            bench_adaptive(config_yaml, Path(tmp) / "stack", args.adaptive_settings)
            return
        bench = Bench(Path(tmp))
        try:
            if not args.skip_ratio:
                print("service / raw, transformers backend on CPU ...", flush=True)
                bench_ratio(bench, cfg, args.repeats, args.problems)
            print("\nscaling with replicas ...", flush=True)
            bench_scaling(bench, cfg, args.shards, args.token_latency_ms, args.tokens)
        finally:
            bench.close()


if __name__ == "__main__":
    main()
