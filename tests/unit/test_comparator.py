"""The documented stdout comparator, return-value comparison, the codec, problem parsing, and the
classification of sandbox results: pure functions, no sandbox needed."""

from __future__ import annotations

import signal

import pytest

from services.verifier.code_checks import (
    InvalidProblem,
    Status,
    compare_stdout,
    compare_values,
    decode_code,
    extract_code,
    problem_from_dict,
    scaled_time_limit,
)
from services.verifier.sandbox import codec, seccomp
from services.verifier.sandbox.judge import classify
from services.verifier.sandbox.pool import Limits, ProcResult, RunResult


@pytest.mark.parametrize(
    ("expected", "actual", "equal", "rule"),
    [
        ("1 2\n3\n", "1 2\r\n3\r\n", True, "tokens-exact"),  # line endings
        ("1 2\n3", "1 2   \n3\n\n\n", True, "tokens-exact"),  # trailing blanks and blank lines
        ("1 2", "1    2", True, "tokens-exact"),  # token split
        ("1 2\n3", "1 2 3", False, "line-count"),  # lines matter
        ("1 2", "1 2 3", False, "token-count"),
        ("007", "7", True, "tokens-exact"),  # integers as integers
        ("-0", "0", True, "tokens-exact"),
        ("99999999999999999999999", "99999999999999999999999", True, "tokens-exact"),
        ("4294967296", "0", False, "token-mismatch-integer"),  # no 32-bit wrap-around
        ("1" * 5000, "0" + "1" * 5000, True, "tokens-exact"),  # beyond int()'s digit limit
        ("0.3333333", "0.33333331", True, "tokens-float-tolerance"),
        ("0.5", "0.50001", False, "token-mismatch-float"),
        ("1.0", "1", False, "token-mismatch-exact"),  # tolerance only between non-integers
        ("1", "1.0", False, "token-mismatch-exact"),
        ("YES", "yes", False, "token-mismatch-exact"),  # no lower-casing
        ("1 2 3", "3 2 1", False, "token-mismatch-integer"),  # no order-insensitive fallback
        ("nan", "nan", True, "tokens-exact"),
        ("inf", "1e999", False, "token-mismatch-exact"),
        ("", "\n\n", True, "tokens-exact"),
        ("a\u00a0b", "a b", False, "token-count"),  # only ASCII blanks separate tokens
    ],
)
def test_compare_stdout(expected: str, actual: str, equal: bool, rule: str) -> None:
    result = compare_stdout(expected, actual)
    assert (result.equal, result.rule) == (equal, rule)


def test_float_tolerance_is_per_problem() -> None:
    assert not compare_stdout("0.5", "0.5001").equal
    assert compare_stdout("0.5", "0.5001", float_tol=1e-3).equal


@pytest.mark.parametrize(
    ("expected", "actual", "equal"),
    [
        (3, 3, True),
        ([1, [2, 3]], (1, (2, 3)), True),  # JSON has no tuples
        (True, 1, False),  # bool is not int
        (1, True, False),
        (2.0, 2, True),  # numerically identical
        (0.1 + 0.2, 0.3, True),  # tolerance between floats
        (1, 1.0000001, False),  # but not between an int and a float
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ("a", "A", False),
        (None, None, True),
        ([1, 2], [2, 1], False),
    ],
)
def test_compare_values(expected: object, actual: object, equal: bool) -> None:
    assert compare_values(expected, actual) is equal


def test_codec_round_trips_plain_values() -> None:
    value = [
        1,
        -(2**100),
        2.5,
        float("inf"),
        "é",
        b"\x00",
        (1, 2),
        {3, 4},
        frozenset([5]),
        {"k": None},
        1 + 2j,
        True,
    ]
    assert codec.loads(codec.dumps(value)) == value
    assert type(codec.loads(codec.dumps((1,)))) is tuple


def test_codec_rejects_anything_but_exact_builtin_types() -> None:
    class Liar(int):
        def __eq__(self, other: object) -> bool:
            return True

    for bad in (Liar(1), object(), [Liar(0)], {"k": lambda: 0}):
        with pytest.raises(codec.CodecError):
            codec.encode(bad)
    for malformed in ('{"q": 1}', '{"l": 1}', '{"s": [{"l": []}]}', "[1]", "{", '{"d": [[1]]}'):
        with pytest.raises(codec.CodecError):
            codec.loads(malformed)


def test_codec_depth_is_bounded() -> None:
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(codec.CodecError):
        codec.encode(deep)


