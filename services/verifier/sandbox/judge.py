"""Grading jobs: run a code problem's tests in a pool session and decide each test in the parent.

Everything here runs in a pool worker thread of the trusted service process, never in the
sandbox: it reads what the zygote reported (exit status, signals, stdout, the plain-data return
value, the HumanEval tester's report) and applies the rules of `services.verifier.code_checks`.
A program cannot influence a verdict except through its output and return values: a report frame
it forges can only claim a value it could have returned, or an error that fails it anyway.
"""

from __future__ import annotations

import functools
import json
import marshal
import signal
from typing import Any

from services.verifier.code_checks import (
    CodeProblem,
    CodeVerdict,
    Status,
    TestCase,
    TestResult,
    compare_stdout,
    compare_values,
)
from services.verifier.sandbox import codec
from services.verifier.sandbox.pool import Limits, ProcResult, RunResult, Session

_EXIT_SETUP_FAILED = 70  # runners' child exits with it when its own setup failed


_TIME_SIGNALS = (signal.SIGXCPU,)


def classify(run: RunResult, proc: ProcResult, limits: Limits) -> tuple[Status, str] | None:
    """The failing status of a finished process, or None when it exited normally with 0."""
    rep = proc.report or {}
    if run.output_limit:
        return Status.OUTPUT_LIMIT, "output-limit"
    if run.timed_out:
        return Status.TIME_LIMIT, "wall-time-limit"
    if proc.signal in _TIME_SIGNALS or (proc.signal == signal.SIGKILL and (proc.cpu_s or 0) >= limits.cpu_s):
        return Status.TIME_LIMIT, "cpu-time-limit"
    if rep.get("error") == "MemoryError":
        return Status.MEMORY_LIMIT, "memory-limit"
    if rep.get("error") == "FileSizeLimit" or proc.signal == signal.SIGXFSZ:
        return Status.OUTPUT_LIMIT, "file-size-limit"
    if proc.exit_code == _EXIT_SETUP_FAILED and not rep:
        return Status.INTERNAL_ERROR, "sandbox-setup-failed"
    if proc.signal is not None:
        name = (
            signal.Signals(proc.signal).name
            if proc.signal in signal.Signals._value2member_map_
            else str(proc.signal)
        )
        near_mem = (proc.maxrss_kb or 0) * 1024 >= 0.9 * limits.memory_mb * 1024 * 1024
        return (Status.MEMORY_LIMIT, "memory-limit") if near_mem else (Status.RUNTIME_ERROR, f"signal-{name}")
    if proc.exit_code not in (0, None):
        return Status.RUNTIME_ERROR, f"exit-{proc.exit_code}" + (
            f"-{rep['error']}" if rep.get("error") else ""
        )
    return None


def limits_for(problem: CodeProblem) -> Limits:
    return Limits(wall_s=problem.time_limit_s, cpu_s=problem.time_limit_s, memory_mb=problem.memory_mb)


def _detail(proc: ProcResult) -> str:
    rep = proc.report or {}
    msg = f"{rep.get('error', '')}: {rep.get('message', '')}" if rep.get("error") else proc.stderr[-300:]
    return msg.strip()[:300]


# -- grading jobs: they run in a pool worker thread; every decision is made here -----------------


def _custom_check(
    session: Session, p: CodeProblem, t: TestCase, output: str, i: int, wall: float
) -> TestResult:
    secret = json.dumps({"source": p.checker, "expected": t.output}).encode()
    limits = Limits(wall_s=10.0, cpu_s=10.0)
    run = session.run({"mode": "checker", "input": t.input, "output": output}, limits, secret)
    rep = run.main.report or {}
    if type(rep.get("value")) is bool:
        return TestResult(i, Status.PASSED if rep["value"] else Status.WRONG_ANSWER, "custom-checker", wall)
    if rep.get("error") and not run.timed_out:
        # The checker raised on this output (e.g. it cannot be parsed): the output is wrong.
        return TestResult(
            i, Status.WRONG_ANSWER, f"custom-checker-raised-{rep['error']}", wall, _detail(run.main)
        )
    return TestResult(i, Status.INTERNAL_ERROR, "checker-failed", wall, _detail(run.main))


def _stdin_test(session: Session, p: CodeProblem, code: str, i: int, limits: Limits) -> TestResult:
    t = p.tests[i]
    run = session.run({"mode": "stdin", "code": code, "stdin": t.input}, limits)
    failed = classify(run, run.main, limits)
    if failed:
        return TestResult(i, *failed, run.wall_s, _detail(run.main))
    if p.checker:
        return _custom_check(session, p, t, run.main.stdout, i, run.wall_s)
    cmp = compare_stdout(t.output, run.main.stdout, p.float_tol)
    return TestResult(i, Status.PASSED if cmp.equal else Status.WRONG_ANSWER, cmp.rule, run.wall_s, cmp.where)


