"""MATH and GSM8K checking: extraction and normalisation (pure), and a table of equivalence cases
through math-verify in the sandbox pool, including its known false positives (guarded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.verifier.math_checks import (
    MATH_CHECKER_VERSION,
    MathChecker,
    check_gsm8k,
    false_positive_guard,
    last_boxed,
    math_pool_config,
    strip_string,
)
from services.verifier.sandbox import SandboxPool


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last one
        ("\\boxed{\\{1,\\{2\\}\\}}", "\\{1,\\{2\\}\\}"),  # brace matching
        ("\\fbox{7}", "7"),
        ("$\\boxed 42$", "42"),
        ("\\boxed{3} and \\boxed{unbalanced", "3"),
        ("no box here", None),
    ],
)
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("3/4", "\\frac{3}{4}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("10\\text{ cm}", "10"),
        ("50\\%", "50"),
        ("90^\\circ", "90"),
        ("x = 5", "5"),
        (".5", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\$4", "4"),
    ],
)
def test_hendrycks_normalisation(raw: str, normal: str) -> None:
    assert strip_string(raw) == normal


def test_guards() -> None:
    assert false_positive_guard("(1,2)", "\\{1,2\\}", None) == "guard-shape"
    assert false_positive_guard("x \\in [1,2]", "[1,2]", None) is None
    assert false_positive_guard("\\text{Monday}", "\\text{monday}", None) == "guard-text-case"
    assert false_positive_guard("\\frac13", "0.333333", False) == "guard-inexact-decimal"
    assert false_positive_guard("\\frac12", "0.5", True) is None
    assert false_positive_guard("\\frac{1}{20!}", "\\frac{1}{21!}", None, False) == "guard-numeric-tolerance"
    assert false_positive_guard("\\frac{1}{20!}", "\\frac{21}{21!}", None, True) is None


@pytest.mark.parametrize(
    ("reference", "completion", "correct", "rule"),
    [
        ("18", "She earns 9*2 = 18 dollars.\n#### 18", True, "hash-answer"),
        ("18", "The answer is 18.", True, "answer-is"),
        ("1800", "The answer is $1,800.", True, "answer-is"),
        ("18", "The answer is 17.", False, "answer-is"),
        ("18", "I think 18", False, "no-answer"),
    ],
)
def test_gsm8k(reference: str, completion: str, correct: bool, rule: str) -> None:
    v = check_gsm8k(reference, completion)
    assert (v.correct, v.rule) == (correct, rule)


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with SandboxPool(math_pool_config(workers=2)) as pool:
        yield MathChecker(pool, timeout_s=5.0)


HV, MV, EX = "hendrycks-normalized", "math-verify", "exact"
TABLE = [
    # fractions
    ("\\frac{1}{2}", "0.5", True, HV),
    ("\\frac{1}{2}", "1/2", True, HV),
    ("\\frac12", "\\frac{1}{2}", True, HV),
    ("\\dfrac{3}{4}", "\\tfrac34", True, HV),
    ("\\frac{2}{4}", "\\frac{1}{2}", True, MV),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True, MV),
    ("\\frac{3}{2}", "1.5", True, MV),
    ("\\frac{1}{3}", "0.333333", False, "guard-inexact-decimal"),  # math-verify false positive
    ("\\frac{1}{3}", "0.33", False, MV),
    # very small values: math-verify rounds to 6 decimal places when either side is a decimal
    ("0.0000001", "\\frac{1}{3628800}", False, "guard-inexact-decimal"),  # 1e-7 vs 1/10!
    ("\\frac{1}{10!}", "0.000000276", False, "guard-inexact-decimal"),  # 2.7557e-7 vs 2.76e-7
    ("\\frac{1}{3628800}", "0.0000003", False, "guard-inexact-decimal"),
    ("e^{-20}", "0.000000002", False, "guard-inexact-decimal"),
    ("0.0000001", "10^{-7}", True, MV),  # the same number, written two ways
    ("\\frac{1}{3628800}", "\\frac{1}{39916800}", False, MV),  # 1/10! vs 1/11!: symbolic, not rounded
    # very small closed forms sympy leaves unevaluated: math-verify falls back to rounding (math-3)
    ("\\frac{1}{20!}", "\\frac{1}{21!}", False, "guard-numeric-tolerance"),  # 4.1e-19 vs 2.0e-20
    ("\\frac{1}{20!}", "\\frac{1}{22!}", False, "guard-numeric-tolerance"),
    ("\\frac{3}{20!}", "\\frac{1}{20!}", False, "guard-numeric-tolerance"),  # off by a factor of 3
    ("\\sin(10^{-8})", "10^{-8}", False, "guard-numeric-tolerance"),  # differs by 1.7e-25
    ("\\frac{1}{12!}", "\\frac{1}{13!}", False, MV),  # math-verify tells these apart itself
    ("\\frac{1}{20!}", "\\frac{1}{2432902008176640000}", True, MV),  # the same number, evaluated
    ("\\frac{21}{21!}", "\\frac{1}{20!}", True, MV),
    ("\\frac{1}{10!}", "\\frac{1}{10!}", True, EX),
    # decimals and integers
    ("0.1", "0.10", True, MV),
    ("12", "12.0", True, MV),
    ("2.5", "2.50", True, MV),
    ("1,000", "1000", True, MV),
    ("5", "5.000001", False, MV),
    ("1000000", "1000001", False, MV),
    ("2", "-2", False, MV),
    # radicals
    ("2\\sqrt{2}", "\\sqrt{8}", True, MV),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True, MV),
    ("\\sqrt2", "\\sqrt{2}", True, HV),
    ("\\sqrt{3}", "1.7320508", False, "guard-inexact-decimal"),  # math-verify false positive
    ("\\sqrt{3}", "1.732", False, MV),
    ("3\\sqrt{2}", "2\\sqrt{3}", False, MV),
    # intervals
    ("(1,2)", "(1,2]", False, MV),
    ("[1,2]", "[1, 2]", True, HV),
    ("(-\\infty, 2)", "(-\\infty,2)", True, HV),
    ("[-1, 3)", "\\left[-1,3\\right)", True, HV),
    ("(1,2)", "(2,1)", False, MV),
    ("(1,2)", "\\{1,2\\}", False, "guard-shape"),  # math-verify false positive
    ("(0,1)", "0,1", False, "guard-shape"),  # math-verify false positive
    ("[1,2]", "x \\in [1,2]", True, MV),
    ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty,0)\\cup(1,\\infty)", True, EX),
    # sets and lists
    ("\\{1,2\\}", "\\{2,1\\}", True, MV),
    ("\\{1,2,3\\}", "\\{1,2\\}", False, MV),
    ("1,2", "2,1", True, MV),
    ("1,2", "1", False, MV),
    # units
    ("10", "10\\text{ cm}", True, HV),
    ("10\\text{ cm}", "10", True, HV),
    ("10", "10 \\mbox{ inches}", True, MV),
    ("90^\\circ", "90", True, HV),
    ("\\frac{\\pi}{2}", "90^\\circ", False, MV),
    ("\\$5", "5", True, HV),
    # percentages
    ("50\\%", "50", True, HV),
    ("50\\%", "0.5", True, MV),
    ("10\\%", "0.1", True, MV),
    ("0.1", "10\\%", True, MV),
    # constants and approximations
    ("\\pi", "3.14", False, MV),
    ("\\pi", "3.1415926", False, "guard-inexact-decimal"),  # math-verify false positive
    ("3.14", "\\pi", False, MV),
    # expressions, equations, text
    ("x^2+2x+1", "(x+1)^2", True, MV),
    ("3+2i", "2i+3", True, MV),
    ("a+b", "b+a", True, MV),
    ("\\pm 2", "2", False, MV),
    ("x=2", "2", True, HV),
    ("y=2x+1", "2x+1", True, HV),
    ("\\text{Monday}", "\\text{monday}", False, "guard-text-case"),  # math-verify lower-cases
    ("\\text{(A)}", "A", True, MV),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, EX),
]


@pytest.mark.integration
@pytest.mark.parametrize(("gold", "pred", "correct", "rule"), TABLE)
def test_equivalence_table(checker: MathChecker, gold: str, pred: str, correct: bool, rule: str) -> None:
    v = checker.check(gold, f"Reasoning...\nSo the answer is $\\boxed{{{pred}}}$.")
    assert (v.correct, v.rule, v.extracted, v.checker_version) == (correct, rule, pred, MATH_CHECKER_VERSION)


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 50


@pytest.mark.integration
def test_no_box_and_pathological_answers(checker: MathChecker) -> None:
    assert checker.check("5", "The answer is 5").rule == "no-boxed-answer"
    assert checker.check("Thus \\boxed{\\frac{1}{2}}.", "\\boxed{0.5}").rule == HV  # gold as a solution
    quick = MathChecker(checker.pool, timeout_s=1.0)
    v = quick.check("10", "\\boxed{10^{10^{10^{10}}}}")
    assert (v.correct, v.rule) == (False, "math-verify-timeout")
    assert checker.pool.health().state == "SERVING" and checker.check("2", "\\boxed{1+1}").correct
