"""Dataset loaders of every file task: the shapes they accept, and errors that name file and line."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from shared.runconfig import RunConfig, TaskConfig
from shared.tasks import (
    CODE_BLOCK_STOP,
    DatasetError,
    build_splits,
    load_problems,
    reference_completion,
    sft_rows,
    stop_patterns,
    user_message,
)

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_apps_rows_become_graded_problems_with_prompts() -> None:
    problems = {p["id"]: p for p in load_problems(DATA / "apps-tiny-train.jsonl", "apps")}
    stdin, call, own = problems["sum-two"], problems["add-fn"], problems["is-even"]
    assert stdin["answer"]["id"] == "sum-two" and len(stdin["answer"]["input_output"]["inputs"]) == 3
    assert stdin["meta"] == {"difficulty": "introductory"} and stdin["solution"].startswith("a, b = map")
    assert call["fn_name"] == "add" and call["starter_code"] == "def add(a, b):\n"
    assert own["answer"]["kind"] == "call" and own["answer"]["fn_name"] == "is_even"
    assert "standard input" in user_message("apps", stdin) and "```python" in user_message("apps", stdin)
    msg = user_message("apps", call)
    assert "`add`" in msg and "def add(a, b):" in msg and "standard input" not in msg


def test_builtin_humaneval_has_all_164_problems() -> None:
    problems = load_problems("builtin:humaneval", "humaneval")
    assert len(problems) == 164 and problems[0]["id"] == "HumanEval/0"
    p = problems[0]
    assert (
        set(p["answer"]) == {"id", "prompt", "test", "entry_point"}
        and p["answer"]["entry_point"] == "has_close_elements"
    )
    ref = reference_completion("humaneval", p)
    assert ref is not None and ref.startswith("```python\nfrom typing import List") and ref.endswith("\n```")
    assert re.search(CODE_BLOCK_STOP, ref) and "def has_close_elements" in user_message("humaneval", p)


def test_math_rows_take_the_answer_or_the_last_boxed(tmp_path: Path) -> None:
    f = _jsonl(
        tmp_path / "math.jsonl",
        [
            {
                "problem": "1+1?",
                "solution": "So $\\boxed{1}$, no: $\\boxed{\\frac{4}{2}}$.",
                "level": "Level 1",
                "type": "Algebra",
            },
            {
                "unique_id": "x",
                "problem": "2+2?",
                "answer": "4",
                "solution": "It is 4.",
                "subject": "Prealgebra",
            },
        ],
    )
    first, second = load_problems(f, "math")
    assert first["answer"] == "\\frac{4}{2}" and first["meta"] == {"level": "Level 1", "type": "Algebra"}
    assert second["answer"] == "4"
    assert reference_completion("math", second) == "It is 4.\nThe answer is $\\boxed{4}$."
    assert "\\boxed{}" in user_message("math", first) and stop_patterns("math") == []


def test_a_gzipped_file_reads_like_a_plain_one(tmp_path: Path) -> None:
    gz = tmp_path / "he.jsonl.gz"
    row = {
        "task_id": "T/1",
        "prompt": "def f():\n",
        "test": "def check(c):\n    assert c() == 1\n",
        "entry_point": "f",
        "canonical_solution": "    return 1\n",
    }
    with gzip.open(gz, "wt") as out:
        out.write(json.dumps(row) + "\n")
    (p,) = load_problems(gz, "humaneval")
    assert p["id"] == "T/1" and p["solution"] == "    return 1\n"


@pytest.mark.parametrize(
    ("task", "line", "error"),
    [
        ("apps", {"question": "q"}, r"no tests: give APPS 'input_output'"),
        ("apps", {"question": "q", "input_output": "{oops"}, r"'input_output' is not valid JSON"),
        ("apps", {"question": "q", "input_output": {"inputs": ["1"], "outputs": []}}, r"same length"),
        ("apps", {"question": "q", "input_output": {"inputs": [], "outputs": []}}, r"has no tests"),
        (
            "apps",
            {"question": "q", "kind": "call", "tests": [{"input": [1], "output": 1}]},
            r"needs 'fn_name'",
        ),
        (
            "apps",
            {"question": "q", "input_output": {"fn_name": "f", "inputs": [1], "outputs": [1]}},
            r"list of arguments",
        ),
        ("apps", {"input_output": {"inputs": ["1"], "outputs": ["1"]}}, r"missing 'question'"),
        (
            "humaneval",
            {"prompt": "def f():\n", "test": "assert True", "entry_point": "f"},
            r"must define check",
        ),
        ("humaneval", {"prompt": "def f():\n", "entry_point": "f"}, r"missing 'test'"),
        ("math", {"problem": "1+1?", "solution": "two"}, r"no final answer"),
        ("math", {"answer": "2"}, r"needs 'problem'"),
        ("gsm8k", ["not", "an", "object"], r"must be a JSON object"),
    ],
)
def test_bad_lines_name_the_file_line_and_fix(tmp_path: Path, task: str, line: object, error: str) -> None:
    good = {"apps": {"question": "q", "input_output": {"inputs": ["1\n"], "outputs": ["1\n"]}},
            "humaneval": {"prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"},
            "math": {"problem": "p", "answer": "1"}, "gsm8k": {"question": "q", "answer": "1"}}[task]  # fmt: skip
    f = _jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DatasetError, match=rf"bad\.jsonl:2: .*{error}"):
        load_problems(f, task)


def test_missing_unreadable_and_unknown_datasets_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_problems(tmp_path / "nope.jsonl", "apps")
    with pytest.raises(DatasetError, match="unknown built-in dataset 'builtin:mbpp'"):
        load_problems("builtin:mbpp", "apps")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match="cannot be read as UTF-8 JSONL"):
        load_problems(binary, "gsm8k")
    with pytest.raises(DatasetError, match="reads no dataset files"):
        load_problems(binary, "arithmetic")


def test_code_task_config_gets_code_sized_budgets_and_splits() -> None:
    cfg = RunConfig.model_validate(
        {
            "task": {
                "name": "apps",
                "files": {
                    "train": str(DATA / "apps-tiny-train.jsonl"),
                    "test": str(DATA / "apps-tiny-test.jsonl"),
                },
            }
        }
    )
    assert (cfg.sampling.max_new_tokens, cfg.training.max_seq_len) == (512, 2048)
    explicit = RunConfig.model_validate(
        {"task": cfg.task.model_dump(mode="json"), "sampling": {"max_new_tokens": 64}}
    )
    assert explicit.sampling.max_new_tokens == 64 and explicit.training.max_seq_len == 2048
    splits = build_splits(cfg.task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [10, 0, 4]
    rows = sft_rows("apps", splits["train"])
    assert len(rows) == 10 and all(r["completion"].startswith("```python\n") for r in rows)


def test_code_stop_pattern_needs_a_closed_block() -> None:
    (stop,) = stop_patterns("apps")
    assert stop == CODE_BLOCK_STOP
    assert not re.search(stop, "Here:\n```python\nprint(1)\n")
    assert re.search(stop, "Here:\n```python\nprint(1)\n```")
    assert re.search(stop, "```\nx = 1\n```")


def test_task_files_are_required_for_file_tasks() -> None:
    with pytest.raises(ValueError, match=r"task\.files is required for task 'humaneval'"):
        TaskConfig(name="humaneval")


def test_few_shot_examples_travel_with_every_problem(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "g.jsonl", [{"question": "2+3?", "answer": "5 #### 5"}])
    cfg = TaskConfig(name="gsm8k", files={"train": f, "test": f}, few_shot=True)
    (p,) = build_splits(cfg)["train"]
    msg = user_message("gsm8k", p)
    assert (
        msg.count("Question: ") == 8
        and msg.count("The answer is") >= 8
        and msg.endswith("end with 'The answer is N.'")
    )
    assert msg.index("2+3?") > msg.rindex("Answer: ")  # the real question comes after the examples
    assert sft_rows("gsm8k", [p])[0]["user_message"] == msg
    m = _jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": "2"}])
    (q,) = build_splits(TaskConfig(name="math", files={"train": m, "test": m}, few_shot=True))["test"]
    assert user_message("math", q).count("\\boxed{") == 5 and "Problem:\n" in user_message("math", q)
    plain = build_splits(TaskConfig(name="math", files={"train": m, "test": m}))["test"][0]
    assert "Problem:" not in user_message("math", plain)
    with pytest.raises(ValueError, match=r"task\.few_shot has worked examples for gsm8k and math only"):
        TaskConfig(name="apps", files={"train": m, "test": m}, few_shot=True)


def test_the_worked_examples_end_in_the_form_the_checkers_read() -> None:
    from shared.tasks import extract_answer, last_boxed
    from shared.tasks.fewshot import GSM8K_EXEMPLARS, MATH_EXEMPLARS

    assert len(GSM8K_EXEMPLARS) == 8 and len(MATH_EXEMPLARS) == 4
    assert all(extract_answer("gsm8k", a)[1] == "answer-is" for _, a in GSM8K_EXEMPLARS)
    assert [last_boxed(s) for _, s in MATH_EXEMPLARS] == ["12", "1", "20", "13"]
