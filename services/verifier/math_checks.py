"""Math answer checking: MATH (`\\boxed{}` + Hendrycks normalisation + math-verify) and GSM8K.

MATH, in order, and the `rule` each verdict reports:
1. the answer is the content of the *last* `\\boxed{...}` / `\\fbox{...}` (brace matching, or the
   `\\boxed 5` form); none: `no-boxed-answer`;
2. `exact`: identical after trimming; `hendrycks-normalized`: identical after the MATH paper's
   `strip_string` normalisation (fractions, `\\left`/`\\right`, units in `\\text{}`, `\\%`, degrees,
   leading zeros, `a/b`...), a fast path that needs no sandbox;
3. `math-verify`: symbolic equivalence with math-verify, gold first, run in the sandbox pool so a
   pathological expression is killed at the wall limit (`math-verify-timeout`) and cannot exhaust
   the service: math-verify's own timeouts use SIGALRM, which does not work off the main thread;
4. guards against math-verify's known false positives, applied after it says "equal":
   `guard-shape` (an interval against a set or a bare list: `(1,2)` is not `\\{1,2\\}`),
   `guard-text-case` (`\\text{Monday}` vs `\\text{monday}`: no lower-casing), and
   `guard-inexact-decimal`: with a decimal on either side math-verify compares the values rounded
   to 6 decimal places, so it accepts 0.333333 for 1/3, 3.1415926 for pi, and any two values below
   5e-7 (0.0000001 for 1/10!, 0.000000002 for e^{-20}); a decimal stands for the exact number it
   writes, and the two answers must then be exactly equal; and `guard-numeric-tolerance`: two
   closed-form numbers that sympy does not reduce (1/20! and 1/21!, both below 5e-7) fall back to
   the same rounded comparison, so they are evaluated and compared at 50 digits instead (math-3).
GSM8K: "#### N" / "The answer is N" extraction and exact numeric comparison (`shared.tasks`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from services.verifier.sandbox.cpus import cfs_quota, cpu_budget, usable_cpus
from services.verifier.sandbox.pool import (
    Limits,
    PoolConfig,
    SandboxError,
    SandboxPool,
    Session,
)
from shared.tasks import Verdict, check_answer, last_boxed

MATH_CHECKER_VERSION = "math-3"
"""Recorded with every MATH verdict; bump when a rule changes."""


# -- extraction --------------------------------------------------------------------------------


# -- Hendrycks et al. (2021) normalisation -------------------------------------------------------


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub.startswith("{") or len(sub) < 2:
            out += sub
            continue
        a, b, rest = sub[0], sub[1], sub[2:]
        out += f"{{{a}}}{b}{rest}" if b == "{" else f"{{{a}}}{{{b}}}{rest}"
    return out


def _fix_a_slash_b(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    return f"\\frac{{{int(m.group(1))}}}{{{int(m.group(2))}}}" if m else s


def _remove_right_units(s: str) -> str:
    return s.split("\\text{ ")[0] if "\\text{ " in s else s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def strip_string(s: str) -> str:
    """The MATH paper's answer normalisation (same steps, same order)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


# -- guards against math-verify's false positives -------------------------------------------------


def _shape(s: str) -> str:
    t = s.replace(" ", "").replace("\\left", "").replace("\\right", "")
    t = re.sub(r"^[A-Za-z](?:\\in|=)", "", t)  # "x \in [1,2]" has the shape of "[1,2]"
    if t.startswith("\\{") and t.endswith("\\}"):
        return "set"
    if t[:1] in "([" and t[-1:] in ")]" and "," in t:
        return "interval-or-tuple"
    return "list" if "," in t else "scalar"


def _text_word(s: str) -> str | None:
    m = re.fullmatch(r"\s*\\(?:text|textbf|mathrm)\{\s*\(?([A-Za-z ]+)\)?\s*\}\s*", s)
    return m.group(1).strip() if m else None


def false_positive_guard(
    gold: str, pred: str, exact_decimal: bool | None, exact_value: bool | None = None
) -> str | None:
    """The guard rule that rejects a math-verify "equal", or None."""
    shapes = {_shape(gold), _shape(pred)}
    if len(shapes) == 2 and "interval-or-tuple" in shapes:
        return "guard-shape"
    words = _text_word(gold), _text_word(pred)
    if None not in words and words[0] != words[1]:
        return "guard-text-case"
    if exact_decimal is False:
        return "guard-inexact-decimal"
    if exact_value is False:
        return "guard-numeric-tolerance"
    return None


