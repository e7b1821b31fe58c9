"""`make chaos`: a ReST-EM run survives SIGKILLs of every service in every phase, with nothing changed.

Starts the local stack (bearer-token auth on), runs a small arithmetic config twice with the same
seeds: once undisturbed, once while services are SIGKILLed at random moments and restarted (at
least --kills kills, spread over all five services and the sample, verify, train and eval phases).
It also crashes nats-server (SIGKILL, down for 1-4 s, restarted on the same port and storage)
--nats-restarts times in randomly chosen phases. It then compares each iteration's kept set (the filtered training data in the store) byte for byte,
and the per-iteration sample / correct / kept counts, and prints a kills table and both runs'
metrics. Exit status 0 only if the chaos run succeeded, its kept sets and counts are identical to
the clean run's, and the kills covered every service and phase.

How kills are placed: every second or two, a service not yet killed in this phase visit is chosen
(the worker of the phase first, as it holds an in-flight job; then the least-killed, ties at
random) and killed; it is restarted at once on the same port. A
verify phase on arithmetic lasts milliseconds, so to land kills in it the verifier is killed while
the last sample shard runs and held down until the run is in its verify phase; then other services
are killed there and the verifier is restarted. A service is killed at most once per phase visit: a
job whose worker dies `max_deliver` times is dead-lettered and fails the run, by design.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from restem.coordinator.v1 import coordinator_pb2 as pb  # noqa: E402

from shared import keys  # noqa: E402
from shared.auth import client_token  # noqa: E402
from shared.client.client import RunClient  # noqa: E402
from shared.client.stack import (  # noqa: E402
    SERVICES,
    Stack,
    down,
    kill_service,
    restart_nats,
    restart_service,
    start_service,
    up,
)

CONFIG = """
name: {name}
task:
  name: arithmetic
  arithmetic: {{train: {train}, validation: {validation}, test: {test}, a_min: 1, a_max: 9, b_min: 1, b_max: 9}}
  seed: 0
model:
  # A worked example: SmolLM2 then answers ~30 % of these in the checked format, so every
  # iteration keeps samples and trains (without it the kept sets are empty and no M-step runs).
  system_prompt: "You add numbers. Example: User: What is 2 + 3? End with 'The answer is N.' Assistant: 2 + 3 = 5. The answer is 5."
