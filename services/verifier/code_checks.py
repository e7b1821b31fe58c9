"""Code-task rewards: APPS stdin and call-based problems and HumanEval, graded in the trusted parent.

Programs run in the sandbox pool (`services.verifier.sandbox`, driven by `code_grader.CodeGrader`);
every decision is made here, from
what the sandbox reports: exit status, signals, the captured stdout, and for call-based problems
the return value as *plain data* (exact builtin types; an object with a hostile `__eq__` cannot
cross the boundary). HumanEval's `check()` runs in a separate tester process that never runs model
code and talks to the candidate only through that plain-data channel.

The stdout comparator (`compare_stdout`), the only one:
1. line endings normalised (CRLF and CR become LF);
2. trailing ASCII whitespace stripped from every line, trailing blank lines dropped;
3. the same number of lines, and on each line the same number of tokens (split on ASCII blanks);
4. tokens compared exactly, except: two integer tokens compare as integers of any size ("007" and
   "7" are equal; no 32/64-bit overflow), and two *non-integer* numeric tokens compare with
   `math.isclose(rel_tol=tol, abs_tol=tol)` (tol 1e-6 unless the problem sets `float_tol`). An
   integer token never matches a non-integer one ("1" vs "1.0" is a wrong answer).
No lower-casing, no order-insensitive or set-based fallbacks. Problems with several correct
outputs supply a `checker` (source of `check(input, expected, output) -> bool`), which runs in the
sandbox on plain strings, in a process with no model code.

Reward = strict accuracy: correct only when every test passes. Tests run in order and grading
stops at the first failure (the rest are SKIPPED) unless `stop_on_failure=False`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from shared.tasks import Verdict

CODE_CHECKER_VERSION = "code-1"
"""Recorded with every verdict and part of the cache key; bump when a rule changes."""
MAX_CODE_BYTES = 256 * 1024
MAX_TESTS = 10_000
MAX_TEST_BYTES = 64 * 1024 * 1024
APPS_TIME_LIMIT_S = 4.0
HUMANEVAL_TIME_LIMIT_S = 3.0


class Status(StrEnum):
    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SKIPPED = "skipped"
    INVALID_ARGUMENT = "invalid_argument"
    INTERNAL_ERROR = "internal_error"


class InvalidProblem(ValueError):
    """A problem or submission that cannot be graded; the message says why."""


@dataclass(frozen=True)
class TestCase:
    input: Any
    """stdin text (stdin problems) or the list of arguments (call-based)."""
    output: Any
    """Expected stdout text, or the expected return value (call-based)."""


@dataclass(frozen=True)
class CodeProblem:
    id: str
    kind: str
    """`stdin`, `call` or `humaneval`."""
    tests: tuple[TestCase, ...] = ()
    fn_name: str = ""
    prompt: str = ""
    test: str = ""
    """HumanEval: the test code that defines `check(candidate)`."""
    entry_point: str = ""
    time_limit_s: float = APPS_TIME_LIMIT_S
    memory_mb: int = 1024
    float_tol: float = 1e-6
    checker: str = ""
    apps_unwrap: bool = False
    """APPS stores some call-based outputs as [value]; accept value for a one-element list."""

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class TestResult:
    index: int
    status: Status
    rule: str
    wall_s: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class CodeVerdict:
    correct: bool
    status: Status
    rule: str
    tests: tuple[TestResult, ...] = ()
    checker_version: str = CODE_CHECKER_VERSION
    detail: str = ""
    cached: bool = False

    def to_verdict(self) -> Verdict:
        """The service's verdict row: `extracted` carries the status, `rule` what decided."""
        return Verdict(self.correct, self.status.value, self.rule, self.checker_version)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    equal: bool
    rule: str
    where: str = ""


# -- the comparator -------------------------------------------------------------------------

_BLANKS = re.compile(r"[ \t\v\f]+")
_INT = re.compile(r"([+-]?)(\d+)\Z")
_NUM = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?\Z")


