"""The E-step's filter in one pass over the shards, with memory bounded by the problems, not the samples.

At the paper's scale an iteration has 240,000 samples of 1-6 KB each: loading them all (as the
filter once did) needs gigabytes. `KeptSelection` reads one shard at a time and keeps, per
problem, only counts, a 16-byte digest of each distinct keepable completion (reward at least
`min_reward`), and the `cutoff` best candidates (their rank and where their row was spilled). A candidate's kept row is written
to a spill file the moment it becomes a candidate, so no completion text stays in memory;
`write_kept` then assembles the kept set from the spill file in the documented order. The result
is the same bytes whatever order the shards arrive in (see `filtering.select_kept` for the rule).

Why the bounded candidate set is exact: a sample's rank is a total order (higher reward first, then
the seeded random order), and the set holds the `cutoff` distinct completions with the smallest
rank so far, each with its smallest-rank sample. A completion outside it has a rank at
least the set's largest, and ranks inside only decrease, so an evicted completion can only come
back with a new, smaller rank, which is then compared afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shared.seeds import derive_seed

from .adaptive import Tally
from .rewards import NOT_JUDGED, REWARD_BUCKETS, Judged, bucket, histogram


@dataclass(frozen=True)
class FilterStats:
    samples: int
    correct: int
    problems_total: int
    problems_solved: int
    kept: int
    duplicates_dropped: int
    sample_rewards: dict[str, int] = field(default_factory=dict)
    """Samples per reward bucket (`rewards.REWARD_BUCKETS`): every sample of the iteration."""
    kept_rewards: dict[str, int] = field(default_factory=dict)
    """Kept samples per reward bucket."""
    kept_weight: float = 0.0
    """The kept set's total loss weight: the sum of its rewards."""


Rank = tuple[float, int, str]
"""(-reward, seeded random key, sample id): smaller is kept first."""


@dataclass
class _Problem:
    samples: int = 0
    correct: int = 0
    keepable: int = 0  # samples with a reward of at least min_reward
    # digest of each distinct keepable completion -> whether one of its samples was fully correct
    distinct: dict[bytes, bool] = field(default_factory=dict)
    # completion digest -> (rank, spill offset, spill length) of its best sample
    best: dict[bytes, tuple[Rank, int, int]] = field(default_factory=dict)


def normalized_digest(completion: str) -> bytes:
    """Whitespace-normalised identity of a completion: duplicates differ only in spacing."""
    return hashlib.blake2b(" ".join(completion.split()).encode(), digest_size=16).digest()