def test_apps_rows_parse() -> None:
    stdin = problem_from_dict(
        {"problem_id": 7, "input_output": '{"inputs": ["1\\n"], "outputs": [["2", "3"]]}'}
    )
    assert (stdin.kind, stdin.tests[0].output, stdin.time_limit_s, stdin.id) == ("stdin", "2\n3", 4.0, "7")
    call = problem_from_dict(
        {"id": "c", "input_output": {"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "f"}}
    )
    assert (call.kind, call.fn_name, call.apps_unwrap) == ("call", "f", True)


def test_humaneval_rows_parse() -> None:
    row = {
        "task_id": "HumanEval/0",
        "prompt": 'def f():\n    """doc"""\n',
        "test": "def check(c):\n    pass\n",
        "entry_point": "f",
    }
    p = problem_from_dict(row)
    assert (p.kind, p.time_limit_s, p.id) == ("humaneval", 3.0, "HumanEval/0")
    assert p.fingerprint() == problem_from_dict(row).fingerprint()


@pytest.mark.parametrize(
    "row",
    [
        {"id": "x", "kind": "stdin", "tests": []},
        {"id": "x", "kind": "stdin", "tests": [{"input": 1, "output": "1"}]},
        {"id": "x", "kind": "call", "fn_name": "f", "tests": [{"input": 1, "output": 1}]},
        {"id": "x", "input_output": "[]"},
        {"id": "x", "kind": "stdin", "tests": [{"input": "", "output": ""}], "time_limit_s": 0},
        {"id": "x", "prompt": "", "test": "assert True", "entry_point": "f"},
        {"id": "x", "prompt": "", "test": "def check(c):\n    assert (", "entry_point": "f"},
        {"id": "x", "question": "what?"},
        ["not", "an", "object"],
    ],
)
def test_invalid_problems_are_rejected(row: object) -> None:
    with pytest.raises(InvalidProblem):
        problem_from_dict(row)  # type: ignore[arg-type]


def test_code_decoding_rules() -> None:
    assert decode_code(b"print(1)", "stdin") == "print(1)"
    assert decode_code("", "humaneval") == ""  # an empty body is a (failing) program
    for bad in (b"\xff", "", "  \n", "a\x00"):
        with pytest.raises(InvalidProblem):
            decode_code(bad, "stdin")


def test_extract_code_and_time_scaling() -> None:
    assert extract_code("x\n```python\na=1\n```\n```py\nb=2\n```") == ("b=2\n", "fenced-block")
    assert extract_code("print(1)") == ("print(1)", "raw")
    assert scaled_time_limit(0.1) == 1.0 and scaled_time_limit(2.0) == 6.0 and scaled_time_limit(100) == 20.0


def _proc(**kw: object) -> ProcResult:
    base: dict = {
        "exit_code": 0,
        "signal": None,
        "cpu_s": 0.1,
        "maxrss_kb": 1000,
        "stdout": "",
        "stdout_bytes": 0,
    }
    base.update(stderr="", report=None)
    base.update(kw)
    return ProcResult(**base)


@pytest.mark.parametrize(
    ("run", "proc", "expected"),
    [
        ((False, False), {}, None),
        ((True, False), {"signal": 9}, (Status.TIME_LIMIT, "wall-time-limit")),
        ((False, True), {"signal": 9}, (Status.OUTPUT_LIMIT, "output-limit")),
        ((False, False), {"signal": int(signal.SIGXCPU)}, (Status.TIME_LIMIT, "cpu-time-limit")),
        (
            (False, False),
            {"exit_code": 1, "report": {"error": "MemoryError"}},
            (Status.MEMORY_LIMIT, "memory-limit"),
        ),
        (
            (False, False),
            {"exit_code": 1, "report": {"error": "FileSizeLimit"}},
            (Status.OUTPUT_LIMIT, "file-size-limit"),
        ),
        ((False, False), {"signal": int(signal.SIGSEGV)}, (Status.RUNTIME_ERROR, "signal-SIGSEGV")),
        ((False, False), {"exit_code": 3}, (Status.RUNTIME_ERROR, "exit-3")),
        ((False, False), {"exit_code": 70}, (Status.INTERNAL_ERROR, "sandbox-setup-failed")),
    ],
)
def test_classify(run: tuple[bool, bool], proc: dict, expected: tuple[Status, str] | None) -> None:
    p = _proc(**proc)
    assert classify(RunResult(run[0], run[1], 0.1, {"program": p}), p, Limits()) == expected


def test_seccomp_filter_is_well_formed() -> None:
    program = seccomp.build_filter(own_pid=2)
    assert len(program) % 8 == 0 and 20 < len(program) // 8 < 255  # BPF jump offsets are 8-bit
