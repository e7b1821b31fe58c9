"""Grading code through the sandbox pool, with a verdict cache: the rules are `code_checks`', the
program runs as a `sandbox.judge` job.

NOT here: what counts as correct (code_checks) or how a program is isolated (sandbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from services.verifier.code_checks import (
    CODE_CHECKER_VERSION,
    CodeProblem,
    CodeVerdict,
    InvalidProblem,
    Status,
    decode_code,
    invalid_verdict,
    problem_from_dict,
    scaled_time_limit,
)
from services.verifier.sandbox.judge import grade_job
from services.verifier.sandbox.pool import SandboxError, SandboxPool, VerdictCache


class CodeGrader:
    """Grades code against problems through a SandboxPool, with a verdict cache."""

    def __init__(
        self, pool: SandboxPool, cache: VerdictCache | None = None, *, stop_on_failure: bool = True
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.stop_on_failure = stop_on_failure
        self._fingerprints: dict[int, tuple[CodeProblem, str]] = {}

    def _fingerprint(self, p: CodeProblem) -> str:
        # Hashing a problem's tests costs as much as its size; remember it per problem object.
        hit = self._fingerprints.get(id(p))
        if hit is None or hit[0] is not p:
            if len(self._fingerprints) > 50_000:
                self._fingerprints.clear()
            hit = self._fingerprints[id(p)] = (p, p.fingerprint())
        return hit[1]

    def prepare(
        self, problem: CodeProblem | Mapping[str, Any], code: str | bytes
    ) -> tuple[CodeProblem, str, tuple[str, str, str]] | CodeVerdict:
        try:
            p = problem if isinstance(problem, CodeProblem) else problem_from_dict(problem)
            src = decode_code(code, p.kind)
        except InvalidProblem as exc:
            return invalid_verdict(str(exc))
        key = (
            CODE_CHECKER_VERSION,
            self._fingerprint(p),
            hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest(),
        )
        return p, src, key

    def _finish(self, key: tuple[str, str, str], run: Any) -> CodeVerdict:
        try:
            verdict: CodeVerdict = run()
        except (SandboxError, TimeoutError) as exc:
            return CodeVerdict(False, Status.INTERNAL_ERROR, "sandbox-error", detail=str(exc)[:300])
        if self.cache is not None and verdict.status is not Status.INTERNAL_ERROR:
            self.cache.put(key, verdict)
        return verdict

    def _cached(self, key: tuple[str, str, str]) -> CodeVerdict | None:
        hit = self.cache.get(key) if self.cache is not None else None
        return replace(hit, cached=True) if hit is not None else None

    def _known(
        self, problem: CodeProblem | Mapping[str, Any], code: str | bytes
    ) -> tuple[CodeProblem, str, tuple[str, str, str]] | CodeVerdict:
        """The verdict when no program needs to run (invalid input, a cached verdict), else what to run."""
        prepared = self.prepare(problem, code)
        if isinstance(prepared, CodeVerdict):
            return prepared
        return self._cached(prepared[2]) or prepared

    def grade(self, problem: CodeProblem | Mapping[str, Any], code: str | bytes) -> CodeVerdict:
        """Blocking; raises PoolBusy when the pool stays full for 30 s (back-pressure)."""
        known = self._known(problem, code)
        if isinstance(known, CodeVerdict):
            return known
        p, src, key = known
        budget = max(1, len(p.tests)) * (p.time_limit_s + 2 * self.pool.config.grace_s) + 300
        job = grade_job(p, src, self.stop_on_failure)
        return self._finish(key, lambda: self.pool.run(job, timeout_s=budget))

    async def agrade(self, problem: CodeProblem | Mapping[str, Any], code: str | bytes) -> CodeVerdict:
        known = self._known(problem, code)
        if isinstance(known, CodeVerdict):
            return known
        p, src, key = known
        try:
            verdict = await self.pool.arun(grade_job(p, src, self.stop_on_failure))
        except (SandboxError, TimeoutError) as exc:
            verdict = CodeVerdict(False, Status.INTERNAL_ERROR, "sandbox-error", detail=str(exc)[:300])
        return self._finish(key, lambda: verdict)

    def grade_many(
        self, items: list[tuple[CodeProblem | Mapping[str, Any], str | bytes]]
    ) -> list[CodeVerdict]:
        """Grade a batch on all workers at once (submits block while the queue is full)."""
        return asyncio.run(self._grade_many(items))

    async def _grade_many(
        self, items: list[tuple[CodeProblem | Mapping[str, Any], str | bytes]]
    ) -> list[CodeVerdict]:
        return list(await asyncio.gather(*(self.agrade(p, c) for p, c in items)))

    def calibrate(self, problem: CodeProblem, reference: str, factor: float = 3.0) -> CodeProblem:
        """The problem with its time limit scaled from a reference solution's slowest test."""
        started = time.monotonic()
        verdict = CodeGrader(self.pool, stop_on_failure=True).grade(
            replace(problem, time_limit_s=20.0), reference
        )
        if not verdict.correct:
            raise InvalidProblem(f"problem {problem.id}: the reference solution fails ({verdict.rule})")
        slowest = max((t.wall_s for t in verdict.tests), default=time.monotonic() - started)
        return replace(problem, time_limit_s=scaled_time_limit(slowest, factor))