# -- the checker ------------------------------------------------------------------------------------


_WARMUP = (
    "import math_verify as _m\n"
    "for _g, _p in ((r'$\\frac{1}{2}+x^2$', r'$0.5+x**2$'), (r'$[1,2)$', r'$\\{1,2\\}$'), (r'$\\sqrt{8}$', '$3$')):\n"
    "    _m.verify(_m.parse(_g, parsing_timeout=None), _m.parse(_p, parsing_timeout=None), timeout_seconds=None)\n"
)


def math_pool_config(workers: int = 0) -> PoolConfig:
    """A pool whose zygotes preload and warm math-verify (from this interpreter's site-packages).

    The warm-up runs once per zygote so that sympy's lazy imports and caches are in memory
    before the per-check fork, which makes a check a few milliseconds instead of ~100.
    """
    import math_verify

    site = str(Path(math_verify.__file__).resolve().parents[1])
    return PoolConfig(
        workers=workers or cpu_budget(usable_cpus(), cfs_quota()),  # CPU-bound: one zygote per core
        preload=("math_verify",),
        sys_path=(site,),
        warmup=_WARMUP,
    )


class MathChecker:
    """MATH verdicts; math-verify runs in `pool` (built with `math_pool_config`)."""

    def __init__(self, pool: SandboxPool, timeout_s: float = 5.0, memory_mb: int = 1024) -> None:
        self.pool = pool
        self.limits = Limits(wall_s=timeout_s, cpu_s=timeout_s, memory_mb=memory_mb)

    def _fast(self, gold: str, completion: str) -> Verdict | tuple[str, str]:
        if "\\boxed" in gold or "\\fbox" in gold:
            gold = last_boxed(gold) or gold  # a MATH solution given as the reference
        pred = last_boxed(completion)
        if pred is None:
            return Verdict(False, "", "no-boxed-answer", MATH_CHECKER_VERSION)
        if pred.strip() == gold.strip():
            return Verdict(True, pred, "exact", MATH_CHECKER_VERSION)
        if strip_string(pred) == strip_string(gold):
            return Verdict(True, pred, "hendrycks-normalized", MATH_CHECKER_VERSION)
        return gold, pred

    def _job(self, gold: str, pred: str) -> Callable[[Session], Verdict]:
        def job(session: Session) -> Verdict:
            run = session.run({"mode": "math", "gold": gold, "pred": pred}, self.limits)
            rep = run.main.report or {}
            if run.timed_out:
                return Verdict(False, pred, "math-verify-timeout", MATH_CHECKER_VERSION)
            if type(rep.get("value")) is not bool:
                return Verdict(False, pred, "math-verify-error", MATH_CHECKER_VERSION)
            if not rep["value"]:
                return Verdict(False, pred, "math-verify", MATH_CHECKER_VERSION)
            guard = false_positive_guard(gold, pred, rep.get("exact_decimal"), rep.get("exact_value"))
            return Verdict(guard is None, pred, guard or "math-verify", MATH_CHECKER_VERSION)

        return job

    def check(self, gold: str, completion: str) -> Verdict:
        fast = self._fast(gold, completion)
        if isinstance(fast, Verdict):
            return fast
        try:
            return self.pool.run(self._job(*fast), timeout_s=self.limits.wall_s + 120)
        except (SandboxError, TimeoutError):
            return Verdict(False, fast[1], "math-verify-error", MATH_CHECKER_VERSION)

    async def acheck(self, gold: str, completion: str) -> Verdict:
        fast = self._fast(gold, completion)
        if isinstance(fast, Verdict):
            return fast
        try:
            return await self.pool.arun(self._job(*fast))
        except SandboxError:
            return Verdict(False, fast[1], "math-verify-error", MATH_CHECKER_VERSION)


def check_gsm8k(reference: str, completion: str) -> Verdict:
    """GSM8K: the last "#### N" or "The answer is N", compared numerically and exactly."""
    return check_answer("gsm8k", reference, completion)
