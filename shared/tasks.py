"""Problems, prompts and answer checking for the tasks restem runs (pure functions).

A problem is a plain dict `{"id", "question", "answer"}` (plus `"solution"` when a reference
solution exists); datasets are JSONL files of them in the store. Covered here: the synthetic
arithmetic task and GSM8K-style numeric answers ("The answer is N" / "#### N"). Not covered: code
execution and MATH equivalence, which need the sandboxed verifier and live behind the same
`check_answer` seam.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from shared.runconfig import ArithmeticTask, TaskConfig

CHECKER_VERSION = "numeric-1"
"""Recorded with every verdict; bump when a rule changes so cached verdicts are not reused."""

Problem = dict[str, Any]
TASKS_WITH_CHECKERS = ("arithmetic", "gsm8k")

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(rf"answer is\s*:?\s*\**\s*({_NUM})", re.IGNORECASE)
_HASHES = re.compile(rf"####\s*({_NUM})")
# Ends an arithmetic completion right after "The answer is N." so no tokens are spent after it.
ARITHMETIC_STOP = r"(?i)answer is\s*-?\d[\d,]*\."


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str
    rule: str
    checker_version: str = CHECKER_VERSION


def generate_arithmetic(cfg: ArithmeticTask, seed: int) -> dict[str, list[Problem]]:
    """Disjoint train / validation / test splits of distinct "a + b" problems."""
    pairs = [(a, b) for a in range(cfg.a_min, cfg.a_max + 1) for b in range(cfg.b_min, cfg.b_max + 1)]
    random.Random(seed).shuffle(pairs)
    sizes = {"train": cfg.train, "validation": cfg.validation, "test": cfg.test}
    splits: dict[str, list[Problem]] = {}
    start = 0
    for split, size in sizes.items():
        splits[split] = [
            {"id": f"{split}-{i:05d}", "question": f"What is {a} + {b}?", "answer": str(a + b)}
            for i, (a, b) in enumerate(pairs[start : start + size])
        ]
        start += size
    return splits


def user_message(task: str, problem: Problem) -> str:
    """The instruction the model sees for one problem (before any chat template)."""
    if task == "arithmetic":
        return f"{problem['question']} End with 'The answer is N.'"
    return f"{problem['question']}\nSolve it step by step and end with 'The answer is N.'"


def stop_patterns(task: str) -> list[str]:
    """Regexes after whose first match a completion is complete."""
    return [ARITHMETIC_STOP] if task == "arithmetic" else []


def _to_number(text: str) -> Fraction | None:
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(task: str, completion: str) -> tuple[str, str]:
    """(answer, rule) from a completion; ("", "no-answer") when none is found.

    The last "answer is N" wins (a model may restate); GSM8K also accepts its "#### N" form.
    """
    found = [(m.start(), m.group(1), "answer-is") for m in _ANSWER_IS.finditer(completion)]
    if task != "arithmetic":
        found += [(m.start(), m.group(1), "hash-answer") for m in _HASHES.finditer(completion)]
    if not found:
        return "", "no-answer"
    _, answer, rule = max(found)
    return answer.strip(), rule


def check_answer(task: str, reference: str, completion: str) -> Verdict:
    """Binary reward: the extracted final answer equals the reference numerically."""
    extracted, rule = extract_answer(task, completion)
    if not extracted:
        return Verdict(False, "", rule)
    got, want = _to_number(extracted), _to_number(reference)
    if got is None or want is None:
        return Verdict(False, extracted, "not-a-number")
    return Verdict(got == want, extracted, rule)


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


def _gsm8k_reference(answer: str) -> str:
    m = _HASHES.search(answer)
    return m.group(1).replace(",", "").replace("$", "").strip() if m else answer.strip()


def load_jsonl_problems(path: Path, task: str) -> list[Problem]:
    """Problems from a JSONL file: `question` and `answer` (GSM8K's own format works as is)."""
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise DatasetError(f"{path}:{lineno}: each line needs 'question' and 'answer'")
        pid = str(row.get("id", f"{path.stem}-{lineno:06d}"))
        if pid in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate id '{pid}'")
        seen.add(pid)
        answer = str(row["answer"])
        problem = {"id": pid, "question": str(row["question"]), "answer": _gsm8k_reference(answer)}
        if "####" in answer:
            problem["solution"] = answer
        problems.append(problem)
    if not problems:
        raise DatasetError(f"dataset file {path} has no problems")
    return problems


def build_splits(cfg: TaskConfig) -> dict[str, list[Problem]]:
    """The run's splits: generated (arithmetic) or read from the configured files."""
    if cfg.name == "arithmetic":
        return generate_arithmetic(cfg.arithmetic, cfg.seed)
    assert cfg.files is not None  # enforced by TaskConfig
    splits = {"train": load_jsonl_problems(cfg.files.train, cfg.name)}
    splits["test"] = load_jsonl_problems(cfg.files.test, cfg.name)
    splits["validation"] = load_jsonl_problems(cfg.files.validation, cfg.name) if cfg.files.validation else []
    return splits


_ARITH_Q = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")
_CALC = re.compile(r"<<[^>]*>>")


def reference_completion(task: str, problem: Problem) -> str | None:
    """A human-style reference solution in the format the checker accepts, or None if there is none.

    Arithmetic: "a + b = s. The answer is s." GSM8K: the dataset's solution with its calculator
    annotations (<<48/2=24>>) removed and the final "#### N" line written as "The answer is N.".
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
    body = _HASHES.split(_CALC.sub("", solution))[0].rstrip()
    return f"{body}\nThe answer is {problem['answer']}."


def sft_rows(task: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """The SFT baseline's training set: one reference completion per problem that has one.

    Rows carry the user message rather than a rendered prompt: the trainer renders it with the
    model's own chat template, exactly as the sampler does for ReST-EM samples.
    """
    rows = []
    for p in problems:
        completion = reference_completion(task, p)
        if completion is None:
            continue
        if not check_answer(task, p["answer"], completion).correct:
            raise DatasetError(f"the reference solution of problem {p['id']} does not pass its own checker")
        rows.append({"sample_id": f"sft/{p['id']}", "problem_id": p["id"], "user_message": user_message(task, p),
                     "completion": completion, "weight": 1.0})  # fmt: skip
    if not rows:
        raise DatasetError(f"baseline.sft needs reference solutions, but no {task} train problem has one")
    return rows


def dumps_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def loads_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