class KeptSelection:
    """Feed it the iteration's shards (sample rows and their verdicts), then `write_kept`.

    A sample is keepable when its reward is at least `min_reward` (1.0: fully correct only); its
    kept row's `weight` is its reward.
    """

    def __init__(
        self,
        problem_ids: Iterable[str],
        *,
        cutoff: int,
        seed: int,
        min_reward: float = 1.0,
        spill_dir: Path | None = None,
    ) -> None:
        self.order = {pid: i for i, pid in enumerate(problem_ids)}
        self.cutoff = cutoff
        self.seed = seed
        self.min_reward = min_reward
        self.samples = 0
        self.correct = 0
        self._rewards = dict.fromkeys(REWARD_BUCKETS, 0)
        self._problems: dict[str, _Problem] = {}
        fd, name = tempfile.mkstemp(prefix="restem-kept-", suffix=".jsonl", dir=spill_dir)
        self._spill_path = Path(name)
        self._spill: BinaryIO = os.fdopen(fd, "w+b")

    def close(self) -> None:
        self._spill.close()
        self._spill_path.unlink(missing_ok=True)

    def __enter__(self) -> KeptSelection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keeps(self, judged: Judged) -> bool:
        """Whether a sample so judged may be kept (only then is its row needed)."""
        return judged.reward >= self.min_reward

    def add_shard(self, samples: Iterable[dict[str, Any]], judged: Mapping[str, Judged]) -> None:
        """One shard: its sample rows and their verdicts by sample id (an id missing: not kept)."""
        for s in samples:
            verdict = judged.get(s["sample_id"], NOT_JUDGED)
            self.add(s["problem_id"], verdict, s if self.keeps(verdict) else None)

    def add(self, problem_id: str, judged: Judged, row: dict[str, Any] | None = None) -> None:
        """One sample of `problem_id`: its verdict, and its row when `keeps(judged)` (else not needed)."""
        self.samples += 1
        self._rewards[bucket(judged.reward)] += 1
        p = self._problems.get(problem_id)
        if p is None:
            p = self._problems[problem_id] = _Problem()
        p.samples += 1
        if judged.correct:
            self.correct += 1
            p.correct += 1
        if not self.keeps(judged):
            return
        if row is None:
            raise ValueError(f"a keepable sample of problem {problem_id} came without its row")
        p.keepable += 1
        digest = normalized_digest(row["completion"])
        p.distinct[digest] = p.distinct.get(digest, False) or judged.correct
        if problem_id in self.order:
            self._offer(p, digest, row, judged.reward)

    def _offer(self, p: _Problem, digest: bytes, s: dict[str, Any], reward: float) -> None:
        """Make `s` a candidate if it is among the `cutoff` best distinct completions so far."""
        if self.cutoff <= 0:
            return
        rank = (-reward, derive_seed(self.seed, s["sample_id"]), s["sample_id"])
        held = p.best.get(digest)
        if held is not None:
            if rank < held[0]:
                p.best[digest] = (rank, *self._spill_row(s, reward))
            return
        if len(p.best) >= self.cutoff:
            worst = max(p.best, key=lambda d: p.best[d][0])
            if rank >= p.best[worst][0]:
                return
            del p.best[worst]
        p.best[digest] = (rank, *self._spill_row(s, reward))

    def _spill_row(self, s: dict[str, Any], reward: float) -> tuple[int, int]:
        row = {
            "sample_id": s["sample_id"],
            "problem_id": s["problem_id"],
            "prompt": s["prompt"],
            "completion": s["completion"],
            "weight": reward,  # the reward-weighted NLL's weight (1.0 for every binary kept sample)
        }
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        offset = self._spill.seek(0, os.SEEK_END)
        self._spill.write(data)
        return offset, len(data)

    def tallies(self) -> dict[str, Tally]:
        """Per problem so far: samples, correct and distinct correct (adaptive sampling's input).

        Fully correct ones, whatever `min_reward`: kept samples are ranked by reward, so until a
        problem has `cutoff` distinct correct completions more samples can still improve its kept set.
        """
        return {
            pid: Tally(samples=p.samples, correct=p.correct, distinct_correct=sum(p.distinct.values()))
            for pid, p in self._problems.items()
        }

    def stats(self) -> FilterStats:
        counted = [self._problems[pid] for pid in self.order if pid in self._problems]
        kept = [-rank[0] for p in counted for rank, _, _ in p.best.values()]
        return FilterStats(
            samples=self.samples,
            correct=self.correct,
            problems_total=len(self.order),
            problems_solved=sum(1 for p in counted if p.correct),
            kept=len(kept),
            duplicates_dropped=sum(p.keepable - len(p.distinct) for p in counted),
            sample_rewards=dict(self._rewards),
            kept_rewards=histogram(kept),
            kept_weight=math.fsum(kept),  # exact: the same whatever order the shards came in
        )

    def write_kept(self, out: BinaryIO) -> int:
        """The kept rows: problems in split order, each problem's by rank; returns the bytes written."""
        picks = sorted(
            (self.order[pid], entry)
            for pid, p in self._problems.items()
            if pid in self.order
            for entry in p.best.values()
        )
        self._spill.flush()
        written = 0
        for _, (_, offset, length) in picks:
            self._spill.seek(offset)
            written += out.write(self._spill.read(length))
        return written
