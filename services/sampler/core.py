"""From problems and completions to sample records (pure).

A sample record is one line of `iter-<n>/samples/shard-<k>.jsonl`:
`{sample_id, problem_id, index, prompt, completion, num_tokens, finish_reason, policy_key}`, where
`policy_key` is the checkpoint that drew it (the lineage's link from a sample to its model). `sample_id` is
`i<iteration>/<problem_id>/<index>`: unique in a run and stable across redeliveries. A later round of
adaptive sampling numbers its samples from the job's `first_index`, after the earlier rounds'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.tasks import user_message


def select_problems(problems: Mapping[str, dict[str, Any]], ids: Sequence[str]) -> list[dict[str, Any]]:
    missing = [pid for pid in ids if pid not in problems]
    if missing:
        raise ValueError(f"{len(missing)} problem ids are not in the dataset (first: {missing[0]})")
    return [problems[pid] for pid in ids]


def sample_rows(
    iteration: int,
    problems: Sequence[dict[str, Any]],
    prompts: Sequence[str],
    completions: Sequence[Sequence[Any]],
    first_index: int = 0,
    policy_key: str = "",
) -> list[dict[str, Any]]:
    rows = []
    for problem, prompt, outs in zip(problems, prompts, completions, strict=True):
        for index, c in enumerate(outs, start=first_index):
            rows.append(
                {
                    "sample_id": f"i{iteration}/{problem['id']}/{index}",
                    "problem_id": problem["id"],
                    "index": index,
                    "prompt": prompt,
                    "completion": c.text,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                    "policy_key": policy_key,
                }
            )
    return rows


def render_prompts(
    tokenizer: Any, task: str, problems: Sequence[dict[str, Any]], *, chat: bool, system: str | None
) -> list[str]:
    from shared.llm.generation import render_prompt

    return [render_prompt(tokenizer, user_message(task, p), system=system, chat=chat) for p in problems]


def shard_summary(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """What SampleDone says about a shard's sample rows."""
    return {"num_samples": len(rows), "num_tokens": sum(r["num_tokens"] for r in rows)}
