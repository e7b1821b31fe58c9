"""Kept samples to training examples, and the summary stored beside each checkpoint (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

TRAIN_SUMMARY = "restem_train.json"
MODEL_INFO = "restem_model.json"


def examples_from_kept(
    rows: Sequence[dict[str, Any]], render: Callable[[str], str] | None = None
) -> list[Any]:
    """Training examples from kept rows.

    ReST-EM rows carry the prompt the sampler rendered; SFT-baseline rows carry the user message,
    which `render` turns into the same prompt with the model's own chat template.
    """
    from shared.llm.training import TrainExample

    def prompt(r: dict[str, Any]) -> str:
        if "prompt" in r:
            return str(r["prompt"])
        if render is None or "user_message" not in r:
            raise ValueError(f"kept row {r.get('sample_id', '?')} has neither a prompt nor a user message")
        return render(r["user_message"])

    return [
        TrainExample(prompt=prompt(r), completion=r["completion"], weight=float(r.get("weight", 1.0)))
        for r in rows
    ]


def summary_dict(stats: Any, *, base_key: str, kept_key: str) -> dict[str, Any]:
    """TrainStats (the dataclass, or the dict ``mstep.execute`` returns) plus the lineage keys."""
    data = stats if isinstance(stats, dict) else asdict(stats)
    return {**data, "base_key": base_key, "kept_key": kept_key}
