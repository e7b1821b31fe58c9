"""The scale bench's cases, each a coroutine over a `Session` that returns `RunResult`s.

- `math_case`: one MATH run (7,500 x 32 x 3 iterations at full scale);
- `apps_case`: one APPS run (5,000 x 64, one iteration) whose problems carry large test cases;
- `behind_case`: a 64-problem run alone, then the same run started once the MATH run's first
  E-step is queued: its E-step time behind the big run vs alone (the big run is then cancelled);
- `kill_case`: the MATH run with the coordinator SIGKILLed (and restarted at once) just after the
  last VerifyDone of iteration 1 (mid-filter) and after a quarter of iteration 2's sample jobs are
  published (mid-fan-out); its kept sets are compared with those of a run without the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import grpc
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient

from .scale_probe import Seen, wait_until
from .scale_run import RunResult, RunSpec, Session, measure


async def one_run(
    session: Session, spec: RunSpec, timeout_s: float, apps: dict[str, Any] | None = None
) -> RunResult:
    run_id, started = await asyncio.to_thread(session.start_run, spec, apps)
    ended = await session.wait_finished(run_id, timeout_s)
    return await measure(session, run_id, spec, started, ended)


async def math_case(session: Session, spec: RunSpec, timeout_s: float) -> list[RunResult]:
    return [await one_run(session, spec, timeout_s)]


async def apps_case(
    session: Session, spec: RunSpec, timeout_s: float, apps: dict[str, Any]
) -> list[RunResult]:
    return [await one_run(session, spec, timeout_s, apps)]


def _estep_s(session: Session, run_id: str) -> float:
    """From the first sample job to the last verdict: the E-step's rewarded samples are ready."""
    jobs = session.obs.of(run_id, "sample", 1, job=True)
    done = session.obs.of(run_id, "verify_done", 1)
    return max(s.t for s in done) - min(s.t for s in jobs)


async def behind_case(session: Session, big: RunSpec, small: RunSpec, timeout_s: float) -> list[RunResult]:
    solo = await one_run(session, small, timeout_s)
    solo_estep = _estep_s(session, solo.run_id)
    big_id, _ = await asyncio.to_thread(session.start_run, big)
    # Behind: the big run's E-step is under way (a tenth of its shards sampled, the rest waiting:
    # all of them queued without fair share, its window of them with it) when the small run starts.
    await wait_until(lambda: len(session.obs.of(big_id, "sample_done", 1)) >= big.shards(session.fleet.samplers) // 10,
                     timeout_s, "the big run's E-step to be under way")  # fmt: skip
    run_id, started = await asyncio.to_thread(session.start_run, small)
    ended = await session.wait_finished(run_id, timeout_s)
    behind = await measure(session, run_id, small, started, ended)
    estep = _estep_s(session, run_id)
    behind.notes.append(f"E-step behind the {big.problems}-problem run: {estep:.1f} s; alone: "
                        f"{solo_estep:.1f} s ({estep / solo_estep:.1f}x)")  # fmt: skip
    behind.extra = {"estep_behind_s": estep, "estep_solo_s": solo_estep}
    if not session.api.finished(big_id):  # its E-step was all this case needed
        with (
            RunClient(session.stack.coordinator.address, timeout_s=120) as client,
            contextlib.suppress(grpc.RpcError),
        ):  # it may have finished meanwhile
            await asyncio.to_thread(client.cancel_run, big_id)
    await wait_until(lambda: session.api.finished(big_id), timeout_s, "the big run to be cancelled")
    return [solo, behind]


class Killer:
    """Observer hook: SIGKILL + restart the coordinator mid-filter of iteration 1 and mid-fan-out of
    iteration 2 of `run_id`; notes say where each kill landed."""

    def __init__(self, session: Session, spec: RunSpec, delay_s: float) -> None:
        self.session, self.spec, self.delay_s = session, spec, delay_s
        self.run_id = ""
        self.fired: set[str] = set()
        self.notes: list[str] = []
        self.tasks: list[asyncio.Future[None]] = []

    def __call__(self, what: str, run: str, kind: str, seen: Seen) -> None:
        if run != self.run_id:
            return
        obs, shards = self.session.obs, self.spec.shards(self.session.fleet.samplers)
        verify_1 = what == "event" and kind == "verify_done" and seen.iteration == 1
        if verify_1 and "filter" not in self.fired and len({s.part for s in obs.of(run, kind, 1)}) == shards:
            self.fired.add("filter")
            asyncio.get_running_loop().call_later(self.delay_s, self._kill, "mid-filter (iteration 1)")
        sample_2 = what == "job" and kind == "sample" and seen.iteration == 2
        if (
            sample_2
            and "fanout" not in self.fired
            and len(obs.of(run, kind, 2, job=True)) >= max(1, shards // 4)
        ):
            self.fired.add("fanout")
            self._kill("mid-fan-out (iteration 2)")

    def _kill(self, where: str) -> None:
        self.tasks.append(asyncio.ensure_future(self._restart(where)))

    async def _restart(self, where: str) -> None:
        store, obs = self.session.stack.store(), self.session.obs
        kept = await asyncio.to_thread(store.exists, keys.kept_key(self.run_id, 1))
        published = len({s.part for s in obs.of(self.run_id, "sample", 2, job=True)})
        down_s = await asyncio.to_thread(self.session.stack.restart_coordinator)
        state = f"kept set of iteration 1 {'already' if kept else 'not yet'} written, " \
                f"{published}/{self.spec.shards(self.session.fleet.samplers)} iteration-2 sample jobs published"  # fmt: skip
        self.notes.append(f"SIGKILL {where}: {state}; serving again after {down_s:.1f} s")


async def kill_case(session: Session, spec: RunSpec, timeout_s: float, reference: RunResult | None,
                    delay_s: float) -> list[RunResult]:  # fmt: skip
    spec = dataclasses.replace(spec, iterations=max(2, spec.iterations))
    results = []
    if reference is None or reference.spec != spec:
        reference = await one_run(session, spec, timeout_s)
        results.append(reference)
    session.stack.fresh_coordinator()
    killer = Killer(session, spec, delay_s)
    session.obs.hooks.append(killer)
    try:
        run_id, started = await asyncio.to_thread(session.start_run, spec)
        killer.run_id = run_id
        ended = await session.wait_finished(run_id, timeout_s)
        await asyncio.gather(*killer.tasks)
    finally:
        session.obs.hooks.remove(killer)
    result = await measure(session, run_id, spec, started, ended)
    result.notes += killer.notes
    same = result.kept_sha256 == reference.kept_sha256 and len(result.kept_sha256) == spec.iterations
    result.notes.append(
        f"kept sets {'byte-identical to' if same else 'DIFFERENT from'} run {reference.run_id}"
    )
    result.kept_identical = same
    return [*results, result]


async def settle(session: Session) -> None:
    """Between cases: a fresh coordinator process, so each case's peak RSS is its own."""
    await asyncio.to_thread(session.stack.fresh_coordinator)
    session.api.run_ids.clear()
    time.sleep(0)


def status_ok(result: RunResult) -> bool:
    return result.status == pb.RunStatus.Name(pb.RUN_STATUS_SUCCEEDED).removeprefix("RUN_STATUS_").lower()
