"""Synthetic data for the scale bench: MATH- and APPS-format problems and simulated completions.

Everything is a pure function of a seed and the ids, so two runs with the same seeds write the same
samples byte for byte (the kill case compares kept sets across runs), whichever replica or shard
draws them. Sizes follow the real datasets: MATH prompts and solutions of 1-3 KB ending in a
`\\boxed{}` answer; APPS problems whose test cases are tens of KB, a few of them megabytes.

How a completion is judged decides how much the real verifier works (see `SimTextModel`):
- a correct MATH completion boxes the reference itself (or its `\\dfrac` spelling): the verifier's
  in-process fast path (`exact` / `hendrycks-normalized`);
- a wrong one boxes another answer (`wrong_boxed`), which goes to math-verify in the sandbox pool
  (a fork per check: the expensive, realistic case), or stops before any `\\boxed{}` (cheap).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Prose the completions are cut from: varied words, so that completions are distinct (the filter
# drops exact duplicates) without costing the bench process much CPU per sample.
_WORDS = [
    "let",
    "we",
    "note",
    "that",
    "since",
    "thus",
    "hence",
    "so",
    "the",
    "sum",
    "of",
    "both",
    "sides",
    "equals",
    "by",
    "substituting",
    "into",
    "gives",
    "squaring",
    "expanding",
    "factor",
    "common",
    "term",
    "each",
    "root",
    "integer",
    "fraction",
    "denominator",
    "numerator",
    "multiply",
    "divide",
    "subtract",
    "add",
    "check",
    "case",
    "first",
    "second",
    "third",
    "remaining",
    "value",
    "solution",
    "equation",
    "inequality",
    "triangle",
    "angle",
    "area",
    "perimeter",
    "radius",
    "circle",
    "probability",
    "count",
    "ways",
    "choose",
    "number",
]
_FORMULAE = ("$x^2 + 3x - 4 = 0$", "$\\frac{a+b}{2}$", "$\\sqrt{n^2+1}$", "$\\binom{n}{k}$", "$2^{k}$")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def prose(rng: random.Random, nbytes: int) -> str:
    """About `nbytes` of math-flavoured text, in lines of a dozen words."""
    out: list[str] = []
    size = 0
    while size < nbytes:
        line = " ".join(rng.choices(_WORDS, k=12)) + " " + rng.choice(_FORMULAE) + "."
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def math_answer(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return str(rng.randrange(-50, 1000))
    if kind == 1:
        return f"\\frac{{{rng.randrange(1, 40)}}}{{{rng.randrange(41, 97)}}}"
    return f"{rng.randrange(2, 9)}\\sqrt{{{rng.choice((2, 3, 5, 7))}}}"


def math_problem(seed: int, index: int) -> dict[str, Any]:
    """One MATH-format line (`problem`, `solution`, `answer`, `level`, `type`) of 1-2.5 KB."""
    rng = _rng("math-problem", seed, index)
    answer = math_answer(rng)
    return {
        "id": f"math-{index:06d}",
        "problem": prose(rng, rng.randrange(900, 2300)) + "\nWhat is the value?",
        "solution": prose(rng, 300) + f" The answer is $\\boxed{{{answer}}}$.",
        "answer": answer,
        "level": f"Level {rng.randrange(1, 6)}",
        "type": rng.choice(("Algebra", "Geometry", "Number Theory", "Counting & Probability")),
    }


def apps_problem(seed: int, index: int, test_bytes: int) -> dict[str, Any]:
    """One APPS-format line with stdin tests of about `test_bytes` (a program printing the input's
    length per line would pass them)."""
    rng = _rng("apps-problem", seed, index)
    cases = max(1, min(20, test_bytes // 4096))
    inputs = [
        "".join(rng.choices("abcdefghij", k=max(1, test_bytes // cases - 16))) + "\n" for _ in range(cases)
    ]
    outputs = [f"{len(i) - 1}\n" for i in inputs]
    return {
        "id": f"apps-{index:06d}",
        "question": prose(rng, rng.randrange(900, 2300)) + "\nPrint the length of the input line.",
        "input_output": json.dumps({"inputs": inputs, "outputs": outputs}),
        "solutions": json.dumps(["print(len(input()))"]),
        "difficulty": rng.choice(("introductory", "interview", "competition")),
    }


def apps_test_bytes(seed: int, index: int, mean_bytes: int, big_fraction: float, big_bytes: int) -> int:
    """Heavy-tailed test sizes: most problems near `mean_bytes`, a `big_fraction` of `big_bytes`."""
    rng = _rng("apps-size", seed, index)
    return big_bytes if rng.random() < big_fraction else int(mean_bytes * rng.uniform(0.5, 1.5))


@dataclass(frozen=True)
class SimTextModel:
    """What a simulated policy writes for a problem: correct with a per-problem rate around `correct`."""

    task: str = "math"
    correct: float = 0.3
    wrong_boxed: float = 0.0
    completion_bytes: tuple[int, int] = (1000, 3000)
    apps_code: float = 0.0

    def problem_rate(self, problem_id: str) -> float:
        # Uneven difficulty, as in MATH: some problems are never solved, some almost always.
        u = _rng("difficulty", problem_id).random()
        return min(1.0, 2.0 * self.correct * u)

    def completion(self, problem: dict[str, Any], seed: int) -> str:
        rng = _rng("completion", seed)
        body = prose(rng, rng.randrange(*self.completion_bytes))
        right = rng.random() < self.problem_rate(problem["id"])
        if self.task == "apps":
            return body + "\n" + self._code(rng, right)
        answer = str(problem["answer"])
        if right:
            boxed = answer.replace("\\frac", "\\dfrac") if rng.random() < 0.1 else answer
            return f"{body}\nThe answer is $\\boxed{{{boxed}}}$."
        if rng.random() < self.wrong_boxed:
            return f"{body}\nThe answer is $\\boxed{{{math_answer(rng)}}}$."
        return body  # ran out of tokens before answering: no \boxed{}

    def _code(self, rng: random.Random, right: bool) -> str:
        # Only `apps_code` of the samples carry a program the sandbox runs; the others an empty
        # block, which the verifier rejects without running anything (see the bench's docstring).
        if rng.random() >= self.apps_code:
            return "```python\n\n```"
        return "```python\nprint(len(input()))\n```" if right else "```python\nprint(0)\n```"


def write_math_files(root: Path, seed: int, train: int, validation: int, test: int) -> dict[str, Path]:
    """MATH-format JSONL files of the three splits (disjoint ids), as a user would have them."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, "validation": validation, "test": test}
    offsets = {"train": 0, "validation": train, "test": train + validation}
    paths = {}
    for split, n in sizes.items():
        if n == 0:
            continue  # a run without a validation split: the config names no file for it
        path = root / f"math-{split}.jsonl"
        with path.open("w") as out:
            for i in range(offsets[split], offsets[split] + n):
                out.write(json.dumps(math_problem(seed, i)) + "\n")
        paths[split] = path
    return paths


def write_apps_files(
    root: Path, seed: int, sizes: dict[str, int], mean_bytes: int, big_fraction: float, big_bytes: int
) -> dict[str, Path]:
    """APPS-format JSONL files (`input_output` as a JSON string, like the published dataset)."""
    root.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, n in sizes.items():
        if n == 0:
            continue
        path = root / f"apps-{split}.jsonl"
        with path.open("w") as out:
            for i in range(start, start + n):
                size = apps_test_bytes(seed, i, mean_bytes, big_fraction, big_bytes)
                out.write(json.dumps(apps_problem(seed, i, size)) + "\n")
        paths[split], start = path, start + n
    return paths


def write_model_dir(root: Path) -> Path:
    """A stand-in base model directory: what `restem run` uploads and StartRun accepts (config.json)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["SimulatedForCausalLM"]}))
    (root / "tokenizer.json").write_text("{}")
    return root
