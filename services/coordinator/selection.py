"""The E-step's filter in one pass over the shards, with memory bounded by the problems, not the samples.

At the paper's scale an iteration has 240,000 samples of 1-6 KB each: loading them all (as the
filter once did) needs gigabytes. `KeptSelection` reads one shard at a time and keeps, per
problem, only counts, a 16-byte digest of each distinct correct completion, and the `cutoff`
best candidates (their rank and where their row was spilled). A candidate's kept row is written
to a spill file the moment it becomes a candidate, so no completion text stays in memory;
`write_kept` then assembles the kept set from the spill file in the documented order. The result
is the same bytes whatever order the shards arrive in (see `filtering.select_kept` for the rule).

Why the bounded candidate set is exact: it holds the `cutoff` distinct completions with the
smallest rank so far, each with its smallest-rank sample. A completion outside it has a rank at
least the set's largest, and ranks inside only decrease, so an evicted completion can only come
back with a new, smaller rank, which is then compared afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shared.seeds import derive_seed

from .adaptive import Tally


@dataclass(frozen=True)
class FilterStats:
    samples: int
    correct: int
    problems_total: int
    problems_solved: int
    kept: int
    duplicates_dropped: int


@dataclass
class _Problem:
    samples: int = 0
    correct: int = 0
    distinct: set[bytes] = field(default_factory=set)
    # completion digest -> ((rank, sample_id), spill offset, spill length) of its best sample
    best: dict[bytes, tuple[tuple[int, str], int, int]] = field(default_factory=dict)


def normalized_digest(completion: str) -> bytes:
    """Whitespace-normalised identity of a completion: duplicates differ only in spacing."""
    return hashlib.blake2b(" ".join(completion.split()).encode(), digest_size=16).digest()


class KeptSelection:
    """Feed it the iteration's shards (samples rows and the ids judged correct), then `write_kept`."""

    def __init__(
        self, problem_ids: Iterable[str], *, cutoff: int, seed: int, spill_dir: Path | None = None
    ) -> None:
        self.order = {pid: i for i, pid in enumerate(problem_ids)}
        self.cutoff = cutoff
        self.seed = seed
        self.samples = 0
        self.correct = 0
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

    def add_shard(self, samples: Iterable[dict[str, Any]], correct_ids: set[str]) -> None:
        """One shard: its sample rows and the ids of those judged correct (from its verdicts)."""
        for s in samples:
            self.add(s["problem_id"], s if s["sample_id"] in correct_ids else None)

    def add(self, problem_id: str, correct_row: dict[str, Any] | None) -> None:
        """One sample of `problem_id`: its row when it was judged correct, else None (not needed)."""
        self.samples += 1
        p = self._problems.get(problem_id)
        if p is None:
            p = self._problems[problem_id] = _Problem()
        p.samples += 1
        if correct_row is None:
            return
        self.correct += 1
        p.correct += 1
        digest = normalized_digest(correct_row["completion"])
        p.distinct.add(digest)
        if problem_id in self.order:
            self._offer(p, digest, correct_row)

    def _offer(self, p: _Problem, digest: bytes, s: dict[str, Any]) -> None:
        """Make `s` a candidate if it is among the `cutoff` best distinct completions so far."""
        if self.cutoff <= 0:
            return
        rank = (derive_seed(self.seed, s["sample_id"]), s["sample_id"])
        held = p.best.get(digest)
        if held is not None:
            if rank < held[0]:
                p.best[digest] = (rank, *self._spill_row(s))
            return
        if len(p.best) >= self.cutoff:
            worst = max(p.best, key=lambda d: p.best[d][0])
            if rank >= p.best[worst][0]:
                return
            del p.best[worst]
        p.best[digest] = (rank, *self._spill_row(s))

    def _spill_row(self, s: dict[str, Any]) -> tuple[int, int]:
        row = {
            "sample_id": s["sample_id"],
            "problem_id": s["problem_id"],
            "prompt": s["prompt"],
            "completion": s["completion"],
            "weight": 1.0,
        }
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        offset = self._spill.seek(0, os.SEEK_END)
        self._spill.write(data)
        return offset, len(data)

    def tallies(self) -> dict[str, Tally]:
        """Per problem so far: samples, correct and distinct correct (adaptive sampling's input)."""
        return {
            pid: Tally(samples=p.samples, correct=p.correct, distinct_correct=len(p.distinct))
            for pid, p in self._problems.items()
        }

    def stats(self) -> FilterStats:
        counted = [self._problems[pid] for pid in self.order if pid in self._problems]
        return FilterStats(
            samples=self.samples,
            correct=self.correct,
            problems_total=len(self.order),
            problems_solved=sum(1 for p in counted if p.correct),
            kept=sum(len(p.best) for p in counted),
            duplicates_dropped=sum(p.correct - len(p.distinct) for p in counted),
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