def _lines(text: str) -> list[str]:
    lines = [line.rstrip(" \t\v\f") for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _int_key(m: re.Match[str]) -> str:
    # Compared as text after normalising sign and zeros: any size, and no int() digit limit.
    digits = m.group(2).lstrip("0") or "0"
    return digits if digits == "0" or m.group(1) != "-" else "-" + digits


def _tokens_equal(want: str, got: str, tol: float) -> tuple[bool, str]:
    if want == got:
        return True, "exact"
    wi, gi = _INT.match(want), _INT.match(got)
    if wi and gi:
        return _int_key(wi) == _int_key(gi), "integer"
    if not wi and not gi and _NUM.match(want) and _NUM.match(got):
        return math.isclose(float(want), float(got), rel_tol=tol, abs_tol=tol), "float"
    return False, "exact"


def compare_stdout(expected: str, actual: str, float_tol: float = 1e-6) -> Comparison:
    """The documented stdout rule (module docstring); `rule` names what decided."""
    want, got = _lines(expected), _lines(actual)
    if len(want) != len(got):
        return Comparison(False, "line-count", f"expected {len(want)} lines, got {len(got)}")
    used_float = False
    for n, (w_line, g_line) in enumerate(zip(want, got, strict=True), start=1):
        w_toks = [t for t in _BLANKS.split(w_line) if t]
        g_toks = [t for t in _BLANKS.split(g_line) if t]
        if len(w_toks) != len(g_toks):
            return Comparison(
                False, "token-count", f"line {n}: expected {len(w_toks)} tokens, got {len(g_toks)}"
            )
        for w, g in zip(w_toks, g_toks, strict=True):
            ok, kind = _tokens_equal(w, g, float_tol)
            if not ok:
                return Comparison(
                    False, f"token-mismatch-{kind}", f"line {n}: expected {w[:40]!r}, got {g[:40]!r}"
                )
            used_float |= kind == "float"
    return Comparison(True, "tokens-float-tolerance" if used_float else "tokens-exact")


def compare_values(expected: Any, actual: Any, float_tol: float = 1e-6) -> bool:
    """Return values: exact types (bool is not int), tuples match lists (JSON has no tuples),
    tolerance only between two floats, int vs float equal only when numerically identical."""
    if type(expected) is bool or type(actual) is bool:
        return type(expected) is type(actual) and expected == actual
    if type(expected) is float and type(actual) is float:
        return math.isclose(expected, actual, rel_tol=float_tol, abs_tol=float_tol)
    if type(expected) in (int, float) and type(actual) in (int, float):
        return expected == actual
    if type(expected) in (list, tuple) and type(actual) in (list, tuple):
        return len(expected) == len(actual) and all(
            compare_values(e, a, float_tol) for e, a in zip(expected, actual, strict=True)
        )
    if type(expected) is dict and type(actual) is dict:
        return expected.keys() == actual.keys() and all(
            compare_values(v, actual[k], float_tol) for k, v in expected.items()
        )
    return type(expected) is type(actual) and expected == actual


# -- problems ---------------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)  # APPS stores some outputs as a list of lines
    if not isinstance(value, str):
        raise InvalidProblem(f"{what} must be text, got {type(value).__name__}")
    return value


def _apps_tests(io: Any, pid: str) -> tuple[str, tuple[TestCase, ...], str]:
    if isinstance(io, str):
        try:
            io = json.loads(io) if io.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidProblem(f"problem {pid}: input_output is not valid JSON ({exc.msg})") from None
    if not isinstance(io, dict):
        raise InvalidProblem(f"problem {pid}: input_output must be an object")
    inputs, outputs = io.get("inputs", []), io.get("outputs", [])
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise InvalidProblem(f"problem {pid}: inputs and outputs must be lists of the same length")
    fn = io.get("fn_name") or ""
    if fn:
        if not all(isinstance(a, list) for a in inputs):
            raise InvalidProblem(f"problem {pid}: call-based inputs must be lists of arguments")
        return "call", tuple(TestCase(i, o) for i, o in zip(inputs, outputs, strict=True)), str(fn)
    tests = tuple(
        TestCase(_text(i, f"{pid} input"), _text(o, f"{pid} output"))
        for i, o in zip(inputs, outputs, strict=True)
    )
    return "stdin", tests, ""


def problem_from_dict(row: Mapping[str, Any]) -> CodeProblem:
    """A CodeProblem from a HumanEval row, an APPS row (`input_output`) or restem's own shape
    (`kind`, `tests: [{input, output}]`, optional `fn_name`, `time_limit_s`, `checker`, ...)."""
    if not isinstance(row, Mapping):
        raise InvalidProblem("a problem must be a JSON object")
    pid = str(row.get("id", row.get("task_id", row.get("problem_id", "?"))))
    common: dict[str, Any] = {}
    for key, cast in (("time_limit_s", float), ("memory_mb", int), ("float_tol", float), ("checker", str)):
        if row.get(key) is not None:
            common[key] = cast(row[key])
    if "entry_point" in row and "test" in row:
        common.setdefault("time_limit_s", HUMANEVAL_TIME_LIMIT_S)
        problem = CodeProblem(
            pid, "humaneval", prompt=str(row.get("prompt", "")), test=str(row["test"]),
            entry_point=str(row["entry_point"]), **common,
        )  # fmt: skip
    elif "input_output" in row:
        kind, tests, fn = _apps_tests(row["input_output"], pid)
        problem = CodeProblem(pid, kind, tests, fn_name=fn, apps_unwrap=True, **common)
    elif row.get("kind") in ("stdin", "call"):
        raw = row.get("tests")
        if not isinstance(raw, list) or not all(
            isinstance(t, dict) and {"input", "output"} <= t.keys() for t in raw
        ):
            raise InvalidProblem(f"problem {pid}: tests must be a list of {{input, output}} objects")
        _, tests, fn = _apps_tests(
            {"inputs": [t["input"] for t in raw], "outputs": [t["output"] for t in raw],
             "fn_name": row.get("fn_name") if row["kind"] == "call" else None}, pid,
        )  # fmt: skip
        problem = CodeProblem(pid, str(row["kind"]), tests, fn_name=fn, **common)
    else:
        raise InvalidProblem(
            f"problem {pid}: unknown code task shape (need entry_point+test, input_output or kind)"
        )
    return validate_problem(problem)


def validate_problem(p: CodeProblem) -> CodeProblem:
    if p.kind not in ("stdin", "call", "humaneval"):
        raise InvalidProblem(f"problem {p.id}: unknown kind {p.kind!r}")
    if p.kind != "humaneval" and not p.tests:
        raise InvalidProblem(f"problem {p.id}: has no tests")
    if p.kind == "humaneval" and ("def check" not in p.test or not p.entry_point.isidentifier()):
        raise InvalidProblem(f"problem {p.id}: HumanEval test must define check() and name an entry_point")
    if p.kind == "humaneval":
        for part, source in (("prompt", p.prompt), ("test", p.test)):
            try:
                compile(source, f"<{part}>", "exec", dont_inherit=True)  # dataset code, compiled by the judge
            except (SyntaxError, ValueError) as exc:
                raise InvalidProblem(f"problem {p.id}: the {part} does not compile: {exc}") from None
    if len(p.tests) > MAX_TESTS:
        raise InvalidProblem(f"problem {p.id}: {len(p.tests)} tests; at most {MAX_TESTS}")
    size = len(json.dumps([[t.input, t.output] for t in p.tests], default=repr)) + len(p.test) + len(p.prompt)
    if size > MAX_TEST_BYTES:
        raise InvalidProblem(f"problem {p.id}: tests are {size} bytes; at most {MAX_TEST_BYTES}")
    if not 0 < p.time_limit_s <= 60 or not 16 <= p.memory_mb <= 16384:
        raise InvalidProblem(f"problem {p.id}: time_limit_s must be in (0, 60] and memory_mb in [16, 16384]")
    return p


def scaled_time_limit(
    reference_s: float, factor: float = 3.0, floor_s: float = 1.0, cap_s: float = 20.0
) -> float:
    """A per-test limit from a reference solution's slowest test: factor x runtime, within bounds."""
    return min(cap_s, max(floor_s, factor * reference_s))


def extract_code(completion: str) -> tuple[str, str]:
    """(code, rule): the last fenced block of a chat completion, else the completion as is."""
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", completion, re.DOTALL | re.IGNORECASE)
    return (blocks[-1], "fenced-block") if blocks else (completion, "raw")


def decode_code(code: str | bytes, kind: str) -> str:
    if isinstance(code, bytes):
        try:
            code = code.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidProblem("code is not valid UTF-8") from None
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise InvalidProblem(f"code is over {MAX_CODE_BYTES} bytes")
    if "\x00" in code:
        raise InvalidProblem("code contains NUL bytes")
    if kind != "humaneval" and not code.strip():  # an empty HumanEval body is a (failing) program
        raise InvalidProblem("code is empty")
    return code


def invalid_verdict(msg: str) -> CodeVerdict:
    return CodeVerdict(False, Status.INVALID_ARGUMENT, "invalid-argument", detail=msg)
