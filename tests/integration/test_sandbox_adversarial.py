"""Adversarial programs against the sandbox pool: one property each, the exact verdict, and the pool
still grading a normal program correctly afterwards (same workers, no restart unless stated)."""

from __future__ import annotations

import contextlib
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.verifier.code_checks import CodeProblem, Status, problem_from_dict
from services.verifier.code_grader import CodeGrader
from services.verifier.sandbox import PoolConfig, SandboxPool

pytestmark = pytest.mark.integration
CANARY = "canary-s3cr3t-4481"
os.environ["RESTEM_TEST_CANARY"] = CANARY  # set before the pool starts: it must not reach the sandbox

DOUBLE = problem_from_dict(
    {
        "id": "double",
        "kind": "stdin",
        "tests": [{"input": "21\n", "output": "42\n"}, {"input": "5\n", "output": "10"}],
        "time_limit_s": 1.0,
        "memory_mb": 256,
    }
)
ADD = problem_from_dict(
    {
        "id": "add",
        "kind": "call",
        "fn_name": "add",
        "tests": [{"input": [1, 2], "output": 3}],
        "time_limit_s": 1.0,
    }
)
HE = CodeProblem(
    "he-add",
    "humaneval",
    prompt='def add(a, b):\n    """Sum of a and b."""\n',
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n",
    entry_point="add",
    time_limit_s=3.0,
)


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(PoolConfig(workers=2)) as p:
        yield p


@pytest.fixture(scope="module")
def grader(pool: SandboxPool) -> CodeGrader:
    return CodeGrader(pool)


def _sandbox_processes(pool: SandboxPool) -> int:
    """Live host processes running as the pool's sandbox uids (only meaningful when we are root)."""
    uids = {pool.config.uid_base + i for i in range(len(pool.workers))}
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        # Zombies run nothing; a pool torn down by an earlier test leaves some for init to reap.
        if fields.get("State", "").strip().startswith("Z"):
            continue
        count += int(fields["Uid"].split()[0]) in uids
    return count


def _idle_processes(pool: SandboxPool) -> int:
    """The sandbox process count once it stops changing: a killed job's processes take a moment
    to leave /proc, so a single read right after another test's fork bomb can over-count."""
    last, stable = -1, 0
    deadline = time.monotonic() + 10
    while stable < 3 and time.monotonic() < deadline:
        now = _sandbox_processes(pool)
        stable = stable + 1 if now == last else 0
        last = now
        time.sleep(0.05)
    return last


def _still_healthy(grader: CodeGrader, restarts_before: int | None = None) -> None:
    assert grader.grade(DOUBLE, "print(int(input()) * 2)").status is Status.PASSED
    health = grader.pool.health()
    assert health.state == "SERVING", health
    if restarts_before is not None:
        assert health.restarts == restarts_before, "a zygote had to be replaced"


def _grade(grader: CodeGrader, code: str, problem: CodeProblem = DOUBLE) -> tuple[Status, str, str]:
    restarts = grader.pool.health().restarts
    # HumanEval completions continue a function body: their indentation is meaningful.
    v = grader.grade(problem, code if problem.kind == "humaneval" else textwrap.dedent(code))
    _still_healthy(grader, restarts)
    return v.status, v.rule, v.detail


def test_protections_are_reported(pool: SandboxPool) -> None:
    assert pool.protections.mode == "bwrap", "bubblewrap is installed by make setup and works here"
    assert "none" in pool.protections.network and pool.protections.seccomp.startswith("on")


def test_infinite_loop_is_time_limited(grader: CodeGrader) -> None:
    status, rule, _ = _grade(grader, "while True:\n    pass\n")
    assert status is Status.TIME_LIMIT and rule == "test-0-wall-time-limit"


def test_sleep_is_time_limited(grader: CodeGrader) -> None:
    t = time.monotonic()
    assert _grade(grader, "import time\ntime.sleep(60)\n")[0] is Status.TIME_LIMIT
    assert time.monotonic() - t < 5


