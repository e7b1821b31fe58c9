"""What a forked child does after the zygote set up its fds: run one program in one role.

Runs inside the envelope, in the child, after `zygote.prepare_child` applied the limits. Standard
library only. Roles:

- `program` (stdin mode): exec the code as `__main__`; stdout is graded by the parent.
- `call` (APPS call-based): exec the code, call `fn_name` (or `Solution().fn_name`) once with the
  decoded arguments, write the *encoded* return value to the report fd. The parent compares.
- `candidate` (HumanEval, untrusted): exec prompt + completion, then answer call requests from the
  tester (`tester`, in its own envelope) over a pipe with encoded return values. It never sees
  the test code.
- `checker`: a problem's own output checker (multi-answer problems), on plain strings.
- `math`: math-verify on a gold and a predicted answer string.

Fds: 0 stdin, 1 stdout, 2 stderr, 3 report (one frame), 4/5 the candidate's requests/answers.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import json
import os
import sys
from typing import Any, NoReturn

from services.verifier.sandbox import codec

REPORT_FD, REQ_FD, RESP_FD = 3, 4, 5
FRAME_LIMIT = 64 * 1024 * 1024
_OOM_REPORT = b'{"error":"MemoryError","message":""}'


# The pid child_main runs as. A judged program may fork; its descendants share the report
# pipe and unwind through child_main too, and a fork bomb's many half-written frames made
# the verdict's detail depend on scheduling. Only the judged process itself may report.
_JUDGED_PID = 0


def _report(obj: dict[str, Any]) -> None:
    if os.getpid() != _JUDGED_PID:
        return
    codec.write_frame(REPORT_FD, json.dumps(obj).encode())


def install_stdio() -> None:
    """Text streams on fds 0-2, made once in the zygote (which never uses them) and inherited:
    each child's fds are its own pipes by then, and building them per fork costs ~0.2 ms."""
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    # `-S` leaves out site, which defines exit()/quit(); judged programs use them.
    builtins.exit = builtins.quit = sys.exit  # type: ignore[assignment]


def _fresh_globals(name: str) -> dict[str, Any]:
    return {"__name__": name, "__builtins__": builtins}


def compile_source(source: str, filename: str) -> Any:
    # dont_inherit: this module's `from __future__ import annotations` must not leak into programs.
    return compile(source, filename, "exec", dont_inherit=True)


def _exec(source: str, glb: dict[str, Any], filename: str) -> None:
    exec(compile_source(source, filename), glb)


PRECOMPILED: dict[str, Any] = {}
"""The zygote's compiled copy of the program it is running (one entry, keyed by filename +
source), or the SyntaxError / ValueError compiling it raised: compiling in the warm zygote takes
~0.1 ms where a fresh child spends ~1 ms in page faults, and a program's tests, forked one after
another, share it."""


def _exec_program(code: str, glb: dict[str, Any], filename: str = "<solution>") -> None:
    compiled = PRECOMPILED.get(filename + code)
    if isinstance(compiled, BaseException):
        raise compiled  # the zygote's compile error for this very source
    exec(compiled if compiled is not None else compile_source(code, filename), glb)


def _resolve(glb: dict[str, Any], fn_name: str) -> Any:
    fn = glb.get(fn_name)
    if callable(fn):
        return fn
    cls = glb.get("Solution")  # LeetCode-style problems in APPS
    if isinstance(cls, type) and callable(getattr(cls, fn_name, None)):
        return getattr(cls(), fn_name)
    raise NameError(f"function {fn_name!r} is not defined")


def run_program(spec: dict[str, Any]) -> None:
    _exec_program(spec["code"], _fresh_globals("__main__"))


def run_call(spec: dict[str, Any]) -> None:
    glb = _fresh_globals("__main__")
    _exec_program(spec["code"], glb)
    args = codec.decode(spec["args"])
    value = _resolve(glb, spec["fn_name"])(*args)
    try:
        tree = codec.encode(value)
    except codec.CodecError as exc:
        _report({"error": "UnsupportedValue", "message": str(exc)})
        return
    _report({"value": tree})


def run_candidate(spec: dict[str, Any]) -> None:
    glb = _fresh_globals("__candidate__")
    _exec_program(spec["prompt"] + spec["code"], glb, "<candidate>")
    entry = spec["entry_point"]
    while True:
        try:
            request = json.loads(codec.read_frame(REQ_FD, FRAME_LIMIT))
        except EOFError:
            return
        try:
            fn = glb.get(entry)
            if not callable(fn):
                raise NameError(f"{entry} is not defined")
            reply: dict[str, Any] = {"value": codec.encode(fn(*codec.decode(request["args"])))}
        except (Exception, RecursionError) as exc:
            reply = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        codec.write_frame(RESP_FD, json.dumps(reply).encode())


def run_checker(spec: dict[str, Any], secret: bytes) -> None:
    payload = json.loads(secret)
    glb = _fresh_globals("__checker__")
    _exec(payload["source"], glb, "<checker>")
    verdict = glb["check"](spec["input"], payload["expected"], spec["output"])
    _report({"value": verdict} if type(verdict) is bool else {"error": "checker did not return a bool"})


def _as_written(expr: Any) -> Any:
    """`expr` with each float as the exact decimal it was written as (1e-7 is 1/10**7)."""
    import sympy

    return expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})


