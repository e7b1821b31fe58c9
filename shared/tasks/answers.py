"""Answers of the numeric tasks (pure): synthetic arithmetic and GSM8K-style "The answer is N".

A problem is a plain dict `{"id", "question", "answer"}`; here `answer` is the reference number as
text. `check_answer` is the whole reward for these tasks. Not here: MATH equivalence and code
execution, which need the verifier's sandbox pool (`services.verifier`); `last_boxed` lives here
because dataset loading needs it too (a MATH solution's final answer is its last `\\boxed{}`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from shared.runconfig import ArithmeticTask

CHECKER_VERSION = "numeric-1"
"""Recorded with every verdict; bump when a rule changes so cached verdicts are not reused."""

Problem = dict[str, Any]

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(rf"answer is\s*:?\s*\**\s*({_NUM})", re.IGNORECASE)
HASHES = re.compile(rf"####\s*({_NUM})")
# Ends an arithmetic completion right after "The answer is N." so no tokens are spent after it.
ARITHMETIC_STOP = r"(?i)answer is\s*-?\d[\d,]*\."


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str
    rule: str
    checker_version: str = CHECKER_VERSION
    detail: str = ""
    """Why, in a few words, when the rule alone does not say (e.g. a failing test's input)."""


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
        found += [(m.start(), m.group(1), "hash-answer") for m in HASHES.finditer(completion)]
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


def gsm8k_reference(answer: str) -> str:
    """The number after GSM8K's "####" (the whole text when there is none)."""
    m = HASHES.search(answer)
    return m.group(1).replace(",", "").replace("$", "").strip() if m else answer.strip()


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...}; None when there is none."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*", text)]
    for m in reversed(starts):
        rest = text[m.end() :]
        if rest.startswith("{"):
            depth = 0
            for i, ch in enumerate(rest):
                depth += {"{": 1, "}": -1}.get(ch, 0)
                if depth == 0:
                    return rest[1:i]
            continue  # unbalanced: try an earlier one
        if m.group(0).endswith(" ") and rest:
            return rest.split("$")[0].split()[0]  # "\boxed 5" form
    return None
