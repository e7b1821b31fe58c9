"""Kept samples to training examples, and the summary stored beside each checkpoint (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

TRAIN_SUMMARY = "restem_train.json"
MODEL_INFO = "restem_model.json"


def examples_from_kept(rows: Sequence[dict[str, Any]]) -> list[Any]:
    from shared.llm.training import TrainExample

    return [
        TrainExample(prompt=r["prompt"], completion=r["completion"], weight=float(r.get("weight", 1.0)))
        for r in rows
    ]


def summary_dict(stats: Any, *, base_key: str, kept_key: str) -> dict[str, Any]:
    return {**asdict(stats), "base_key": base_key, "kept_key": kept_key}