def test_memory_bomb_is_memory_limited(grader: CodeGrader) -> None:
    # 256 MiB limit, 3 s to reach it even on a loaded machine.
    roomy = CodeProblem("mem", "stdin", DOUBLE.tests, time_limit_s=3.0, memory_mb=256)
    status, rule, _ = _grade(grader, "a = []\nwhile True:\n    a.append(' ' * 10**7)\n", roomy)
    assert (status, rule) == (Status.MEMORY_LIMIT, "test-0-memory-limit")
    assert _grade(grader, "x = bytearray(10**12)\n", roomy)[:2] == (
        Status.MEMORY_LIMIT,
        "test-0-memory-limit",
    )


def test_fork_bomb_is_contained(grader: CodeGrader, pool: SandboxPool) -> None:
    baseline = _idle_processes(pool)
    status, _, detail = _grade(grader, "import os\nwhile True:\n    os.fork()\n")
    assert status is Status.RUNTIME_ERROR and "BlockingIOError" in detail
    if os.geteuid() == 0:
        assert _idle_processes(pool) == baseline


def test_setsid_escapee_is_swept(grader: CodeGrader, pool: SandboxPool) -> None:
    baseline = _idle_processes(pool)
    code = """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        print(int(input()) * 2)
    """
    assert _grade(grader, code)[0] is Status.PASSED
    if os.geteuid() == 0:
        assert _idle_processes(pool) == baseline, "an escaped process outlived its job"


def test_endless_output_is_output_limited(grader: CodeGrader) -> None:
    status, rule, _ = _grade(grader, "while True:\n    print('x' * 1000)\n")
    assert (status, rule) == (Status.OUTPUT_LIMIT, "test-0-output-limit")


def test_huge_file_write_is_output_limited(grader: CodeGrader) -> None:
    code = "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n"
    assert _grade(grader, code)[:2] == (Status.OUTPUT_LIMIT, "test-0-file-size-limit")


