"""The filter's I/O: stream an iteration's shards from the store through `KeptSelection`.

Runs in a worker thread (`asyncio.to_thread`), so the coordinator's event loop keeps answering
the API and other runs' events while a large iteration is filtered. Shards are fetched a few at a
time ahead of the parser (an S3 GET costs milliseconds of latency, and an iteration at the paper's
scale has hundreds of shards), and at most `PREFETCH` shards are held at once.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import keys
from shared.runconfig import RunConfig
from shared.seeds import derive_seed
from shared.store import ArtifactStore

from . import adaptive
from .selection import FilterStats, KeptSelection

log = logging.getLogger("restem.coordinator.filter")

PREFETCH = 8


@dataclass(frozen=True)
class FilterOutcome:
    """Either the next adaptive round (`plan`) or the kept set written with its `stats`."""

    plan: adaptive.RoundPlan | None
    stats: FilterStats | None
    seconds: float


def _shard_bytes(store: ArtifactStore, run_id: str, iteration: int, shard: int) -> tuple[bytes, bytes]:
    return (
        store.get_bytes(keys.samples_key(run_id, iteration, shard)),
        store.get_bytes(keys.verdicts_key(run_id, iteration, shard)),
    )


def _prefetched(
    store: ArtifactStore, run_id: str, iteration: int, shards: int
) -> Iterator[tuple[bytes, bytes]]:
    """Each shard's (samples, verdicts) bytes in shard order, fetched up to PREFETCH ahead."""
    with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="filter-fetch") as pool:
        pending: dict[int, Future[tuple[bytes, bytes]]] = {}
        for shard in range(shards):
            for ahead in range(shard, min(shards, shard + PREFETCH)):
                if ahead not in pending:
                    pending[ahead] = pool.submit(_shard_bytes, store, run_id, iteration, ahead)
            yield pending.pop(shard).result()


def _rows(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def add_shard(sel: KeptSelection, samples: bytes, verdicts: bytes) -> None:
    """Feed one shard, parsing only the sample rows judged correct.

    The verifier writes one verdict row per sample, in sample order, naming its problem, so a
    wrong sample's line (most of the bytes) need not be parsed. Where the two files do not line up
    line for line (a row's id differs, or verdicts of an older release
    without problem ids), the shard is read the slow way, by id.
    """
    judged = list(_rows(verdicts))
    lines = [line for line in samples.splitlines() if line.strip()]
    if len(lines) == len(judged):
        picked: list[tuple[str, dict[str, Any] | None]] = []
        for v, line in zip(judged, lines, strict=True):
            row = json.loads(line) if v["correct"] else None
            if "problem_id" not in v or (row is not None and row["sample_id"] != v["sample_id"]):
                break
            picked.append((v["problem_id"], row))
        else:
            for problem_id, row in picked:
                sel.add(problem_id, row)
            return
    sel.add_shard(_rows(samples), {v["sample_id"] for v in judged if v["correct"]})


def filter_iteration(
    store: ArtifactStore,
    run_id: str,
    iteration: int,
    *,
    shards: int,
    rounds_done: int,
    cfg: RunConfig,
    problem_ids: Sequence[str],
) -> FilterOutcome:
    """Read the iteration's shards once; plan the next adaptive round or write the kept set.

    `rounds_done`: the adaptive sampling rounds verified so far (1 after the first round).
    """
    start = time.monotonic()
    seed = derive_seed(cfg.sampling.seed, iteration)
    with KeptSelection(problem_ids, cutoff=cfg.em.cutoff, seed=seed) as sel:
        for samples, verdicts in _prefetched(store, run_id, iteration, shards):
            add_shard(sel, samples, verdicts)
        if cfg.sampling.adaptive.enabled:
            plan = adaptive.plan_next_round(cfg, problem_ids, sel.tallies(), rounds_done)
            if plan is not None:
                return FilterOutcome(plan, None, time.monotonic() - start)
        with tempfile.NamedTemporaryFile(prefix="restem-kept-out-", suffix=".jsonl") as out:
            sel.write_kept(out)  # type: ignore[arg-type]
            out.flush()
            store.put_file(keys.kept_key(run_id, iteration), Path(out.name))
        return FilterOutcome(None, sel.stats(), time.monotonic() - start)
