"""Scale bench (`make bench-scale`, issue 17): the real control plane at paper scale, simulated GPUs.

    python tests/bench/bench_scale.py                      # every case at full scale (long)
    python tests/bench/bench_scale.py --case math --scale 0.1
    python tests/bench/bench_scale.py --case kill --problems 500 --k 8 --samplers 8 --s3

REAL: the coordinator (`python -m services.coordinator`, SIGKILLed in the kill case), nats-server
with JetStream, the object store (a local directory, or SeaweedFS S3 with `--s3`), the verifier
processes, and the public API (files uploaded and runs started as `restem run` does, GetRun /
WatchRun polled by a client). SIMULATED (`sim_workers.py`): sampler, trainer and evaluator
replicas, asyncio workers of this process on the real work queues, that sleep for the generation
time and write realistic artifacts (MATH rows of 1-3 KB prompts and completions with a
`\\boxed{}` answer, a chosen fraction correct, deterministic from the seeds; checkpoints of
`--checkpoint-mb`).

Time model: a sampler replica generates `--tokens-per-s` (default 8,000: an 8B model under vLLM on
one H100, as published serving benchmarks report) at `--tokens-per-sample` (default 600, a MATH
solution); an M-step takes `--mstep-s`; an evaluation job generates one answer per problem on one
replica. Every simulated time is divided by `--time-scale`. The ideal schedule is that simulated
work alone: E-step = problems x K x tokens / (samplers x tokens/s), plus M-step and evaluation.
Overhead = wall - ideal: as a % of the compressed ideal (what was run) and of the uncompressed one
(the realistic schedule, assuming the control plane's seconds do not grow with the time scale).

What the verifier costs, and what this machine (2 cores) cannot do: a correct MATH sample is
judged in-process (`exact`), a wrong one that boxes another answer goes to math-verify in the
sandbox (~120 samples/s per 2-core verifier measured here), one without `\\boxed{}` is cheap.
`--wrong-boxed` sets that share (default 1 %): at 240k samples per iteration a realistic share
(most wrong answers are boxed) needs ~25 min of verifier time per iteration here, so the default
keeps the verifier from bounding the bench, and the printout says how many samples/s it judged.
APPS: 320k programs against megabytes of tests cannot run on 2 cores; the simulated completions
carry an empty code block, which the verifier rejects without running anything, except a share
`--apps-code` (default 0.1 %) of real programs. So the APPS case measures the store, the dataset
(tests of `--apps-test-kb`, `--apps-big-share` of them `--apps-big-mb`) and the filter path, not
code execution.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import scale_cases as cases  # noqa: E402
from tests.bench.scale_data import SimTextModel  # noqa: E402
from tests.bench.scale_run import RunResult, RunSpec, Session  # noqa: E402
from tests.bench.sim_workers import Fleet, TimeModel  # noqa: E402

CASES = ("math", "apps", "behind", "kill")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply problems and replicas (0.1: 1/10 scale)"
    )
    p.add_argument("--problems", type=int, help="train problems (default 7,500 MATH, 5,000 APPS) x scale")
    p.add_argument("--k", type=int, help="samples per problem (default 32 MATH, 64 APPS)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--samplers", type=int, help="simulated sampler replicas (default 64 x scale)")
    p.add_argument("--verifiers", type=int, default=1, help="real verifier processes")
    p.add_argument("--verifier-concurrency", type=int, default=4)
    p.add_argument(
        "--sample-jobs-per-run",
        type=int,
        default=None,
        help="coordinator fair share (default: 1.25x --samplers, as the chart sets it; 0: off)",
    )
    p.add_argument("--evaluators", type=int, default=2)
    p.add_argument("--runs", type=int, default=1, help="copies of the math case's run started at once")
    p.add_argument("--validation", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--eval-shard-size", type=int, default=256, help="evaluation.shard_size of the runs")
    p.add_argument("--small-problems", type=int, default=64, help="the run started behind the big one")
    p.add_argument("--tokens-per-sample", type=int, default=600)
    p.add_argument("--tokens-per-s", type=float, default=8000.0)
    p.add_argument("--time-scale", type=float, default=10.0)
    p.add_argument("--mstep-s", type=float, default=120.0, help="one simulated M-step, uncompressed")
    p.add_argument("--checkpoint-mb", type=float, default=16.0)
    p.add_argument("--no-pipeline", action="store_true",
                   help="samplers pull their next shard only when the last one is written")  # fmt: skip
    p.add_argument("--no-prefetch", action="store_true",
                   help="samplers fetch each policy at their first job, not when the coordinator hints it")  # fmt: skip
    p.add_argument("--correct", type=float, default=0.3, help="mean share of correct samples")
    p.add_argument("--wrong-boxed", type=float, default=0.01, help="share of wrong samples with a \\boxed{}")
    p.add_argument("--apps-code", type=float, default=0.001)
    p.add_argument("--apps-test-kb", type=float, default=64.0)
    p.add_argument("--apps-big-share", type=float, default=0.01)
    p.add_argument("--apps-big-mb", type=float, default=4.0)
    p.add_argument("--kill-delay", type=float, default=1.0, help="seconds after the last VerifyDone")
    p.add_argument("--s3", action="store_true", help="SeaweedFS S3 instead of a local directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="per run")
    p.add_argument("--state", type=Path, help="where the stack keeps its files (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def fleet_of(args: argparse.Namespace) -> Fleet:
    timing = TimeModel(args.tokens_per_s, args.tokens_per_sample, args.time_scale, args.mstep_s,
                       int(args.checkpoint_mb * 2**20))  # fmt: skip
    samplers = args.samplers or max(1, round(64 * args.scale))
    text = SimTextModel("math", args.correct, args.wrong_boxed)
    return Fleet(samplers=samplers, evaluators=args.evaluators, timing=timing, text=text,
                 prefetch_spread_s=None if args.no_prefetch else 10.0, pipelined=not args.no_pipeline)  # fmt: skip


def spec_of(args: argparse.Namespace, task: str) -> RunSpec:
    default_p, default_k = (7500, 32) if task == "math" else (5000, 64)
    problems = args.problems or max(8, round(default_p * args.scale))
    return RunSpec(task, problems, args.k or default_k, args.iterations if task == "math" else 1,
                   args.shard_size, 10, args.validation, args.test, args.seed, args.eval_shard_size)  # fmt: skip


async def run_cases(args: argparse.Namespace, state: Path) -> list[tuple[str, RunResult]]:
    fleet, out = fleet_of(args), []
    chosen = CASES if args.case == "all" else (args.case,)
    math_spec = spec_of(args, "math")
    fair = {} if args.sample_jobs_per_run is None else {"sample_jobs_per_run": args.sample_jobs_per_run}
    async with Session.open(state, fleet, s3=args.s3, verifiers=args.verifiers,
                            verifier_concurrency=args.verifier_concurrency, coordinator=fair) as session:  # fmt: skip
        reference = None
        for case in chosen:
            await cases.settle(session)
            fleet.text = SimTextModel("math", args.correct, args.wrong_boxed)
            if case == "math":
                results = await cases.math_case(session, math_spec, args.timeout)
                reference = results[0]
            elif case == "apps":
                fleet.text = SimTextModel("apps", args.correct, apps_code=args.apps_code)
                apps = {"mean_bytes": int(args.apps_test_kb * 1024), "big_fraction": args.apps_big_share,
                        "big_bytes": int(args.apps_big_mb * 2**20)}  # fmt: skip
                results = await cases.apps_case(session, spec_of(args, "apps"), args.timeout, apps)
            elif case == "behind":
                small = dataclasses.replace(math_spec, problems=args.small_problems, iterations=1,
                                            validation=0, test=16)  # fmt: skip
                results = await cases.behind_case(session, math_spec, small, args.timeout)
            else:
                results = await cases.kill_case(session, math_spec, args.timeout, reference, args.kill_delay)
            out += [(case, r) for r in results]
            print_result(case, results[-1], fleet, flush=True)
    return out


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_result(case: str, r: RunResult, fleet: Fleet, flush: bool = False) -> None:
    scale = fleet.timing.time_scale
    s = r.spec
    print(f"\n## {case}: {s.task} {s.problems} x {s.k} x {s.iterations} it, shard {s.shard_size}, "
          f"{fleet.samplers} samplers, run {r.run_id} {r.status}", flush=flush)  # fmt: skip
    print(f"wall {r.wall_s:.1f} s vs ideal {r.ideal['total']:.1f} s (E-step {r.ideal['estep']:.1f}, "
          f"M-step {r.ideal['mstep']:.1f}, eval {r.ideal['eval']:.1f}): overhead {r.overhead_s:.1f} s = "
          f"{100 * r.overhead_s / r.ideal['total']:.1f} % compressed, "
          f"{100 * r.overhead_s / (r.ideal['total'] * scale):.2f} % of the uncompressed {r.ideal['total'] * scale:.0f} s")  # fmt: skip
    for i, it in enumerate(r.iterations, start=1):
        print(f"  iteration {i}: start->first sample job {_f(it['start_to_first_job'], 2)} s, ->last "
              f"{_f(it['start_to_last_job'], 2)} s; E-step {_f(it['estep'])} s (ideal {r.ideal['estep']:.1f}); "
              f"verify tail {_f(it['verify_tail'])} s; filter {_f(it['filter'], 2)} s")  # fmt: skip
        if "idle_between" in it:
            print(f"    a sampler replica's E-step, mean: idle {_f(it['idle_start'], 2)} s before its first shard, "
                  f"{_f(it['idle_between'], 2)} s between shards, {_f(it['idle_tail'], 2)} s after its last one "
                  "(the E-step's end waiting for the slowest)")  # fmt: skip
    print(f"  coordinator peak RSS {r.rss_mib:.0f} MiB; GetRun p50/p99 {_f(r.get_ms[0])}/{_f(r.get_ms[1])} ms "
          f"(during filter p99 {_f(r.get_filter_ms[1])} ms); WatchRun p50/p99 {_f(r.watch_ms[0])}/{_f(r.watch_ms[1])} ms; "
          f"{r.events_per_s:.1f} events/s; store {r.store_objects} objects, {r.store_bytes / 2**20:.0f} MiB")  # fmt: skip
    print(
        f"  shards lost: {len(r.lost)} {r.lost[:5]}; doubled: {len(r.doubled)} {r.doubled[:5]}", flush=flush
    )
    if "sample_job_overhead_s" in r.extra:
        print(f"  sample job beyond its simulated generation (the replica's own work, policy downloads): "
              f"mean {r.extra['sample_job_overhead_s']:.2f} s, p99 {r.extra['sample_job_overhead_p99_s']:.2f} s", flush=flush)  # fmt: skip
    for note in r.notes:
        print(f"  {note}", flush=flush)


def table(rows: list[tuple[str, RunResult]], fleet: Fleet) -> str:
    head = ("| case | run | wall s | ideal s | overhead | E-step s (ideal) | 1st/last job s | filter s | "
            "RSS MiB | GetRun p50/p99 ms | p99 in filter | WatchRun p99 | events/s | objects | MiB | lost/doubled |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case, r in rows:
        it = r.iterations[0] if r.iterations else {}
        filt = max((x["filter"] or 0.0 for x in r.iterations), default=None)
        lines.append(
            f"| {case} | {r.spec.problems}x{r.spec.k}x{r.spec.iterations} | {r.wall_s:.0f} | {r.ideal['total']:.0f} | "
            f"{100 * r.overhead_s / r.ideal['total']:.0f} % ({r.overhead_s:.0f} s) | {_f(it.get('estep'))} "
            f"({r.ideal['estep']:.1f}) | {_f(it.get('start_to_first_job'), 2)}/{_f(it.get('start_to_last_job'), 2)} | "
            f"{_f(filt, 2)} | {r.rss_mib:.0f} | {_f(r.get_ms[0])}/{_f(r.get_ms[1])} | {_f(r.get_filter_ms[1])} | "
            f"{_f(r.watch_ms[1])} | {r.events_per_s:.0f} | {r.store_objects} | {r.store_bytes / 2**20:.0f} | "
            f"{len(r.lost)}/{len(r.doubled)} |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="restem-bench-scale-") as tmp:
        state = args.state or Path(tmp)
        rows = asyncio.run(run_cases(args, state))
    fleet = fleet_of(args)
    t = fleet.timing
    print(f"\n{t.tokens_per_s:.0f} tokens/s per sampler replica, {t.tokens_per_sample} tokens/sample, "
          f"time scale {t.time_scale:g}, M-step {t.mstep_s:g} s, checkpoint {t.checkpoint_bytes / 2**20:.0f} MiB, "
          f"{fleet.samplers} samplers, {args.verifiers} verifier(s), {fleet.evaluators} evaluators, "
          f"store {'S3 (SeaweedFS)' if args.s3 else 'local dir'}\n")  # fmt: skip
    print(table(rows, fleet))
    if args.json:
        args.json.write_text(json.dumps([{"case": c, **_jsonable(r)} for c, r in rows], indent=1))


def _jsonable(r: RunResult) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["spec"] = dataclasses.asdict(r.spec)
    return d


if __name__ == "__main__":
    main()
