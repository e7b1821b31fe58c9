"""The sampler's Prometheus metrics (the shared job, store and NATS ones: `shared.telemetry`)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

SAMPLES = Counter("restem_sampler_samples_total", "Completions generated")
TOKENS = Counter("restem_sampler_generated_tokens_total", "Completion tokens generated")
FINISH = Counter(
    "restem_sampler_finish_reasons_total",
    "Completions by why decoding stopped (stop, length, ...)",
    ["reason"],
)
TOKENS_PER_S = Gauge("restem_sampler_tokens_per_second", "Completion tokens per second of the last shard")
GENERATE_SECONDS = Histogram(
    "restem_sampler_generate_seconds",
    "Decoding time of one shard (the model's part of a sample job)",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600),
)


def record(rows: Sequence[dict[str, Any]], seconds: float) -> None:
    """Count a freshly generated shard (a shard read back from an earlier delivery is not counted)."""
    tokens = sum(int(r["num_tokens"]) for r in rows)
    SAMPLES.inc(len(rows))
    TOKENS.inc(tokens)
    for reason, n in Tally(str(r.get("finish_reason") or "unknown") for r in rows).items():
        FINISH.labels(reason).inc(n)
    GENERATE_SECONDS.observe(seconds)
    if seconds > 0:
        TOKENS_PER_S.set(tokens / seconds)
