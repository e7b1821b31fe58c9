"""Ten tiny runs started at once on one local stack all complete, each with its own artifacts.

The real SmolLM2 model at the smallest sizes (2 train problems x 2 samples, 8 tokens), so the test
measures sharing, not accuracy: every run must succeed, none may wait for the others to finish
(the work queue interleaves their jobs), and the services' memory must stay bounded (one model per
worker, not one per run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import Stack, down, up
from shared.store import LocalStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUNS = 10
TINY = """
name: concurrent-{i}
task:
  name: arithmetic
  arithmetic: {{train: 2, validation: 0, test: 2}}
  seed: {i}
em: {{iterations: 1, cutoff: 1, shard_size: 2}}
sampling: {{n: 2, max_new_tokens: 8, seed: {i}}}
training: {{epochs: 1, batch_size: 2}}
evaluation: {{splits: [test], max_new_tokens: 8}}
"""
MAX_RSS_GIB = 4.0  # per service; one SmolLM2-135M in fp32 is ~0.6 GiB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    s = up(state)
    yield s
    down(state)


def _rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _follow(address: str, run_id: str) -> tuple[pb.Run, float, float]:
    """The finished run, when it first left PREPARING, and when it finished (monotonic seconds)."""
    moved = 0.0
    with RunClient(address) as client:
        for run in client.watch_run(run_id, timeout_s=900):
            if not moved and run.phase != pb.PHASE_PREPARING:
                moved = time.monotonic()
        return run, moved, time.monotonic()


def test_ten_concurrent_runs_all_complete(stack):
    with RunClient(stack.coordinator) as client, ThreadPoolExecutor(RUNS) as pool:
        run_ids = list(pool.map(lambda i: client.start_run(TINY.format(i=i)).run_id, range(RUNS)))
        results = list(pool.map(lambda r: _follow(stack.coordinator, r), run_ids))
    assert len(set(run_ids)) == RUNS
    for run, _, _ in results:
        assert run.status == pb.RUN_STATUS_SUCCEEDED, f"{run.run_id}: {run.error}"
        assert [it.iteration for it in run.iterations] == [0, 1]
        assert run.iterations[1].samples == 4, "each run samples its own 2 problems x 2"
    # No starvation: every run was under way before the first one finished.
    first_finish = min(done for _, _, done in results)
    assert all(0 < moved <= first_finish for _, moved, _ in results), "a run waited for others to finish"
    store = LocalStore(Path(stack.info["store"]["root"]))
    for run_id in run_ids:
        assert store.exists(keys.samples_key(run_id, 1, 0)) and store.exists(keys.eval_key(run_id, 1, "test"))
    rss = {name: _rss_gib(int(svc["pid"])) for name, svc in stack.info["services"].items()}
    assert max(rss.values()) < MAX_RSS_GIB, f"memory not bounded: {rss}"
