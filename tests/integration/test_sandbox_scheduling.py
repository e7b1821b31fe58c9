"""How the pool places and forks programs: CPU pinning per worker, the release of long programs to
every CPU, and a forked program's interpreter (the zygote forks without CPython's fork hooks)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator

import pytest

from services.verifier.sandbox import Limits, PoolConfig, SandboxPool, Session
from services.verifier.sandbox.cpus import usable_cpus

pytestmark = pytest.mark.integration

AFFINITY = textwrap.dedent(
    """
    import json, os, time
    first = sorted(os.sched_getaffinity(0))
    end = time.monotonic() + 0.15  # well past the zygote's release point (20 ms)
    while time.monotonic() < end:
        pass
    print(json.dumps([first, sorted(os.sched_getaffinity(0))]))
    """
)


def _run(pool: SandboxPool, code: str) -> tuple[int, str]:
    """(the worker's index, the program's stdout) for one stdin-mode program."""

    def job(session: Session) -> tuple[int, str]:
        run = session.run({"mode": "stdin", "code": code, "stdin": ""}, Limits(wall_s=5, cpu_s=5))
        proc = run.procs["program"]
        assert proc.exit_code == 0, proc.stderr
        return session._worker.index, proc.stdout

    return pool.run(job, timeout_s=30)


@pytest.fixture(scope="module")
def pinned() -> Iterator[SandboxPool]:
    with SandboxPool(PoolConfig(workers=3, pin_cpus="on")) as p:
        yield p


def test_each_worker_is_pinned_and_a_long_program_is_released_to_every_cpu(pinned: SandboxPool) -> None:
    cpus = list(usable_cpus())
    seen = set()
    for _ in range(12):
        index, out = _run(pinned, AFFINITY)
        first, later = json.loads(out)
        assert first == [cpus[index % len(cpus)]]  # worker i's core, set in the zygote, inherited
        assert later == cpus  # still running after 20 ms: any core
        seen.add(index)
    assert len(seen) >= 2  # more than one worker answered, each on its own core


def test_unpinned_workers_run_anywhere() -> None:
    with SandboxPool(PoolConfig(workers=1, pin_cpus="off")) as pool:
        first, later = json.loads(_run(pool, AFFINITY)[1])
    assert first == later == list(usable_cpus())


def test_a_forked_program_has_a_working_interpreter(pinned: SandboxPool) -> None:
    # The zygote forks with libc's fork, skipping CPython's after-fork hooks (threading's among
    # them): threads, a fork inside the program and `random` must still behave.
    code = textwrap.dedent(
        """
        import os, random, threading
        out = []
        threads = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(out) == [0, 1, 2, 3]
        assert threading.current_thread() is threading.main_thread()
        assert threading.active_count() == 1
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 7
        print(random.random())
        """
    )
    draws = {_run(pinned, code)[1] for _ in range(6)}
    # Every program starts from the same seeded state (the verdict cache assumes a program's
    # verdict does not change between gradings), on every worker.
    assert len(draws) == 1
    assert 0 <= float(draws.pop()) < 1
