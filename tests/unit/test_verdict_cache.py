"""The verdict cache shared by replicas and runs: real sandbox pools, a real local store.

A verdict judged by one `Checkers` (a replica) is read from the store by another without running
anything; what is not a final verdict (a sandbox failure) is never stored; a failing store never
fails a check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.verifier.checkers import SandboxUnavailable
from services.verifier.code_checks import CODE_CHECKER_VERSION
from services.verifier.math_checks import MATH_CHECKER_VERSION
from services.verifier.metrics import SandboxCollector
from services.verifier.verdict_cache import STORE_COOLDOWN_S, code_key, decode, encode
from shared.keys import verdict_cache_key
from shared.store import LocalStore, StoreUnavailable, validate_key
from shared.tasks import Verdict, load_problems
from tests.fixtures.verifier import Replica, cache_counts

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
SUM_TWO = next(p for p in load_problems(DATA / "apps-tiny-train.jsonl", "apps") if p["id"] == "sum-two")[
    "answer"
]
RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\nprint(int(input().split()[0]) * 2)\n```"
HALF = "\\frac{1}{2}"
# Both reach math-verify: neither is an exact or Hendrycks-normalised match of 1/2.
MATH_RIGHT, MATH_WRONG = "so $\\boxed{\\dfrac{2}{4}}$", "so $\\boxed{0.333}$"
FP, SHA = "ab" + "0" * 62, "c" * 64


def test_the_cache_key_is_content_addressed_under_checker_and_version() -> None:
    key = verdict_cache_key("code", "code-1", FP, SHA)
    assert key == f"cache/verdicts/code/code-1/ab/{FP}/{SHA}.json" == validate_key(key)
    assert verdict_cache_key("code", "code-2", FP, SHA) != key  # a version bump starts afresh
    for bad in (("code/..", "code-1", FP, SHA), ("code", "", FP, SHA), ("code", "code-1", FP.upper(), SHA),
                ("code", "code-1", FP, SHA[:40]), ("Code", "code-1", FP, SHA)):  # fmt: skip
        with pytest.raises(ValueError, match="invalid verdict cache"):
            verdict_cache_key(*bad)


def test_a_stored_verdict_reads_back_only_under_its_own_version() -> None:
    verdict = Verdict(True, "passed", "all-tests-passed", CODE_CHECKER_VERSION, "")
    key = code_key(FP, "print(1)")
    assert encode(verdict) == encode(Verdict(True, "passed", "all-tests-passed", CODE_CHECKER_VERSION))
    assert decode(encode(verdict), key) == verdict
    with pytest.raises(ValueError):
        decode(encode(Verdict(True, "passed", "all-tests-passed", "code-0")), key)
    with pytest.raises(ValueError):
        decode(b'{"correct": "yes"}', key)


async def test_a_second_replica_reads_code_and_math_verdicts_from_the_store_and_runs_nothing(
    tmp_path: Path, replica: Replica
) -> None:
    store = LocalStore(tmp_path / "store")
    first = replica(store)
    code = await first.check_many("apps", [(SUM_TWO, RIGHT), (SUM_TWO, WRONG)])
    math = await first.check_many("math", [(HALF, MATH_RIGHT), (HALF, MATH_WRONG), (HALF, "$\\boxed{1/2}$")])
    assert [v.correct for v in code] == [True, False] and [v.correct for v in math] == [True, False, True]
    assert (cache_counts(first, "code").checks_run, cache_counts(first, "math").checks_run) == (2, 2)
    assert len(store.list(f"cache/verdicts/code/{CODE_CHECKER_VERSION}/")) == 2
    # 1/2 is decided by the fast path (no sandbox): it is neither looked up nor stored.
    assert len(store.list(f"cache/verdicts/math/{MATH_CHECKER_VERSION}/")) == 2

    second = replica(store)
    assert await second.check_many("apps", [(SUM_TWO, RIGHT), (SUM_TWO, WRONG)]) == code
    assert await second.check_many("math", [(HALF, MATH_RIGHT), (HALF, MATH_WRONG)]) == math[:2]
    for checker in ("code", "math"):
        counts = cache_counts(second, checker)
        assert (counts.store_hits, counts.misses, counts.checks_run) == (2, 0, 0), checker
    assert "code" not in second.pool_health()  # no program to run: its code pool never started
    assert second.verdicts.totals().hits == 4
    scraped = {
        (s.name, tuple(sorted(s.labels.values()))): s.value
        for family in SandboxCollector(second).collect()
        for s in family.samples
    }
    assert scraped[("restem_verifier_cache_hits_total", ("math", "store"))] == 2
    assert scraped[("restem_verifier_cache_misses_total", ("code",))] == 0


async def test_the_same_completion_twice_in_a_shard_runs_once(tmp_path: Path, replica: Replica) -> None:
    checkers = replica(LocalStore(tmp_path / "store"))
    verdicts = await checkers.check_many("apps", [(SUM_TWO, RIGHT)] * 3 + [(SUM_TWO, WRONG)])
    assert [v.correct for v in verdicts] == [True, True, True, False]
    counts = cache_counts(checkers, "code")
    assert (counts.checks_run, counts.misses, counts.memory_hits) == (2, 2, 2)
    assert (await checkers.check_many("apps", [(SUM_TWO, RIGHT)]))[0].correct
    assert cache_counts(checkers, "code").checks_run == 2


async def test_a_sandbox_failure_is_never_cached(tmp_path: Path, replica: Replica) -> None:
    store = LocalStore(tmp_path / "store")
    broken = replica(store)
    await broken.start()
    broken.grader().pool.close()  # every program now ends in INTERNAL_ERROR
    with pytest.raises(SandboxUnavailable):
        await broken.check_many("apps", [(SUM_TWO, RIGHT)])
    broken.math_checker().pool.close()  # and every math-verify call in math-verify-error
    (failed,) = await broken.check_many("math", [(HALF, MATH_RIGHT)])
    assert failed.rule == "math-verify-error"
    assert store.list("cache/") == []

    healthy = replica(store)  # judges both for real: nothing was kept of the failures
    assert (await healthy.check_many("apps", [(SUM_TWO, RIGHT)]))[0].correct
    assert (await healthy.check_many("math", [(HALF, MATH_RIGHT)]))[0].correct
    assert (cache_counts(healthy, "code").checks_run, cache_counts(healthy, "math").checks_run) == (1, 1)
    # The failed math check was not remembered in memory either: the broken replica asks again.
    (again,) = await broken.check_many("math", [(HALF, MATH_RIGHT)])
    assert again.correct and cache_counts(broken, "math").store_hits == 1


class _Unreachable(LocalStore):
    """A store whose every read and write fails the way an S3 store does after its retries."""

    calls = 0

    def get_bytes(self, key: str) -> bytes:
        self.calls += 1
        raise StoreUnavailable(f"could not read {key!r} after 5 tries")

    def put_bytes(self, key: str, data: bytes) -> None:
        self.calls += 1
        raise StoreUnavailable(f"could not write {key!r} after 5 tries")


async def test_an_unreachable_store_does_not_fail_checks_and_is_left_alone_for_a_while(
    tmp_path: Path, replica: Replica
) -> None:
    store = _Unreachable(tmp_path / "store")
    checkers = replica(store)
    assert [v.correct for v in await checkers.check_many("apps", [(SUM_TWO, RIGHT)])] == [True]
    assert [v.correct for v in await checkers.check_many("apps", [(SUM_TWO, WRONG)])] == [False]
    counts = cache_counts(checkers, "code")
    assert (counts.store_errors, counts.checks_run) == (1, 2)
    assert store.calls == 1, f"the store is not asked again for {STORE_COOLDOWN_S} s after an error"


async def test_a_store_that_cannot_write_does_not_fail_the_check(tmp_path: Path, replica: Replica) -> None:
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "cache").write_text("a file where the cache's directory would go")
    checkers = replica(store)
    assert (await checkers.check_many("apps", [(SUM_TWO, RIGHT)]))[
        0
    ].correct  # the read missed, the write failed
    assert cache_counts(checkers, "code").store_errors == 1
    assert (await checkers.check_many("apps", [(SUM_TWO, RIGHT)]))[0].correct
    assert (cache_counts(checkers, "code").memory_hits, cache_counts(checkers, "code").checks_run) == (1, 1)
