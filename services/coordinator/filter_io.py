"""The filter's I/O: stream an iteration's shards from the store through `KeptSelection`.

Runs in a worker thread (`asyncio.to_thread`), so the coordinator's event loop keeps answering
the API and other runs' events while a large iteration is filtered. Shards are fetched a few at a
time ahead of the parser (an S3 GET costs milliseconds of latency, and an iteration at the paper's
scale has hundreds of shards), and at most `PREFETCH` shards are held at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import keys
from shared.digest import file_digest
from shared.runconfig import RunConfig
from shared.seeds import derive_seed
from shared.store import ArtifactStore

from . import adaptive
from .rewards import judged_of
from .selection import FilterStats, KeptSelection

log = logging.getLogger("restem.coordinator.filter")

PREFETCH = 8


@dataclass(frozen=True)
class ShardSource:
    """Where an iteration's shards are: its recorded samples and verdicts prefixes (a fork reads its
    source run's samples with reverified verdicts)."""

    samples_prefix: str
    verdicts_prefix: str

    @classmethod
    def of_run(cls, run_id: str, iteration: int) -> ShardSource:
        return cls(keys.samples_prefix(run_id, iteration), keys.verdicts_prefix(run_id, iteration))

    def keys(self, shard: int) -> tuple[str, str]:
        return keys.shard_key(self.samples_prefix, shard), keys.shard_key(self.verdicts_prefix, shard)


@dataclass(frozen=True)
class ShardDigest:
    """What the filter read of one shard, for the lineage: both files' sha256 and the checker
    versions named in its verdict rows."""

    samples_sha256: str
    verdicts_sha256: str
    checkers: tuple[str, ...]


@dataclass(frozen=True)
class FilterOutcome:
    """Either the next adaptive round (`plan`) or the kept set written with its `stats`; `digests`
    and `kept_sha256` are what the lineage records."""

    plan: adaptive.RoundPlan | None
    stats: FilterStats | None
    seconds: float
    digests: dict[int, ShardDigest] | None = None
    kept_sha256: str = ""


def _shard_bytes(store: ArtifactStore, source: ShardSource, shard: int) -> tuple[bytes, bytes]:
    samples, verdicts = source.keys(shard)
    return store.get_bytes(samples), store.get_bytes(verdicts)


def _prefetched(
    store: ArtifactStore, source: ShardSource, shards: Sequence[int]
) -> Iterator[tuple[int, tuple[bytes, bytes]]]:
    """Each of `shards` with its (samples, verdicts) bytes, in order, fetched up to PREFETCH ahead."""
    with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="filter-fetch") as pool:
        pending: dict[int, Future[tuple[bytes, bytes]]] = {}
        for i, shard in enumerate(shards):
            for ahead in shards[i : i + PREFETCH]:
                if ahead not in pending:
                    pending[ahead] = pool.submit(_shard_bytes, store, source, ahead)
            yield shard, pending.pop(shard).result()


