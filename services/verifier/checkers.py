"""Every task's reward behind one call: numeric answers in-process, MATH and code in sandbox pools.

`Checkers.check_many` scores (reference, completion) pairs of one task and returns
`shared.tasks.Verdict`s that carry the checker version; `score_many` returns them with their reward
under an `em.reward` mode (`rewards`: binary, or a code task's fraction of tests passed, for which
every test runs). Failures are sorted by whose fault they are:
- the *completion* is bad (no code block, empty or oversized code, a wrong answer): a failing
  verdict with the rule that decided; it is the model's reward, not an error;
- the *problem* is bad (tests that do not parse, a HumanEval test without check()): `BadProblem`,
  which the job path turns into a permanent failure and the RPC into INVALID_ARGUMENT;
- the *sandbox* failed (a zygote that cannot start, a full queue): `SandboxUnavailable`, retried by
  the job path and UNAVAILABLE / RESOURCE_EXHAUSTED to RPC callers; never a silent reward of 0.
Every check that would run in a sandbox goes through the verdict cache first (`verdict_cache`:
this replica's LRU, then the artifact store shared by every replica and run), so a repeated or
redelivered job runs nothing that was already judged.
Not here: what a pool isolates (see `services.verifier.sandbox`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from shared.errors import Overloaded, StatusError, Unavailable
from shared.params import RewardMode
from shared.store import ArtifactStore
from shared.tasks import CODE_TASKS, NUMERIC_TASKS, TASKS_WITH_CHECKERS, Verdict, check_answer

from . import metrics
from .code_checks import (
    CodeProblem,
    CodeVerdict,
    InvalidProblem,
    Status,
    decode_code,
    extract_code,
    invalid_verdict,
    problem_from_dict,
)
from .code_grader import CodeGrader
from .config import SandboxSettings
from .rewards import Scored, binary, fraction_of_tests
from .sandbox.pool import PoolBusy, PoolConfig, PoolHealth, SandboxError, SandboxPool
from .verdict_cache import CacheCounts, SharedVerdicts, code_key, math_key

log = logging.getLogger("restem.verifier")


class BadProblem(StatusError, ValueError):
    """A problem the checker cannot grade against; the message says what is wrong with it."""


class SandboxUnavailable(Unavailable, RuntimeError):
    """The sandbox could not run a check now (start failure); worth retrying."""


class SandboxSaturated(Overloaded, SandboxUnavailable):
    """Every sandbox slot and the queue are full: another replica or a later retry can take it."""


def code_of(task: str, completion: str) -> tuple[str, str]:
    """(code, how it was found): the last fenced block, else the completion itself.

    HumanEval's grader runs prompt + code; a fenced block is a whole function that redefines the
    prompt's, so it starts on a fresh line, while a raw completion continues the prompt's body.
    """
    code, how = extract_code(completion)
    if task == "humaneval" and how == "fenced-block":
        code = "\n" + code
    return code, how


def code_verdict(v: CodeVerdict) -> Verdict:
    return Verdict(v.correct, v.status.value, v.rule, v.checker_version, v.detail[:300])


def final_math(v: Verdict) -> bool:
    """`math-verify-error` is also what a sandbox failure reads as (`MathChecker.acheck`): never shared."""
    return v.rule != "math-verify-error"


class _Lazy:
    """One pool built on first use, from a worker thread (a zygote takes ~1 s to start)."""

    def __init__(self, name: str, make: Any) -> None:
        self.name, self.make = name, make
        self.pool: SandboxPool | None = None
        self.error: str = ""
        self._lock = threading.Lock()

    def get(self) -> SandboxPool:
        with self._lock:
            if self.pool is None:
                try:
                    self.pool = SandboxPool(self.make())
                except SandboxError as exc:
                    self.error = str(exc)
                    raise SandboxUnavailable(f"the {self.name} sandbox pool cannot start: {exc}") from exc
                log.info("%s sandbox pool: %s", self.name, self.pool.protections.summary())
            return self.pool

    def close(self) -> None:
        with self._lock:
            if self.pool is not None:
                self.pool.close()


def pool_config(settings: SandboxSettings, base: PoolConfig) -> PoolConfig:
    """`base` with every field that SandboxSettings also has (by name) taken from the settings."""
    shared = {f.name for f in dataclasses.fields(PoolConfig)} & set(SandboxSettings.model_fields)
    return dataclasses.replace(base, **{name: getattr(settings, name) for name in shared})


class Checkers:
    def __init__(self, settings: SandboxSettings, store: ArtifactStore | None = None) -> None:
        """`store` holds the verdicts shared with other replicas and runs (`settings.shared_cache`)."""
        self.settings = settings
        self.verdicts = SharedVerdicts(store if settings.shared_cache else None, settings.cache_entries)
        self._fingerprints: dict[int, tuple[CodeProblem, str]] = {}
        self._code = _Lazy("code", self._code_config)
        self._math = _Lazy("math", self._math_config)
        self._grader: CodeGrader | None = None
        self._every_test: CodeGrader | None = None
        self._math_checker: Any = None
        self._problems: OrderedDict[str, CodeProblem] = OrderedDict()
        self._by_identity: dict[int, tuple[Any, CodeProblem]] = {}
        self._inflight = asyncio.Semaphore(4 * max(1, settings.workers or 8))

    def _code_config(self) -> PoolConfig:
        return pool_config(self.settings, PoolConfig())

    def _math_config(self) -> PoolConfig:
        from .math_checks import math_pool_config

        base = math_pool_config(workers=self.settings.math_workers)
        # Its own zygote count, and uids distinct from the code pool's: the per-uid process limit
        # must not be shared.
        return dataclasses.replace(
            pool_config(self.settings, base), workers=base.workers, uid_base=self.settings.uid_base + 512
        )

    def grader(self) -> CodeGrader:
        if self._grader is None:
            # No cache of its own: `self.verdicts` is in front of it, for code and math alike.
            self._grader = CodeGrader(self._code.get())
        return self._grader

    def every_test_grader(self) -> CodeGrader:
        """The same pool, grading every test of a problem (`fraction_of_tests` needs them all)."""
        if self._every_test is None:
            self._every_test = CodeGrader(self._code.get(), stop_on_failure=False)
        return self._every_test

    def math_checker(self) -> Any:
        if self._math_checker is None:
            from .math_checks import MathChecker

            self._math_checker = MathChecker(self._math.get(), timeout_s=self.settings.math_timeout_s)
        return self._math_checker

    async def start(self) -> None:
        """Start the code pool now (the service's `sandbox.start_at_boot`)."""
        await asyncio.to_thread(self.grader)

    def healthy(self) -> bool:
        """False only when a started pool can no longer run anything."""
        return all(lazy.pool is None or lazy.pool.healthy() for lazy in (self._code, self._math))

    def health(self) -> dict[str, Any]:
        return {
            lazy.name: dataclasses.asdict(lazy.pool.health())
            if lazy.pool
            else {"state": "NOT_STARTED", "error": lazy.error}
            for lazy in (self._code, self._math)
        }

    def pool_health(self) -> dict[str, PoolHealth]:
        """The started pools' state (for the metrics; a pool not started yet has none)."""
        return {lazy.name: lazy.pool.health() for lazy in (self._code, self._math) if lazy.pool is not None}

    def cache_counts(self) -> dict[str, CacheCounts]:
        """The verdict cache's hits, misses and checks run, by checker (`code`, `math`)."""
        return dict(self.verdicts.counts)

    def close(self) -> None:
        self._code.close()
        self._math.close()
        self.verdicts.close()

    def code_problem(self, reference: Any) -> CodeProblem:
        """The parsed problem, remembered by identity and by content (APPS tests can be megabytes:
        the K samples of a problem share one reference object, which is parsed and hashed once)."""
        seen = self._by_identity.get(id(reference))
        if seen is not None and seen[0] is reference:
            return seen[1]
        key = hashlib.sha256(json.dumps(reference, sort_keys=True).encode()).hexdigest()
        hit = self._problems.get(key)
        if hit is not None:
            self._problems.move_to_end(key)
            return hit
        try:
            problem = problem_from_dict(reference)
        except InvalidProblem as exc:
            raise BadProblem(str(exc)) from None
        self._problems[key] = problem
        if len(self._problems) > 4096:
            self._problems.popitem(last=False)
        if len(self._by_identity) > 4096:
            self._by_identity.clear()
        self._by_identity[id(reference)] = (reference, problem)
        return problem

    def _fingerprint(self, problem: CodeProblem) -> str:
        # Hashing a problem's tests costs as much as their size; its K samples share one object.
        hit = self._fingerprints.get(id(problem))
        if hit is None or hit[0] is not problem:
            if len(self._fingerprints) > 4096:
                self._fingerprints.clear()
            hit = self._fingerprints[id(problem)] = (problem, problem.fingerprint())
        return hit[1]

    async def _check_code(
        self, task: str, problem: CodeProblem, completion: str, reward: RewardMode = "binary"
    ) -> Scored:
        code, _ = code_of(task, completion)
        try:
            src = decode_code(code, problem.kind)
        except InvalidProblem as exc:  # no program to run: nothing worth caching, a reward of 0
            scored = binary(code_verdict(invalid_verdict(str(exc))))
        else:
            fp = self._fingerprint(problem)
            if reward == "binary":
                key = code_key(fp, src)
                scored = binary(await self.verdicts.judged(key, lambda: self._run_code(problem, src)))
            else:
                key = code_key(fp, src, reward)
                scored = await self.verdicts.judged(key, lambda: self._run_every_test(problem, src))
        metrics.PROGRAMS.labels(scored.verdict.extracted).inc()  # `extracted` is a code verdict's status
        return scored

    async def _run_code(self, problem: CodeProblem, src: str) -> Verdict:
        grader = self._grader if self._grader is not None else await asyncio.to_thread(self.grader)
        return code_verdict(await self._grade(grader, problem, src))

    async def _run_every_test(self, problem: CodeProblem, src: str) -> Scored:
        grader = (
            self._every_test
            if self._every_test is not None
            else await asyncio.to_thread(self.every_test_grader)
        )
        v = await self._grade(grader, problem, src)
        return Scored(code_verdict(v), fraction_of_tests(v))

    async def _grade(self, grader: CodeGrader, problem: CodeProblem, src: str) -> CodeVerdict:
        async with self._inflight:
            try:
                v = await grader.agrade(problem, src)
            except PoolBusy as exc:
                raise SandboxSaturated(f"the code sandbox is saturated: {exc}") from exc
        # Not counted, not cached: the check is retried, not judged. Any test counts, not only the
        # first failing one: a lost test would lower a fraction_of_tests reward.
        failed = next((t for t in v.tests if t.status is Status.INTERNAL_ERROR), None)
        if v.status is Status.INTERNAL_ERROR or failed is not None:
            why = (
                f"{v.rule} {v.detail}"
                if failed is None
                else f"test {failed.index}: {failed.rule} {failed.detail}"
            )
            raise SandboxUnavailable(f"the code sandbox failed on problem {problem.id}: {why}")
        return v

    async def _check_math(self, reference: Any, completion: str) -> Verdict:
        checker = self._math_checker or await asyncio.to_thread(self.math_checker)
        gold = str(reference)
        # The fast path (no boxed answer, an exact or normalised match) decides in microseconds
        # without the sandbox: only what reaches math-verify is worth a store look-up. `_fast` stays
        # private because math_checks is fingerprinted as math-3 (`fingerprints`): renaming it
        # would move the fingerprint without a change of rules.
        fast = checker._fast(gold, completion)
        if isinstance(fast, Verdict):
            return fast
        return await self.verdicts.judged(
            math_key(gold, completion), lambda: self._run_math(checker, gold, completion), final_math
        )

    async def _run_math(self, checker: Any, gold: str, completion: str) -> Verdict:
        async with self._inflight:
            try:
                v: Verdict = await checker.acheck(gold, completion)
            except PoolBusy as exc:
                raise SandboxSaturated(f"the math sandbox is saturated: {exc}") from exc
        return v

    async def check(self, task: str, reference: Any, completion: str) -> Verdict:
        return (await self.score(task, reference, completion)).verdict

    async def score(
        self, task: str, reference: Any, completion: str, reward: RewardMode = "binary"
    ) -> Scored:
        scored = await self._judge(task, reference, completion, reward)
        metrics.record_verdict(task, scored.verdict.correct)
        return scored

    async def _judge(self, task: str, reference: Any, completion: str, reward: RewardMode) -> Scored:
        if task in NUMERIC_TASKS:
            # Not cached: checked in-process in microseconds, less than one cache look-up costs.
            return binary(check_answer(task, str(reference), completion))
        if task == "math":
            return binary(await self._check_math(reference, completion))
        if task in CODE_TASKS:
            if not isinstance(reference, dict):
                raise BadProblem(
                    f"a {task} reference must be the problem object (tests), got {type(reference).__name__}"
                )
            return await self._check_code(task, self.code_problem(reference), completion, reward)
        raise BadProblem(f"task '{task}' has no checker; use one of {', '.join(TASKS_WITH_CHECKERS)}")

    async def check_many(self, task: str, pairs: Sequence[tuple[Any, str]]) -> list[Verdict]:
        """Verdicts in order; the sandboxed ones run concurrently on the pool's workers, and so do
        their cache look-ups (a shard's samples do not wait for each other's store reads)."""
        return [s.verdict for s in await self.score_many(task, pairs)]

    async def score_many(
        self, task: str, pairs: Sequence[tuple[Any, str]], reward: RewardMode = "binary"
    ) -> list[Scored]:
        """`check_many` with each verdict's reward; a ValueError for a reward the task cannot give."""
        if reward != "binary" and task not in CODE_TASKS:
            raise ValueError(f"reward '{reward}' needs a code task ({', '.join(CODE_TASKS)}), not '{task}'")
        if task in NUMERIC_TASKS:
            verdicts = [check_answer(task, str(ref), c) for ref, c in pairs]
            for v in verdicts:
                metrics.record_verdict(task, v.correct)
            return [binary(v) for v in verdicts]
        return list(await asyncio.gather(*(self.score(task, ref, c, reward) for ref, c in pairs)))
