"""The verdict cache shared by every verifier replica and every run: an LRU in front of the store.

A verdict is a function of (checker, checker version, problem, completion), so a completion judged
once need not be judged again: not by this replica, not by another one, not by a redelivered job,
not by the next run that samples the same answer. `SharedVerdicts.judged` answers from, in order,
this replica's LRU (`sandbox.pool.VerdictCache`), a check of the same key already running here, and
the artifact store (one JSON object per verdict at `shared.keys.verdict_cache_key`), and only then
runs the check and keeps what it decided.

A `fraction_of_tests` code verdict (`rewards`) ran every test and carries its reward: it is kept
under its own checker name, `code-fraction-of-tests`, so a verdict that stopped at the first failing
test never answers it, nor the other way round; a binary verdict's object is unchanged.

Only final verdicts are kept: a check that raises (a sandbox that cannot run it) stores nothing,
and the caller's `final` refuses a verdict that may stand for an infrastructure failure. The store
is an optimisation, never a dependency: a store error here is counted, logged when the store starts
failing, and the check runs as if there were no store; for `STORE_COOLDOWN_S` after an error the
store is not asked again (an unreachable S3 store costs every call seconds of retries).

Not provided: eviction from the store (a checker version bump leaves the old version's tree behind,
to be deleted by hand), and single flight across replicas (two replicas that miss one key at the
same moment both run the check, then write the same object).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar, cast

from shared.keys import verdict_cache_key
from shared.params import RewardMode
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import Verdict

from .code_checks import CODE_CHECKER_VERSION
from .math_checks import MATH_CHECKER_VERSION
from .rewards import Scored
from .sandbox.pool import VerdictCache

log = logging.getLogger("restem.verifier")
T = TypeVar("T")
V = TypeVar("V", Verdict, Scored)  # what a key holds: a verdict, or (graded checkers) a scored one

STORE_CONCURRENCY = 16
"""Store requests in flight per replica. A shard's look-ups overlap instead of queueing: 2,000
sequential GETs at ~10 ms each would add 20 s to a shard whose checks take a few seconds."""
STORE_COOLDOWN_S = 30.0
"""After a store error the cache runs from memory only this long, then tries the store again."""
CODE_CHECKERS: dict[RewardMode, str] = {"binary": "code", "fraction_of_tests": "code-fraction-of-tests"}
"""The cache's checker name of a code verdict, by reward mode."""
GRADED = frozenset({CODE_CHECKERS["fraction_of_tests"]})
"""Checkers whose verdicts carry their reward (`Scored`)."""


class VerdictKey(NamedTuple):
    """What identifies a verdict; `path` is its object in the store."""

    checker: str
    version: str
    problem_fp: str
    completion_sha256: str

    def path(self) -> str:
        return verdict_cache_key(self.checker, self.version, self.problem_fp, self.completion_sha256)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def code_key(problem_fp: str, code: str, reward: RewardMode = "binary") -> VerdictKey:
    """A code verdict: the problem's `CodeProblem.fingerprint()` and the code the sandbox runs."""
    return VerdictKey(CODE_CHECKERS[reward], CODE_CHECKER_VERSION, problem_fp, sha256_text(code))


def math_key(reference: str, completion: str) -> VerdictKey:
    """A MATH verdict: the reference answer as given and the whole completion."""
    return VerdictKey("math", MATH_CHECKER_VERSION, sha256_text(reference), sha256_text(completion))


def encode(value: Verdict | Scored) -> bytes:
    """Canonical JSON: the same verdict is the same bytes, so a rewrite of a key changes nothing.
    A scored verdict is its verdict's object plus `reward`."""
    if isinstance(value, Scored):
        row = {**dataclasses.asdict(value.verdict), "reward": value.reward}
    else:
        row = dataclasses.asdict(value)
    return json.dumps(row, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, key: VerdictKey) -> Verdict | Scored:
    """The stored verdict (`Scored` under a graded checker); a ValueError when the object is not one
    of `key`'s checker version."""
    try:
        row = json.loads(data)
        verdict = Verdict(**{f.name: row[f.name] for f in dataclasses.fields(Verdict)})
        reward = row["reward"] if key.checker in GRADED else 0.0
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a verdict: {exc!r}") from None
    if type(verdict.correct) is not bool or verdict.checker_version != key.version:
        raise ValueError(f"not a {key.version} verdict: {verdict}")
    if key.checker not in GRADED:
        return verdict
    if type(reward) not in (int, float) or not 0 <= reward <= 1:
        raise ValueError(f"not a reward in [0, 1]: {reward!r}")
    return Scored(verdict, float(reward))


