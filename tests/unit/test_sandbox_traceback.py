"""The sandbox's traceback text: the program's frames and CPython's exception line, cheaply."""

from __future__ import annotations

import traceback

import pytest

from services.verifier.sandbox.runners import compile_source, format_traceback


def _raised(source: str) -> BaseException:
    try:
        exec(compile_source(source, "<solution>"), {"__name__": "__main__"})
    except BaseException as exc:
        return exc
    raise AssertionError("the program did not raise")


def test_runtime_error_lists_the_programs_frames_innermost_last() -> None:
    exc = _raised("def f(x):\n    return g(x)\n\ndef g(x):\n    return 1 / x\n\nf(0)\n")
    text = format_traceback(exc)
    assert text.splitlines() == [
        "Traceback (most recent call last):",
        '  File "<solution>", line 7, in <module>',
        '  File "<solution>", line 2, in f',
        '  File "<solution>", line 5, in g',
        "ZeroDivisionError: division by zero",
    ]
    # The same frames and exception line as CPython's own formatter.
    ours = [line for line in text.splitlines() if line.startswith("  File")]
    theirs = [line for line in traceback.format_exception(exc) if line.startswith('  File "<solution>"')]
    assert ours == [line.rstrip("\n") for line in theirs]
    assert text.splitlines()[-1] == traceback.format_exception_only(exc)[-1].rstrip("\n")


def test_deep_recursion_keeps_only_the_innermost_frames() -> None:
    exc = _raised("def f(n):\n    return f(n + 1)\n\nf(0)\n")
    lines = format_traceback(exc, limit=8).splitlines()
    assert len(lines) == 1 + 8 + 1 and lines[-1].startswith("RecursionError: maximum recursion depth")
    assert all(line == '  File "<solution>", line 2, in f' for line in lines[1:-1])


@pytest.mark.parametrize(("source", "line"), [("x = (1,\nreturn [\n", 1), ("def f(:\n    pass\n", 1)])
def test_syntax_errors_name_the_line_and_point_at_it(source: str, line: int) -> None:
    with pytest.raises(SyntaxError) as info:
        compile_source(source, "<solution>")
    lines = format_traceback(info.value).splitlines()
    assert lines[0] == f'  File "<solution>", line {info.value.lineno}'
    assert lines[-1] == f"SyntaxError: {info.value.msg}"
    assert lines[2].strip() == "^" and (info.value.lineno or 0) >= line


def test_an_exception_without_a_message_and_a_hostile_str() -> None:
    class Odd(Exception):
        pass

    assert format_traceback(_raised("raise KeyError\n")).splitlines()[-1] == "KeyError"
    assert format_traceback(Odd("x")).splitlines() == [
        "test_an_exception_without_a_message_and_a_hostile_str.<locals>.Odd: x"
    ]