em: {{iterations: {iterations}, cutoff: 2, shard_size: 4}}
sampling: {{n: {n}, max_new_tokens: 32, seed: 3}}
training: {{epochs: 1, batch_size: 8}}
"""
PHASES = {
    pb.PHASE_SAMPLING: "sample",
    pb.PHASE_VERIFYING: "verify",
    pb.PHASE_TRAINING: "train",
    pb.PHASE_EVALUATING: "eval",
}
# Killed jobs come back after the consumer's ack wait: seconds here, not the production minutes.
FAST_REDELIVERY = {
    "RESTEM_SAMPLER__ACK_WAIT_S": "5",
    "RESTEM_TRAINER__ACK_WAIT_S": "6",
    "RESTEM_EVALUATOR__ACK_WAIT_S": "5",
    "RESTEM_VERIFIER__ACK_WAIT_S": "5",
}
SIZES = {  # the run's size: `make chaos` (full) and the form `make test` runs (small)
    "full": {"train": 16, "validation": 8, "test": 16, "n": 8},
    "small": {"train": 8, "validation": 4, "test": 8, "n": 4},
}
WORKER = {"sample": "sampler", "verify": "verifier", "train": "trainer", "eval": "evaluator"}
PER_VISIT = 3  # most kills in one visit of a phase (each service at most once)


@dataclass
class RunResult:
    run: pb.Run
    kept: dict[int, bytes]
    seconds: float

    def counts(self) -> dict[int, tuple[int, int, int]]:
        return {it.iteration: (it.samples, it.correct_samples, it.kept) for it in self.run.iterations[1:]}

    def metrics(self) -> dict[str, float]:
        out = {}
        for it in self.run.iterations:
            for e in it.evals:
                out[f"iter {it.iteration} {e.split} pass@1"] = e.pass_at_1
        return out


@dataclass
class Chaos:
    stack: Stack
    target: int
    rng: random.Random
    kills: Counter[tuple[str, str]] = field(default_factory=Counter)
    visit_kills: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    held: str | None = None
    next_at: float = 0.0
    nats_phases: list[str] = field(default_factory=list)  # phases still due a NATS restart, in order
    nats_restarts: list[str] = field(default_factory=list)  # phases NATS was restarted in

    def total(self, service: str | None = None) -> int:
        return sum(n for (s, _), n in self.kills.items() if service is None or s == service)

    def phase_total(self, phase: str) -> int:
        return sum(n for (_, p), n in self.kills.items() if p == phase)

    def kills_done(self) -> bool:
        covered = all(self.total(s) for s in SERVICES) and all(self.phase_total(p) for p in PHASES.values())
        return covered and self.total() >= self.target

    def done(self) -> bool:
        return self.kills_done() and not self.nats_phases

    def _log(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _kill(self, service: str, phase: str, visit: tuple[int, str], *, hold: bool = False) -> None:
        self.kills[service, phase] += 1
        self.visit_kills.setdefault(visit, set()).add(service)
        self._log(f"SIGKILL {service:<11} in {phase} (iteration {visit[0]}){'; held down' if hold else ''}")
        if hold:
            kill_service(self.stack, service)
            self.held = service
        else:
            restart_service(self.stack, service)
        self.next_at = time.monotonic() + self.rng.uniform(0.5, 2.5)

    def release(self) -> None:
        if self.held is not None:
            self._log(f"restart {self.held}")
            start_service(self.stack, self.held)
            self.held = None

    def _restart_nats(self, phase: str, iteration: int) -> None:
        down_s = self.rng.uniform(1.0, 4.0)
        self._log(f"SIGKILL nats-server in {phase} (iteration {iteration}); down for {down_s:.1f}s")
        restart_nats(self.stack, down_s=down_s)
        self.nats_phases.remove(phase)
        self.nats_restarts.append(phase)
        self.next_at = time.monotonic() + self.rng.uniform(0.5, 2.5)

    def step(self, run: pb.Run) -> None:
        """Maybe kill something, given the run's current state."""
        phase = PHASES.get(run.phase)
        # Not paced like the kills: a phase can be over within a second of the last kill (a small
        # run verifies in milliseconds once the held verifier is back), and its NATS crash with it.
        if phase in self.nats_phases:
            self._restart_nats(phase, run.iteration)
            return
        if self.held is not None and phase != "sample":
            if phase == "verify":
                self._kill_some(run, "verify", exclude={self.held}, most=2)
            self.release()
            return
        if phase is None or self.kills_done() or time.monotonic() < self.next_at:
            return
        visit = (run.iteration, phase)
        killed = self.visit_kills.get(visit, set())
        # Held down from the first look at the sample phase, so the run is surely still verifying
        # when the poll sees it there (arithmetic verifies in milliseconds otherwise).
        if phase == "sample" and "verifier" not in killed and self.phase_total("verify") < 3:
            self._kill("verifier", phase, visit, hold=True)
            return
        self._kill_some(run, phase, exclude=set(), most=1)

    def _kill_some(self, run: pb.Run, phase: str, *, exclude: set[str], most: int) -> None:
        visit = (run.iteration, phase)
        for _ in range(most):
            killed = self.visit_kills.get(visit, set())
            candidates = [s for s in SERVICES if s not in killed | exclude]
            if len(killed) >= PER_VISIT or not candidates:
                return
            # The worker doing the phase's work first (it holds an in-flight job), then the least-killed.
            if WORKER[phase] in candidates:
                self._kill(WORKER[phase], phase, visit)
                continue
            least = min(self.total(s) for s in candidates)
            self._kill(self.rng.choice([s for s in candidates if self.total(s) == least]), phase, visit)


def _client(stack: Stack) -> RunClient:
    token = client_token(stack.token_file) if stack.token_file else None
    return RunClient(stack.coordinator, timeout_s=10, token=token)


def _get(stack: Stack, run_id: str) -> pb.Run | None:
    with _client(stack) as client:
        try:
            return client.get_run(run_id)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None  # the coordinator is being restarted
            raise


def run_once(stack: Stack, config: str, chaos: Chaos | None, timeout_s: float) -> RunResult:
    started = time.monotonic()
    with _client(stack) as client:
        run_id = client.start_run(config).run_id
    print(f"run {run_id} started", flush=True)
    last_phase = None
    while True:
        run = _get(stack, run_id)
        if run is not None:
            if run.phase != last_phase:
                name = pb.Phase.Name(run.phase).removeprefix("PHASE_").lower()
                print(f"  [{time.strftime('%H:%M:%S')}] iteration {run.iteration}: {name}", flush=True)
                last_phase = run.phase
            if run.status != pb.RUN_STATUS_RUNNING and run.report_key:
                break
            if chaos is not None:
                chaos.step(run)
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"run {run_id} did not finish in {timeout_s:.0f}s")
        time.sleep(0.25)
    if chaos is not None:
        chaos.release()
    root = Path(stack.info["store"]["root"])
    kept = {}
    for it in run.iterations[1:]:
        path = root / keys.kept_key(run_id, it.iteration)
        kept[it.iteration] = path.read_bytes() if path.is_file() else b""
    return RunResult(run, kept, time.monotonic() - started)