@dataclasses.dataclass
class CacheCounts:
    """One checker's cache traffic since the replica started."""

    memory_hits: int = 0
    """Answered by this replica's LRU, or by a check of the same key already running here."""
    store_hits: int = 0
    """Answered by the store: judged earlier by any replica, in any run."""
    misses: int = 0
    """Looked up and found nowhere, so the check ran."""
    checks_run: int = 0
    """Checks executed in a sandbox (a program, a math-verify call), with or without a cache."""
    store_errors: int = 0
    """Store reads and writes that failed (the check ran, or its verdict was not shared)."""

    @property
    def hits(self) -> int:
        return self.memory_hits + self.store_hits


def _always(_: Any) -> bool:
    return True


class SharedVerdicts:
    """Verdicts by `VerdictKey`: memory (`memory_entries`, 0: none), then `store` (None: none)."""

    def __init__(self, store: ArtifactStore | None, memory_entries: int) -> None:
        self.store = store
        self.memory = VerdictCache(memory_entries) if memory_entries else None
        self.counts: defaultdict[str, CacheCounts] = defaultdict(CacheCounts)
        self._pending: dict[VerdictKey, asyncio.Future[Any]] = {}
        # Its own threads: store calls block, and the default executor also serves the job's reads.
        self._io = ThreadPoolExecutor(STORE_CONCURRENCY, "verdict-cache") if store is not None else None
        self._store_down_until = 0.0

    def totals(self) -> CacheCounts:
        fields = [f.name for f in dataclasses.fields(CacheCounts)]
        return CacheCounts(**{n: sum(getattr(c, n) for c in self.counts.values()) for n in fields})

    async def judged(
        self,
        key: VerdictKey,
        run: Callable[[], Awaitable[V]],
        final: Callable[[V], bool] = _always,
    ) -> V:
        """The verdict of `key`: remembered, being judged here, stored, or judged now by `run`.
        A key holds one type: a graded checker's (`GRADED`) are `Scored`, the others `Verdict`s."""
        counts = self.counts[key.checker]
        if self.memory is None and self._io is None:
            counts.checks_run += 1  # no cache at all (benchmarks): every check runs
            return await run()
        known = await self._known_here(key)
        if known is not None:
            counts.memory_hits += 1
            return cast(V, known)
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        verdict: V | None = None
        try:
            verdict = await self._load_or_run(key, run, final, counts)
            return verdict
        finally:
            del self._pending[key]
            future.set_result(verdict if verdict is not None and final(verdict) else None)

    async def _known_here(self, key: VerdictKey) -> Any:
        """From memory, or from a check of the same key running here now (a shard often holds
        the same completion several times: it is judged once)."""
        while True:
            known = self.memory.get(key) if self.memory is not None else None
            pending = self._pending.get(key)
            if known is not None or pending is None:
                return known
            known = await asyncio.shield(pending)  # shielded: a cancelled waiter leaves the check be
            if known is not None:
                return known
            # That check failed (its caller has the error): look again, then judge it here.

    async def _load_or_run(
        self,
        key: VerdictKey,
        run: Callable[[], Awaitable[V]],
        final: Callable[[V], bool],
        counts: CacheCounts,
    ) -> V:
        path = key.path()  # outside the error handling below: a bad key is a bug, not an outage
        # `decode` gives the key's type: a graded checker's keys hold `Scored`, the others `Verdict`s
        stored = cast(V | None, await self._store_call(counts, self._read, path, key))
        if stored is not None:
            counts.store_hits += 1
            self._remember(key, stored)
            return stored
        counts.misses += 1
        counts.checks_run += 1
        verdict = await run()
        if final(verdict):
            self._remember(key, verdict)
            await self._store_call(counts, self._write, path, verdict)
        return verdict

    def _remember(self, key: VerdictKey, verdict: Verdict | Scored) -> None:
        if self.memory is not None:
            self.memory.put(key, verdict)

    def _read(self, path: str, key: VerdictKey) -> Verdict | Scored | None:
        assert self.store is not None
        try:
            data = self.store.get_bytes(path)
        except ArtifactNotFound:
            return None
        return decode(data, key)

    def _write(self, path: str, verdict: Verdict | Scored) -> None:
        assert self.store is not None
        self.store.put_bytes(path, encode(verdict))

    async def _store_call(self, counts: CacheCounts, fn: Callable[..., T | None], *args: object) -> T | None:
        """fn(*args) on the store's threads; None when there is no store or it failed."""
        if self._io is None or time.monotonic() < self._store_down_until:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        except Exception as exc:  # the cache must never fail a check: it is judged without it
            counts.store_errors += 1
            if time.monotonic() >= self._store_down_until:  # once per outage, not once per call
                log.warning(
                    "verdict cache: %s failed (%r); checks run without it for %.0f s",
                    self.store.describe() if self.store is not None else "the store",
                    exc,
                    STORE_COOLDOWN_S,
                )
            self._store_down_until = time.monotonic() + STORE_COOLDOWN_S
            return None

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)