def _call_test(session: Session, p: CodeProblem, code: str, i: int, limits: Limits) -> TestResult:
    t = p.tests[i]
    spec = {"mode": "call", "code": code, "fn_name": p.fn_name, "args": codec.encode(list(t.input))}
    run = session.run(spec, limits)
    failed = classify(run, run.main, limits)
    if failed:
        return TestResult(i, *failed, run.wall_s, _detail(run.main))
    rep = run.main.report
    if rep is None or "value" not in rep:
        unsupported = rep is not None and rep.get("error") == "UnsupportedValue"
        status, rule = (
            (Status.WRONG_ANSWER, "unsupported-return-type")
            if unsupported
            else (Status.RUNTIME_ERROR, "no-return-value")
        )
        return TestResult(i, status, rule, run.wall_s, _detail(run.main))
    try:
        value = codec.decode(rep["value"])
    except codec.CodecError as exc:
        return TestResult(i, Status.WRONG_ANSWER, "unsupported-return-type", run.wall_s, str(exc))
    if compare_values(t.output, value, p.float_tol):
        return TestResult(i, Status.PASSED, "value-equal", run.wall_s)
    exp = t.output
    if p.apps_unwrap and type(exp) is list and len(exp) == 1 and compare_values(exp[0], value, p.float_tol):
        return TestResult(i, Status.PASSED, "value-equal-apps-unwrapped", run.wall_s)
    return TestResult(i, Status.WRONG_ANSWER, "value-mismatch", run.wall_s, f"got {codec.dumps(value)[:200]}")


def _candidate_failure(run: RunResult, msg: str, limits: Limits) -> tuple[Status, str]:
    cand = run.procs["candidate"]
    if msg.startswith("MemoryError"):
        return Status.MEMORY_LIMIT, "memory-limit"
    if "exited before answering" in msg:
        return classify(run, cand, limits) or (Status.RUNTIME_ERROR, "candidate-exited")
    if msg.startswith("CodecError"):
        return Status.WRONG_ANSWER, "unsupported-return-type"
    return Status.RUNTIME_ERROR, f"candidate-raised-{msg.split(':', 1)[0][:40]}"


@functools.lru_cache(maxsize=1024)
def _compiled_tester(prompt: str, test: str) -> bytes:
    """Prompt and test compiled here, once per problem, for the tester (trusted dataset code).

    marshal is the format of this Python's major.minor, which the envelope guarantees the
    sandbox interpreter shares; a test that does not compile fails here, in the parent.
    """
    compile_ = functools.partial(compile, mode="exec", dont_inherit=True)
    return marshal.dumps((compile_(prompt, "<prompt>"), compile_(test, "<test>")))


def _humaneval_test(session: Session, p: CodeProblem, code: str, limits: Limits) -> TestResult:
    spec = {"mode": "humaneval", "prompt": p.prompt, "code": code, "entry_point": p.entry_point}
    run = session.run(spec, limits, secret=_compiled_tester(p.prompt, p.test))
    tester, cand = run.procs["tester"], run.procs["candidate"]
    rep = tester.report or {}
    if run.output_limit or run.timed_out:
        return TestResult(0, *(classify(run, tester, limits) or (Status.INTERNAL_ERROR, "?")), run.wall_s)
    if rep.get("passed") is True and tester.exit_code == 0:
        return TestResult(0, Status.PASSED, "check-passed", run.wall_s)
    if rep.get("failed") == "AssertionError":
        return TestResult(
            0, Status.WRONG_ANSWER, "assertion-failed", run.wall_s, f"test line {rep.get('line')}"
        )
    if rep.get("failed") == "CandidateError":
        msg = str(rep.get("message", ""))
        return TestResult(0, *_candidate_failure(run, msg, limits), run.wall_s, msg[:300] or _detail(cand))
    failed = classify(run, tester, limits)
    if failed and failed[0] is Status.RUNTIME_ERROR and rep.get("error"):
        # The test itself raised (e.g. TypeError on a None answer): the candidate's answer is wrong.
        return TestResult(0, Status.WRONG_ANSWER, f"test-raised-{rep['error']}", run.wall_s, _detail(tester))
    return TestResult(
        0, *(failed or (Status.INTERNAL_ERROR, "tester-no-report")), run.wall_s, _detail(tester)
    )


def _verdict(results: list[TestResult], total: int) -> CodeVerdict:
    skipped = [TestResult(i, Status.SKIPPED, "stopped-after-failure") for i in range(len(results), total)]
    first_bad = next((r for r in results if r.status is not Status.PASSED), None)
    if first_bad is None:
        return CodeVerdict(True, Status.PASSED, "all-tests-passed", tuple(results))
    rule = f"test-{first_bad.index}-{first_bad.rule}"
    return CodeVerdict(False, first_bad.status, rule, tuple(results + skipped), detail=first_bad.detail)


def grade_job(p: CodeProblem, code: str, stop_on_failure: bool = True) -> Any:
    """The pool job that runs every test of `p` against `code` in one worker."""
    limits = limits_for(p)

    def job(session: Session) -> CodeVerdict:
        if p.kind == "humaneval":
            return _verdict([_humaneval_test(session, p, code, limits)], 1)
        one = _stdin_test if p.kind == "stdin" else _call_test
        results: list[TestResult] = []
        for i in range(len(p.tests)):
            results.append(one(session, p, code, i, limits))
            if stop_on_failure and results[-1].status is not Status.PASSED:
                break
        return _verdict(results, len(p.tests))

    return job