def report(clean: RunResult, chaos_run: RunResult, chaos: Chaos) -> bool:
    phases = list(PHASES.values())
    print("\nkills per service x phase")
    print(f"  {'service':<12}" + "".join(f"{p:>8}" for p in phases) + f"{'total':>8}")
    for s in SERVICES:
        row = "".join(f"{chaos.kills[s, p]:>8}" for p in phases)
        print(f"  {s:<12}{row}{chaos.total(s):>8}")
    print(f"  {'total':<12}" + "".join(f"{chaos.phase_total(p):>8}" for p in phases) + f"{chaos.total():>8}")
    print("\nfinal metrics          clean     chaos")
    a, b = clean.metrics(), chaos_run.metrics()
    for name in sorted(set(a) | set(b)):
        print(f"  {name:<22}{a.get(name, float('nan')):>8.3f}  {b.get(name, float('nan')):>8.3f}")
    status = [pb.RunStatus.Name(r.run.status).removeprefix("RUN_STATUS_").lower() for r in (clean, chaos_run)]
    print(f"  {'status':<22}{status[0]:>8}  {status[1]:>8}")
    print(f"  {'wall seconds':<22}{clean.seconds:>8.0f}  {chaos_run.seconds:>8.0f}")
    print("\nkept sets (per iteration)")
    same = chaos_run.run.status == pb.RUN_STATUS_SUCCEEDED and clean.run.status == pb.RUN_STATUS_SUCCEEDED
    for it in sorted(clean.kept):
        identical = clean.kept[it] == chaos_run.kept.get(it) and clean.kept[it] != b""
        counts = clean.counts().get(it) == chaos_run.counts().get(it)
        same = same and identical and counts
        c = clean.counts().get(it)
        print(f"  iteration {it}: {len(clean.kept[it])} bytes, samples/correct/kept {c}; identical: "
              f"{'yes' if identical else 'NO'}, counts identical: {'yes' if counts else 'NO'}")  # fmt: skip
    covered = chaos.done()
    if chaos_run.run.error:
        print(f"chaos run error: {chaos_run.run.error}")
    print(f"NATS restarts: {len(chaos.nats_restarts)} (in {', '.join(chaos.nats_restarts) or '-'}); "
          f"not reached: {', '.join(chaos.nats_phases) or 'none'}")  # fmt: skip
    print(f"\nsurvived {chaos.total()} kills; coverage of all services and phases: {'yes' if covered else 'NO'}; "
          f"kept sets identical: {'yes' if same else 'NO'}")  # fmt: skip
    return same and covered


@dataclass
class Outcome:
    clean: RunResult
    chaos_run: RunResult
    chaos: Chaos
    passed: bool  # succeeded, identical kept sets and counts, every service and phase hit


def chaos_test(
    *,
    kills: int,
    nats_restarts: int,
    iterations: int,
    size: str,
    seed: int,
    timeout_s: float,
    state: Path,
) -> Outcome:
    """The clean run, then the run under kills on the same stack, compared (and reported)."""
    os.environ.update(FAST_REDELIVERY)
    rng = random.Random(seed)
    stack = up(state, auth=True)
    try:
        print(f"stack up in {state} (bearer-token auth on)")
        sizes = SIZES[size]
        clean = run_once(
            stack, CONFIG.format(name="chaos-clean", iterations=iterations, **sizes), None, timeout_s
        )
        phases = list(PHASES.values())
        chaos = Chaos(
            stack,
            kills,
            rng,
            next_at=time.monotonic() + 2,
            # distinct phases while there are enough of them
            nats_phases=[*rng.sample(phases, min(nats_restarts, len(phases)))]
            + [rng.choice(phases) for _ in range(nats_restarts - len(phases))],
        )
        per_phase = math.ceil(kills / len(PHASES))
        print(
            f"clean run done in {clean.seconds:.0f}s; now with kills (~{per_phase} per phase) and "
            f"NATS restarts in: {', '.join(chaos.nats_phases) or 'none'}"
        )
        config = CONFIG.format(name="chaos-kills", iterations=iterations, **sizes)
        killed = run_once(stack, config, chaos, timeout_s)
        return Outcome(clean, killed, chaos, report(clean, killed, chaos))
    finally:
        down(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=15, help="least number of service kills (default 15)")
    parser.add_argument(
        "--nats-restarts", type=int, default=2, help="nats-server crashes + restarts (default 2)"
    )
    parser.add_argument("--iterations", type=int, default=2, help="EM iterations of the run (default 2)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="run size (default full)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill schedule (default: random)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--state-dir", type=Path, default=None, help="stack state dir (default: a temp dir)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(
        f"chaos: >= {args.kills} kills + {args.nats_restarts} NATS restarts, kill-schedule seed {seed}, "
        f"{args.iterations} iterations ({args.size} run)"
    )
    outcome = chaos_test(
        kills=args.kills,
        nats_restarts=args.nats_restarts,
        iterations=args.iterations,
        size=args.size,
        seed=seed,
        timeout_s=args.timeout,
        state=args.state_dir or Path(tempfile.mkdtemp(prefix="restem-chaos-")),
    )
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
