"""The verifier's Prometheus metrics (the shared job, store and NATS ones: `shared.telemetry`).

Verdicts and programs are counted as they are judged (E-step verify jobs and the Verify RPC the
evaluator and the trainer call alike). The sandbox pools' state is read when Prometheus scrapes
(`SandboxCollector`): the pools keep their own counts, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .verdict_cache import CacheCounts


class Pools(Protocol):
    """What the collector reads (`checkers.Checkers`)."""

    def pool_health(self) -> dict[str, Any]: ...
    def cache_counts(self) -> dict[str, CacheCounts]: ...


VERDICTS = Counter(
    "restem_verifier_verdicts_total",
    "Completions judged, by task and verdict (correct / incorrect)",
    ["task", "verdict"],
)
PROGRAMS = Counter(
    "restem_verifier_programs_total",
    "Programs graded against their tests, by outcome (passed, wrong_answer, time_limit, ...)",
    ["status"],
)


def record_verdict(task: str, correct: bool) -> None:
    VERDICTS.labels(task, "correct" if correct else "incorrect").inc()


class SandboxCollector(Collector):
    """The code and math sandbox pools, read at scrape time: workers, busy, queue, restarts, cache."""

    def __init__(self, checkers: Pools) -> None:
        self.checkers = checkers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        workers = GaugeMetricFamily(
            "restem_verifier_sandbox_workers", "Sandbox workers", labels=["pool", "state"]
        )
        depth = GaugeMetricFamily(
            "restem_verifier_sandbox_queue_depth", "Checks waiting for a worker", labels=["pool"]
        )
        runs = CounterMetricFamily("restem_verifier_sandbox_runs", "Checks the pool ran", labels=["pool"])
        restarts = CounterMetricFamily(
            "restem_verifier_zygote_restarts", "Zygotes replaced (recycled or broken)", labels=["pool"]
        )
        failures = CounterMetricFamily(
            "restem_verifier_zygote_start_failures", "Zygotes that failed to start", labels=["pool"]
        )
        for name, health in self.checkers.pool_health().items():
            workers.add_metric([name, "total"], health.workers)
            workers.add_metric([name, "ready"], health.workers_ready)
            workers.add_metric([name, "busy"], health.busy)
            depth.add_metric([name], health.queue_depth)
            runs.add_metric([name], health.jobs_done)
            restarts.add_metric([name], health.restarts)
            failures.add_metric([name], health.start_failures)
        yield from (workers, depth, runs, restarts, failures)
        yield from _cache_families(self.checkers.cache_counts())


def _cache_families(counts: dict[str, CacheCounts]) -> Iterator[CounterMetricFamily]:
    hits = CounterMetricFamily(
        "restem_verifier_cache_hits",
        "Code and MATH verdicts served from the verdict cache instead of running a check, by checker "
        "and tier (memory: this replica; store: shared by every replica and run)",
        labels=["checker", "tier"],
    )
    misses = CounterMetricFamily(
        "restem_verifier_cache_misses",
        "Verdicts found in no tier of the cache (the check ran)",
        labels=["checker"],
    )
    errors = CounterMetricFamily(
        "restem_verifier_cache_store_errors",
        "Verdict cache reads and writes the store failed (the check ran without it)",
        labels=["checker"],
    )
    for checker, c in sorted(counts.items()):
        hits.add_metric([checker, "memory"], c.memory_hits)
        hits.add_metric([checker, "store"], c.store_hits)
        misses.add_metric([checker], c.misses)
        errors.add_metric([checker], c.store_errors)
    yield from (hits, misses, errors)


def register(checkers: Pools) -> SandboxCollector:
    collector = SandboxCollector(checkers)
    REGISTRY.register(collector)
    return collector