def _same_number(g: Any, p: Any) -> bool | None:
    """Whether two closed-form numbers are exactly equal; None when that cannot be told.

    math-verify falls back to comparing values rounded to 6 decimal places when sympy leaves a
    difference unsimplified (an unevaluated factorial or binomial, a function of a tiny value), so
    1/20! "equals" 1/21!. Evaluated (`doit`) and then compared at 50 digits, relative to the
    larger of the two, equal numbers differ by rounding only (~1e-50) and different ones do not.
    """
    import sympy

    diff = sympy.simplify(g.doit() - p.doit())
    if diff == 0:
        return True
    value, scale = sympy.N(diff, 50), max(abs(sympy.N(g, 50)), abs(sympy.N(p, 50)))
    if not (value.is_number and scale.is_number) or value.has(sympy.nan, sympy.zoo, sympy.oo):
        return None
    return bool(abs(value) <= scale * sympy.Float("1e-40", 50))


def run_math(spec: dict[str, Any]) -> None:
    import math_verify  # preloaded by the math pool's zygote
    import sympy

    # Gold first: math-verify's comparison is asymmetric and documented for (gold, prediction).
    # Its own timeouts use SIGALRM; they are off here because the zygote kills the process instead.
    gold = math_verify.parse("$" + spec["gold"] + "$", parsing_timeout=None)
    pred = math_verify.parse("$" + spec["pred"] + "$", parsing_timeout=None)
    equal = bool(gold) and bool(pred) and math_verify.verify(gold, pred, timeout_seconds=None)
    exact = None
    g, p = gold[0] if gold else None, pred[0] if pred else None
    if (
        equal
        and isinstance(g, sympy.Expr)
        and isinstance(p, sympy.Expr)
        and (g.has(sympy.Float) or p.has(sympy.Float))
    ):
        # With a decimal on either side math-verify compares values rounded to 6 decimal places:
        # 0.333333 "equals" 1/3, 3.1415926 equals pi, and any two values below 5e-7 are equal
        # (0.0000001 and 1/10!, e^{-20} and 0.000000002). A decimal means the number it writes.
        exact = bool(sympy.simplify(_as_written(g) - _as_written(p)) == 0)
    same = None
    if (
        equal
        and exact is None
        and isinstance(g, sympy.Expr)
        and isinstance(p, sympy.Expr)
        and g.is_number
        and p.is_number
    ):
        same = _same_number(g, p)
    _report(
        {
            "value": bool(equal),
            "exact_decimal": exact,
            "exact_value": same,
            "gold": [str(g) for g in gold][:2],
            "pred": [str(p) for p in pred][:2],
        }
    )


def child_main(spec: dict[str, Any], role: str, secret: bytes) -> NoReturn:
    """Run one role and exit; never returns into the zygote's loop."""
    global _JUDGED_PID
    _JUDGED_PID = os.getpid()
    code = 0
    try:
        if role == "program":
            run_program(spec)
        elif role == "call":
            run_call(spec)
        elif role == "candidate":
            run_candidate(spec)
        elif role == "checker":
            run_checker(spec, secret)
        elif role == "math":
            run_math(spec)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MemoryError:
        if os.getpid() == _JUDGED_PID:
            os.write(REPORT_FD, len(_OOM_REPORT).to_bytes(4, "big") + _OOM_REPORT)
        os._exit(1)
    except BaseException as exc:
        code = 1
        if os.getpid() == _JUDGED_PID:
            _report_error(exc)
    _flush_and_exit(code)


def _report_error(exc: BaseException) -> None:
    try:
        if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
            _report({"error": "FileSizeLimit", "message": str(exc)[:300]})
        else:
            _report({"error": type(exc).__name__, "message": str(exc)[:300]})
        sys.stderr.write(format_traceback(exc))
    except BaseException:
        pass  # reporting must not turn a runtime error into something else


def format_traceback(exc: BaseException, limit: int = 8) -> str:
    """CPython's traceback text from the program's first frame on (the innermost `limit`), not
    the runner's: `traceback.print_exception` cost ~1 ms and ~400 page faults in a fresh child,
    a third of a short failing program. No source lines: a program's code is not a file here."""
    frames: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=limit)
    started, tb = False, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        # From the program's first frame on (its code is compiled from a string: "<solution>");
        # library frames it called into stay, the runner's frames before it go.
        started = started or code.co_filename.startswith("<")
        if started:
            frames.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    head = [f'  File "{f}", line {n}, in {name}\n' for f, n, name in frames]
    head = ["Traceback (most recent call last):\n", *head] if head else []
    if isinstance(exc, SyntaxError):
        head.append(f'  File "{exc.filename}", line {exc.lineno}\n')
        if exc.text:
            text = exc.text.rstrip("\n")
            stripped = text.lstrip()
            caret = " " * max(0, (exc.offset or 1) - 1 - (len(text) - len(stripped)))
            head.append(f"    {stripped}\n    {caret}^\n")
        message = str(exc.msg)
    else:
        message = str(exc)
    name = type(exc).__qualname__
    return "".join(head) + (f"{name}: {message}\n" if message else f"{name}\n")


def _flush_and_exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (output limit) or EFBIG is already decided by the zygote.
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code & 0xFF)
