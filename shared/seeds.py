"""Seeds as hashes of what a piece of work is, never of where it happens to run.

A counter seed (`seed + shard`, `seed + batch`) ties a random stream to the work's position: which
shard, which batch, which adaptive round drew it. restem derives every seed by hashing the parts
that identify the work instead:

* `derive_seed(*parts)`: 63 bits of SHA-256 over the parts joined by ":" (stable across processes,
  machines and Python versions; 63 bits fit vLLM's int64 seeds and `random.Random`).
* `sample_seeds(job_seed, keys, n, first_index)`: sample `index` of the prompt with key `key` (a
  problem id) gets `derive_seed(job_seed, key, index)`. A sample's randomness is then a function
  of (job seed, problem, sample index) alone, so a fixed-K shard and the adaptive rounds that
  split the same indices draw the same samples, and so do any sharding and batching of the same
  problems. The E-step's job seed is per iteration (`derive_seed(sampling.seed, iteration)`), the
  sampled evaluation's is `evaluation.seed` for every checkpoint (equal terms across iterations).

Not handled here: the random streams themselves (`shared.llm.generation` draws one uniform per
sample and decode step from `random.Random(seed)`; the vLLM backend passes the seed per request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a base seed and a position, stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_seeds(job_seed: int, keys: Sequence[object], n: int, first_index: int = 0) -> list[list[int]]:
    """Per prompt, the seeds of its samples `first_index .. first_index + n - 1` (prompt-major)."""
    return [[derive_seed(job_seed, key, first_index + j) for j in range(n)] for key in keys]
