"""The evaluator's Prometheus metrics (the shared job, store and NATS ones: `shared.telemetry`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge

PROBLEMS = Counter("restem_evaluator_problems_total", "Problems evaluated, by split kind", ["split"])
CORRECT = Counter("restem_evaluator_correct_total", "Greedy answers judged correct, by split kind", ["split"])
SAMPLES = Counter(
    "restem_evaluator_samples_total",
    "Completions generated and verified (greedy and pass@k samples)",
    ["split"],
)
PROBLEMS_PER_S = Gauge(
    "restem_evaluator_problems_per_second", "Problems per second of the last evaluation job"
)


def split_kind(split: str) -> str:
    """`train`, `validation`, `test` or `transfer` (one label per transfer split would be unbounded)."""
    return "transfer" if split.startswith("transfer-") else split


def record(split: str, rows: Sequence[dict[str, Any]], seconds: float) -> None:
    """Count a freshly evaluated shard (one read back from an earlier delivery is not counted)."""
    kind = split_kind(split)
    PROBLEMS.labels(kind).inc(len(rows))
    CORRECT.labels(kind).inc(sum(1 for r in rows if r.get("correct")))
    SAMPLES.labels(kind).inc(sum(1 + len(r.get("samples") or ()) for r in rows))
    if seconds > 0:
        PROBLEMS_PER_S.set(len(rows) / seconds)