def test_writes_outside_the_job_dir_fail(grader: CodeGrader, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    code = f"""
        n = 0
        for path in ["/usr/pwned", "/pwned", "/etc/pwned", {str(target)!r}, "/proc/pwned"]:
            try:
                open(path, "w").write("x")
                n += 1
            except OSError:
                pass
        print(n * 1000 + int(input()) * 2)
    """
    assert _grade(grader, code)[0] is Status.PASSED  # 0 writes succeeded
    assert not target.exists()


def test_service_environment_and_files_are_invisible(grader: CodeGrader, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(CANARY)
    secret_file.chmod(0o644)
    code = f"""
        import os
        leaks = [k for k, v in os.environ.items() if {CANARY!r} in v]
        paths = [{str(secret_file)!r}, "/work/main/pyproject.toml", "/root/.bashrc", "/etc/passwd"]
        paths += ["/proc/%s/environ" % p for p in os.listdir("/proc") if p.isdigit()]
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                if {CANARY!r}.encode() in data or not path.startswith("/proc"):
                    leaks.append(path)
            except OSError:
                pass
        print(len(leaks) * 1000 + int(input()) * 2)
    """
    assert _grade(grader, code)[0] is Status.PASSED


def test_sockets_are_denied(grader: CodeGrader) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    status, rule, detail = _grade(grader, code)
    thread.join()
    listener.close()
    assert status is Status.RUNTIME_ERROR and rule == "test-0-exit-1-PermissionError", detail
    assert not accepted


def test_signals_cannot_kill_the_zygote(grader: CodeGrader) -> None:
    code = """
        import os, signal
        for pid in (os.getppid(), 1, -1, 2, 3):
            for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        print(int(input()) * 2)
    """
    # The zygote is pid 1 of the sandbox's pid namespace: signals from inside do not reach it, and
    # nothing of the service is visible. _grade also asserts that no zygote had to be replaced.
    assert _grade(grader, code)[0] is Status.PASSED


def test_deep_recursion_is_a_runtime_error(grader: CodeGrader) -> None:
    status, rule, _ = _grade(grader, "def f(n):\n    return f(n + 1)\nf(0)\n")
    assert (status, rule) == (Status.RUNTIME_ERROR, "test-0-exit-1-RecursionError")


def test_reading_stdin_when_none_is_given(grader: CodeGrader) -> None:
    status, rule, _ = _grade(grader, "def add(a, b):\n    return int(input()) + b\n", ADD)
    assert (status, rule) == (Status.RUNTIME_ERROR, "test-0-exit-1-EOFError")


def test_eq_override_does_not_pass(grader: CodeGrader) -> None:
    evil = "class Y:\n    def __eq__(self, other):\n        return True\n"
    assert _grade(grader, evil + "def add(a, b):\n    return Y()\n", ADD)[:2] == (
        Status.WRONG_ANSWER,
        "test-0-unsupported-return-type",
    )
    subclass = "class I(int):\n    def __eq__(self, other):\n        return True\n"
    assert _grade(grader, subclass + "def add(a, b):\n    return I(0)\n", ADD)[0] is Status.WRONG_ANSWER
    he = "    return Y()\n" + evil
    assert _grade(grader, he, HE)[:2] == (Status.WRONG_ANSWER, "test-0-unsupported-return-type")


def test_sys_exit_before_tests_does_not_pass(grader: CodeGrader) -> None:
    assert _grade(grader, "    pass\nimport sys\nsys.exit(0)\n", HE)[:2] == (
        Status.RUNTIME_ERROR,
        "test-0-candidate-exited",
    )
    assert _grade(grader, "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n", ADD)[:2] == (
        Status.RUNTIME_ERROR,
        "test-0-no-return-value",
    )


def test_monkeypatching_the_checker_does_not_pass(grader: CodeGrader) -> None:
    code = """\
    return 0
import builtins, math
builtins.abs = lambda x: 0
builtins.AssertionError = type("Nope", (Exception,), {})
math.isclose = lambda *a, **k: True
def check(candidate):
    pass
"""
    assert _grade(grader, code, HE)[:2] == (Status.WRONG_ANSWER, "test-0-assertion-failed")


def test_tests_are_not_in_the_candidates_memory(grader: CodeGrader) -> None:
    marker_test = "def check(candidate):\n    assert candidate(1, 1) == 0  # ZXQ_" + "SECRET_7731\n"
    problem = CodeProblem("he-mem", "humaneval", prompt=HE.prompt, test=marker_test, entry_point="add")
    scan = """\
    import ctypes, re
    marker = re.compile(b"ZXQ_[S]ECRET_7731")  # never builds the marker's bytes itself
    found = regions = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or hi - lo > 2**28 or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            found += len(marker.findall(ctypes.string_at(lo, hi - lo)))
            regions += 1
    return found if regions > 5 else -1
"""
    for _ in range(3):  # later jobs too: earlier tests must have been wiped from the zygote
        assert _grade(grader, scan, problem)[0] is Status.PASSED


@pytest.fixture(scope="module")
def one_worker() -> Iterator[SandboxPool]:
    """One worker, so every HumanEval job meets the same tester process."""
    with SandboxPool(PoolConfig(workers=1)) as p:
        yield p


def _tester_pid(pool: SandboxPool) -> int:
    tester = pool.workers[0].tester
    assert tester is not None and tester.alive()
    return tester.proc.pid


def test_candidates_cannot_see_or_signal_the_tester(one_worker: SandboxPool) -> None:
    g = CodeGrader(one_worker)
    assert g.grade(HE, "    return a + b\n").status is Status.PASSED
    tester = _tester_pid(one_worker)
    # Signals every process it can see (and -1), then answers; anything visible besides itself
    # and the zygote (pid 1) would turn its answers wrong.
    hostile = """    return a + b + EXTRA
import os, signal
_me = os.getpid()
_seen = {int(p) for p in os.listdir("/proc") if p.isdigit()}
for _pid in [*_seen, -1]:
    for _sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            if _pid not in (_me, 1):
                os.kill(_pid, _sig)
        except OSError:
            pass
EXTRA = len(_seen - {_me, 1})
"""
    v = g.grade(HE, hostile)
    assert (v.status, v.rule) == (Status.PASSED, "all-tests-passed"), v.detail
    assert _tester_pid(one_worker) == tester, "the tester was replaced"
    assert g.grade(HE, "    return a - b\n").rule == "test-0-assertion-failed"
    assert _tester_pid(one_worker) == tester


def test_a_test_that_exits_gets_a_fresh_tester(one_worker: SandboxPool) -> None:
    g = CodeGrader(one_worker)
    exits = CodeProblem("he-exit", "humaneval", prompt=HE.prompt, test="def check(candidate):\n    raise SystemExit(3)\n",
                        entry_point="add")  # fmt: skip
    assert g.grade(HE, "    return a + b\n").correct
    before = _tester_pid(one_worker)
    v = g.grade(exits, "    return a + b\n")
    assert (v.status, v.rule) == (Status.RUNTIME_ERROR, "test-0-exit-3")
    assert one_worker.workers[0].tester is None, "a tester whose test exited must not serve again"
    assert g.grade(HE, "    return a + b\n").correct
    assert _tester_pid(one_worker) != before
    assert one_worker.health().restarts == 0, "the zygote was not at fault"


def test_dataset_code_changes_do_not_outlive_their_job(one_worker: SandboxPool) -> None:
    # The tester runs many jobs: builtins and the recursion limit a test changes are restored.
    meddling = CodeProblem(
        "he-meddle", "humaneval", prompt=HE.prompt, entry_point="add",
        test="import builtins, sys\nbuiltins.abs = lambda x: 0\nsys.setrecursionlimit(60)\n"
             "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    )  # fmt: skip
    g = CodeGrader(one_worker)
    assert g.grade(meddling, "    return a + b\n").correct
    deep = "def f(n):\n    return n and f(n - 1)\nf(500)\n"
    probe = CodeProblem(
        "he-probe", "humaneval", prompt=HE.prompt, entry_point="add",
        test=deep + "def check(candidate):\n    assert abs(candidate(0.5, 0.25) - 1) > 0\n",
    )  # fmt: skip
    v = g.grade(probe, "    return a + b\n")
    assert v.correct, v.detail  # abs() is real again and 500 frames fit again


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter is x86_64 only")
def test_signal_rules_cover_sigqueue_and_fcntl_owner() -> None:
    """With the signal rules (the mode without a pid namespace), a child can signal only itself:
    rt_sigqueueinfo and SIGIO via fcntl(F_SETOWN/F_SETSIG) included, not just kill()."""
    import ctypes
    import fcntl

    from services.verifier.sandbox import seccomp

    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            seccomp.install(os.getpid())
            libc = ctypes.CDLL(None, use_errno=True)
            info = ctypes.create_string_buffer(128)
            results = [libc.syscall(129, parent, 0, info), libc.syscall(129, os.getpid(), 0, info)]
            for cmd, arg in ((fcntl.F_SETOWN, parent), (10, 0), (fcntl.F_GETFL, 0)):
                try:
                    results.append(fcntl.fcntl(r, cmd, arg) * 0)
                except PermissionError:
                    results.append(-1)
            os.write(w, repr(results).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = os.read(r, 1000).decode()
    os.close(r)
    # sigqueue to the parent denied, to itself allowed; F_SETOWN and F_SETSIG denied; F_GETFL allowed
    assert got == repr([-1, 0, -1, -1, 0])


@pytest.mark.parametrize(
    ("problem", "code", "why"),
    [
        (DOUBLE, "", "empty"),
        (DOUBLE, b"\xff\xfe print(1)", "UTF-8"),
        (DOUBLE, "x = 1\n" * 100_000, "bytes"),
        (DOUBLE, "print(1)\x00", "NUL"),
        ({"id": "none", "kind": "stdin", "tests": []}, "print(1)", "no tests"),
        ({"id": "bad", "input_output": "{not json"}, "print(1)", "not valid JSON"),
        ({"id": "odd", "input_output": {"inputs": ["1"], "outputs": []}}, "print(1)", "same length"),
        ({"id": "what", "kind": "rust", "tests": [{"input": "", "output": ""}]}, "x", "unknown"),
    ],
)
def test_bad_input_is_invalid_argument(
    grader: CodeGrader, problem: object, code: str | bytes, why: str
) -> None:
    v = grader.grade(problem, code)  # type: ignore[arg-type]
    assert v.status is Status.INVALID_ARGUMENT and not v.correct
    assert why in v.detail


def test_verdict_cache_and_version(pool: SandboxPool) -> None:
    from services.verifier.code_checks import CODE_CHECKER_VERSION
    from services.verifier.sandbox.pool import VerdictCache

    g = CodeGrader(pool, VerdictCache())
    first, second = g.grade(DOUBLE, "print(int(input())*2)"), g.grade(DOUBLE, "print(int(input())*2)")
    assert first.checker_version == CODE_CHECKER_VERSION and not first.cached and second.cached
    assert [t.status for t in first.tests] == [Status.PASSED, Status.PASSED]


def test_rlimits_fallback_still_blocks_network_and_bounds_forks() -> None:
    with SandboxPool(PoolConfig(workers=1, mode="rlimits")) as p:
        assert p.protections.mode == "rlimits" and p.protections.seccomp.startswith("on")
        g = CodeGrader(p)
        code = "import socket\nsocket.socket()\n"
        assert g.grade(DOUBLE, code).rule == "test-0-exit-1-PermissionError"
        assert g.grade(DOUBLE, "import os\nwhile True:\n    os.fork()\n").status is Status.RUNTIME_ERROR
        env = f"import os\nprint(int(input()) * 2 + sum({CANARY!r} in v for v in os.environ.values()))\n"
        assert g.grade(DOUBLE, env).status is Status.PASSED
        assert g.grade(HE, "    return a + b\n").status is Status.PASSED  # its tester runs there too
        assert g.grade(HE, "    return a * b\n").rule == "test-0-assertion-failed"
        assert p.health().state == "SERVING"


def test_custom_checker_accepts_any_valid_answer(grader: CodeGrader) -> None:
    checker = "def check(inp, expected, output):\n    a, b = map(int, output.split())\n    return a + b == int(inp)\n"
    pair = problem_from_dict(
        {"id": "pair", "kind": "stdin", "tests": [{"input": "10\n", "output": "3 7"}], "checker": checker}
    )
    assert grader.grade(pair, "n = int(input())\nprint(1, n - 1)\n").status is Status.PASSED
    assert grader.grade(pair, "print(5, 6)\n").rule == "test-0-custom-checker"
    assert grader.grade(pair, "print('ten')\n").rule == "test-0-custom-checker-raised-ValueError"


def test_time_limit_scales_from_a_reference_solution(grader: CodeGrader) -> None:
    slow = "import time\ntime.sleep(0.4)\nprint(int(input()) * 2)\n"
    tuned = grader.calibrate(DOUBLE, slow)
    assert 1.2 <= tuned.time_limit_s <= 2.5  # 3x the slowest test (~0.4-0.8 s on a loaded machine)
    assert grader.grade(tuned, slow).correct


def test_workers_are_recycled_and_the_queue_pushes_back() -> None:
    from services.verifier.sandbox import PoolBusy

    with SandboxPool(PoolConfig(workers=1, queue_size=1, recycle_after=2)) as p:
        g = CodeGrader(p)
        for _ in range(5):
            assert g.grade(DOUBLE, "print(int(input()) * 2)").correct
        assert p.health().restarts >= 2 and p.health().state == "SERVING"
        gate = threading.Event()
        first = p.submit(lambda s: gate.wait(10))
        deadline = time.monotonic() + 10
        while p.health().queue_depth and time.monotonic() < deadline:
            time.sleep(0.01)  # until the worker holds the first job; then one more fits in the queue
        second = p.submit(lambda s: True)
        with pytest.raises(PoolBusy):
            p.submit(lambda s: True)
        gate.set()
        assert first.result(10) and second.result(10)


def test_programs_get_plain_python_semantics(grader: CodeGrader) -> None:
    # The sandbox's own modules use `from __future__ import annotations`; programs must not inherit it,
    # and a program's later tests run from the zygote's cached compile with the same result.
    code = "def f(x: int):\n    pass\nprint(int(input()) * 2 if f.__annotations__['x'] is int else 0)\n"
    assert _grade(grader, code)[:2] == (Status.PASSED, "all-tests-passed")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("x = " + "(" * 100_000 + ")" * 100_000, Status.RUNTIME_ERROR),  # too many nested parentheses
        ("x = " + "+".join(["1"] * 60_000), Status.RUNTIME_ERROR),  # compiler recursion limit
        ("x = ('a' * 4000) * 4000 * 4000", Status.MEMORY_LIMIT),  # not folded at compile time
    ],
)
def test_compile_bombs_fail_without_hurting_the_zygote(grader: CodeGrader, code: str, status: Status) -> None:
    # The zygote compiles untrusted code once per program (it runs none of it): it must survive.
    assert _grade(grader, code)[0] is status