def _rows(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def add_shard(sel: KeptSelection, samples: bytes, verdicts: bytes) -> set[str]:
    """Feed one shard, parsing only the sample rows the filter may keep; the checker versions that judged it.

    The verifier writes one verdict row per sample, in sample order, naming its problem, so the line
    of a sample below `min_reward` (most of the bytes) need not be parsed. Where the two files do not
    line up line for line (a row's id differs, or verdicts of an older release without problem ids),
    the shard is read the slow way, by id.
    """
    judged = list(_rows(verdicts))
    checkers = {str(v.get("checker_version", "")) for v in judged}
    lines = [line for line in samples.splitlines() if line.strip()]
    if len(lines) == len(judged):
        picked = []
        for v, line in zip(judged, lines, strict=True):
            verdict = judged_of(v)
            row = json.loads(line) if sel.keeps(verdict) else None
            if "problem_id" not in v or (row is not None and row["sample_id"] != v["sample_id"]):
                break
            picked.append((v["problem_id"], verdict, row))
        else:
            for problem_id, verdict, row in picked:
                sel.add(problem_id, verdict, row)
            return checkers
    sel.add_shard(_rows(samples), {v["sample_id"]: judged_of(v) for v in judged})
    return checkers


class ShardFeed:
    """An iteration's selection, fed one shard at a time as its verdicts arrive, so the filter at the
    end of the E-step reads only what is left (the selection's result does not depend on the order).
    Thread-safe; each shard is fed once."""

    def __init__(
        self, cfg: RunConfig, iteration: int, problem_ids: Sequence[str], source: ShardSource
    ) -> None:
        seed = derive_seed(cfg.sampling.seed, iteration)
        self.selection = KeptSelection(
            problem_ids, cutoff=cfg.em.cutoff, seed=seed, min_reward=cfg.em.min_reward
        )
        self.source = source
        self.digests: dict[int, ShardDigest] = {}
        self.closed = False
        self._lock = threading.Lock()

    @property
    def fed(self) -> set[int]:
        return set(self.digests)

    def add(self, shard: int, samples: bytes, verdicts: bytes) -> None:
        with self._lock:
            if shard not in self.digests and not self.closed:
                checkers = add_shard(self.selection, samples, verdicts)
                self.digests[shard] = ShardDigest(
                    hashlib.sha256(samples).hexdigest(),
                    hashlib.sha256(verdicts).hexdigest(),
                    tuple(sorted(checkers)),
                )

    def feed(self, store: ArtifactStore, shard: int) -> None:
        """Read and add one verified shard (a no-op if it is in already or the feed is closed)."""
        with self._lock:
            if shard in self.digests or self.closed:
                return
        self.add(shard, *_shard_bytes(store, self.source, shard))

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.selection.close()


def filter_iteration(
    store: ArtifactStore,
    run_id: str,
    iteration: int,
    *,
    shards: int,
    rounds_done: int,
    cfg: RunConfig,
    problem_ids: Sequence[str],
    feed: ShardFeed | None = None,
    source: ShardSource | None = None,
    kept_key: str | None = None,
    plan_rounds: bool = True,
) -> FilterOutcome:
    """Read the iteration's shards once; plan the next adaptive round or write the kept set.

    `rounds_done`: the adaptive sampling rounds verified so far (1 after the first round).
    `feed`: the shards fed while they were verified (the caller closes it); only the rest are read.
    `source` (default: the run's own layout) and `kept_key`: where to read, and where to write.
    `plan_rounds` False: no further adaptive round (the samples are another run's, or re-judged).
    """
    start = time.monotonic()
    source = source or ShardSource.of_run(run_id, iteration)
    mine = feed is None or feed.closed
    use = ShardFeed(cfg, iteration, problem_ids, source) if mine or feed is None else feed
    try:
        missing = [shard for shard in range(shards) if shard not in use.digests]
        for shard, data in _prefetched(store, use.source, missing):
            use.add(shard, *data)
        sel = use.selection
        if cfg.sampling.adaptive.enabled and plan_rounds:
            plan = adaptive.plan_next_round(cfg, problem_ids, sel.tallies(), rounds_done)
            if plan is not None:
                return FilterOutcome(plan, None, time.monotonic() - start)
        with tempfile.NamedTemporaryFile(prefix="restem-kept-out-", suffix=".jsonl") as out:
            sel.write_kept(out)  # type: ignore[arg-type]
            out.flush()
            kept_sha256, _ = file_digest(Path(out.name))
            store.put_file(kept_key or keys.kept_key(run_id, iteration), Path(out.name))
        digests = {i: use.digests[i] for i in range(shards)}
        return FilterOutcome(None, sel.stats(), time.monotonic() - start, digests, kept_sha256)
    finally:
        if mine:
            use.close()


class Feeds:
    """The coordinator's `ShardFeed`s, one per (run, iteration) being verified, fed in the background
    as verify_done events are applied. Lost with the process: a restarted coordinator's filter reads
    every shard, with the same result."""

    def __init__(self, store: ArtifactStore, *, at_once: int = 2) -> None:
        self.store = store
        self._feeds: dict[tuple[str, int], ShardFeed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(at_once)  # threads parsing shards beside the event loop

    def get(self, run_id: str, iteration: int) -> ShardFeed | None:
        return self._feeds.get((run_id, iteration))

    def verified(
        self,
        run_id: str,
        iteration: int,
        shard: int,
        cfg: RunConfig,
        problem_ids: Sequence[str],
        source: ShardSource,
    ) -> None:
        """Start feeding a shard whose verdicts were just applied."""
        feed = self._feeds.get((run_id, iteration))
        if feed is None:
            feed = self._feeds[(run_id, iteration)] = ShardFeed(cfg, iteration, problem_ids, source)
        task = asyncio.create_task(self._feed(feed, run_id, iteration, shard))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _feed(self, feed: ShardFeed, run_id: str, iteration: int, shard: int) -> None:
        async with self._slots:
            try:
                await asyncio.to_thread(feed.feed, self.store, shard)
            except Exception as err:  # the filter reads it at the end instead
                log.info("run %s iteration %d: shard %d not fed early (%s)", run_id, iteration, shard, err)

    def drop(self, run_id: str, *, upto: int | None = None) -> None:
        """Close the run's feeds (of iterations <= `upto`, or all)."""
        for key in [k for k in self._feeds if k[0] == run_id and (upto is None or k[1] <= upto)]:
            self._feeds.pop(key).close()
