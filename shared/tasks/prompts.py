"""What the model is asked, where its answer ends, and the reference answers of the SFT baseline.

One user message per problem, before any chat template (the sampler, the evaluator and the trainer
render it with the model's own template). Every message names the answer format its task's checker
reads: "The answer is N." (arithmetic, GSM8K), `\\boxed{}` (MATH), one fenced ```python block
(APPS, HumanEval). Few-shot examples (`fewshot.py`) are attached to problems when they are loaded.
"""

from __future__ import annotations

import re
from typing import Any

from shared.seeds import derive_seed

from .answers import ARITHMETIC_STOP, HASHES, Problem, check_answer, last_boxed
from .datasets import DatasetError

CODE_TASKS = ("apps", "humaneval")
NUMERIC_TASKS = ("arithmetic", "gsm8k")
# A completion is done once it holds one closed ```python block: the grader runs the last block,
# and anything a model writes after its code costs tokens and teaches nothing.
CODE_BLOCK_STOP = r"```[ \t]*(?:python3?|py)?[ \t]*\n[\s\S]*?\n[ \t]*```"
_CODE_FORMAT = "Put the complete solution in a single ```python code block."


def _apps_message(problem: Problem) -> str:
    parts = [problem["question"].rstrip()]
    starter = problem.get("starter_code", "").strip()
    if starter:
        parts.append(f"Start from this code:\n```python\n{starter}\n```")
    fn_name = problem.get("fn_name", "")
    if fn_name:
        parts.append(
            f"Write the function `{fn_name}`: the tests call it and check what it returns. {_CODE_FORMAT}"
        )
    else:
        parts.append(
            "Write a Python 3 program that reads the input from standard input and prints the answer "
            f"to standard output. {_CODE_FORMAT}"
        )
    return "\n\n".join(parts)


def user_message(task: str, problem: Problem) -> str:
    """The instruction the model sees for one problem (before any chat template); a problem loaded
    with `task.few_shot` carries its worked examples in `prompt_prefix`."""
    return problem.get("prompt_prefix", "") + _instruction(task, problem)


def _instruction(task: str, problem: Problem) -> str:
    if task == "arithmetic":
        return f"{problem['question']} End with 'The answer is N.'"
    if task == "math":
        return f"{problem['question']}\nSolve it step by step and put the final answer in \\boxed{{}}."
    if task == "apps":
        return _apps_message(problem)
    if task == "humaneval":
        return (
            f"Complete the following Python function.\n\n```python\n{problem['question'].rstrip()}\n```\n\n"
            "Write the whole function, with its signature and any imports it needs, in a single "
            "```python code block."
        )
    return f"{problem['question']}\nSolve it step by step and end with 'The answer is N.'"


def stop_patterns(task: str) -> list[str]:
    """Regexes after whose first match a completion is complete."""
    if task == "arithmetic":
        return [ARITHMETIC_STOP]
    if task in CODE_TASKS:
        return [CODE_BLOCK_STOP]
    return []


_ARITH_Q = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")
_CALC = re.compile(r"<<[^>]*>>")


def reference_completion(task: str, problem: Problem) -> str | None:
    """A human-style reference solution in the format the checker accepts, or None if there is none.

    Arithmetic: "a + b = s. The answer is s." GSM8K: the dataset's solution with its calculator
    annotations (<<48/2=24>>) removed and the final "#### N" line written as "The answer is N.".
    MATH: the solution (with a `\\boxed{}` answer added when it has none). APPS: the first reference
    program in a fenced block. HumanEval: the prompt and canonical body, as one function.
    """
    if task == "arithmetic":
        m = _ARITH_Q.fullmatch(problem["question"])
        if m is None:
            return None
        a, b = int(m.group(1)), int(m.group(2))
        return f"{a} + {b} = {a + b}. The answer is {a + b}."
    solution = problem.get("solution")
    if not solution:
        return None
    if task == "math":
        return (
            solution
            if last_boxed(solution) is not None
            else f"{solution}\nThe answer is $\\boxed{{{problem['answer']}}}$."
        )
    if task == "apps":
        return f"```python\n{solution.strip()}\n```"
    if task == "humaneval":
        return f"```python\n{problem['question'].rstrip()}\n{solution.rstrip()}\n```"
    body = HASHES.split(_CALC.sub("", solution))[0].rstrip()
    return f"{body}\nThe answer is {problem['answer']}."


def reference_subset(problems: list[Problem], share: float, seed: int) -> list[Problem]:
    """The train problems whose references the SFT baseline may use (`baseline.sft_references`):
    the `round(share * n)` (at least one) first in an order drawn by `seed` from each problem's id,
    so the subset does not depend on the file's order; returned in split order."""
    if share >= 1:
        return problems
    count = max(1, round(share * len(problems)))
    chosen = set(
        sorted((p["id"] for p in problems), key=lambda pid: derive_seed(seed, "sft-references", pid))[:count]
    )
    return [p for p in problems if p["id"] in chosen]


def sft_rows(task: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """The SFT baseline's training set: one reference completion per problem that has one.

    Rows carry the user message rather than a rendered prompt: the trainer renders it with the
    model's own chat template, exactly as the sampler does for ReST-EM samples. Numeric references
    are checked here; MATH and code references are the dataset's own and are trusted as given
    (APPS has a few solutions that fail their tests; the paper's SFT baseline uses them as is).
    """
    rows = []
    for p in problems:
        completion = reference_completion(task, p)
        if completion is None:
            continue
        if task in NUMERIC_TASKS and not check_answer(task, p["answer"], completion).correct:
            raise DatasetError(f"the reference solution of problem {p['id']} does not pass its own checker")
        rows.append({"sample_id": f"sft/{p['id']}", "problem_id": p["id"], "user_message": user_message(task, p),
                     "completion": completion, "weight": 1.0})  # fmt: skip
    if not rows:
        raise DatasetError(f"baseline.sft needs reference solutions, but no {task} train problem has one")
    return rows
