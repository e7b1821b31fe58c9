"""Problems, prompts and the numeric answer checks of the tasks restem runs (pure functions).

A problem is a plain dict `{"id", "question", "answer", ...}` (plus `"solution"` when a reference
solution exists); datasets are JSONL files of them in the store. `answers` checks the numeric
tasks; `datasets` loads every task's files; `prompts` says what the model is asked. Not here:
code execution and MATH equivalence, which need the verifier's sandbox pool.
"""

from __future__ import annotations

import json
from typing import Any

from .answers import (
    ARITHMETIC_STOP,
    CHECKER_VERSION,
    Problem,
    Verdict,
    check_answer,
    extract_answer,
    generate_arithmetic,
    last_boxed,
)
from .datasets import (
    DatasetError,
    build_splits,
    build_transfer_sets,
    load_jsonl_problems,
    load_problems,
    resolve_dataset_path,
)
from .prompts import (
    CODE_BLOCK_STOP,
    CODE_TASKS,
    NUMERIC_TASKS,
    reference_completion,
    reference_subset,
    sft_rows,
    stop_patterns,
    user_message,
)

TASKS_WITH_CHECKERS = ("arithmetic", "gsm8k", "math", "apps", "humaneval")
"""Every task the verifier service can score (numeric here; math and code in its sandbox pool)."""


def dumps_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def loads_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


__all__ = [
    "ARITHMETIC_STOP",
    "CHECKER_VERSION",
    "CODE_BLOCK_STOP",
    "CODE_TASKS",
    "NUMERIC_TASKS",
    "TASKS_WITH_CHECKERS",
    "DatasetError",
    "Problem",
    "Verdict",
    "build_splits",
    "build_transfer_sets",
    "check_answer",
    "dumps_jsonl",
    "extract_answer",
    "generate_arithmetic",
    "last_boxed",
    "load_jsonl_problems",
    "load_problems",
    "loads_jsonl",
    "reference_completion",
    "reference_subset",
    "resolve_dataset_path",
    "sft_rows",
    "stop_patterns",
    "user_message",
]
