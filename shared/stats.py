"""Confidence intervals and paired tests for accuracies over a set of problems (pure, deterministic).

A held-out accuracy is a share of n problems: at n = 64 one problem moves it 1.6 points and its
95 % interval spans about ±12 points, so every rate restem shows carries an interval, and two
checkpoints evaluated on the same problems are compared with a paired test, not by eye.

- `wilson`: the Wilson score interval (Wilson 1927). Chosen over the normal (Wald) interval, which
  collapses to a point at 0 % and 100 % and covers too little at small n, and over a bootstrap over
  problems, which needs random draws and is a point at 0/n and n/n as well. It is exact in its
  assumptions for per-problem 0/1 outcomes (greedy pass@1, maj@k, pass@k with k = samples); for a
  mean of per-problem values in [0, 1] (pass@k with k < samples, the unbiased estimator) it is
  conservative: such a value with mean p has a variance of at most p(1 - p).
- `mcnemar_exact`: two checkpoints on the same problems differ only on the discordant problems
  (solved by one, not the other). Under "no difference" each discordant problem goes either way
  with probability 1/2, so the p-value is the two-sided binomial tail (the exact McNemar test).
  No normal approximation: at a handful of discordant problems it would be badly off.
- `paired_interval`: Newcombe's square-and-add interval for the difference of two paired
  proportions (Newcombe 1998, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", method 10): the two Wilson intervals combined with the
  correlation of the paired outcomes. Closed form, hence deterministic, unlike a paired bootstrap,
  and it keeps its coverage at small n where the Wald interval for the difference does not.

The verdict (`PairedComparison.distinguishable`) is the test's at `ALPHA`; the interval says how
large the difference may be. Not here: corrections for many comparisons (a report tests a few
planned pairs), and intervals for numbers that are not rates over sampled problems.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

Z_95 = 1.959963984540054  # the 97.5 % quantile of the standard normal: two-sided 95 %
ALPHA = 0.05  # two-sided level of the paired test, matching the 95 % intervals


def wilson(rate: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a rate observed over `n` problems (95 % by default)."""
    if n < 1:
        raise ValueError(f"an interval needs at least one problem, got n={n}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a rate lies in [0, 1], got {rate}")
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (rate + z2 / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1.0 - rate) / n + z2 / (4 * n * n)) / denominator
    # clamped: at 0/n and n/n the bound is exactly 0 or 1, but float rounding can step past it
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedTable:
    """Two checkpoints' outcomes on the same problems, counted by agreement."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def difference(self) -> float:
        """Accuracy of a minus accuracy of b: only the discordant problems count."""
        return (self.only_a - self.only_b) / self.n

    @classmethod
    def of(cls, a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedTable:
        """The table over the problems both `a` and `b` have a result for (problem id -> correct)."""
        common = a.keys() & b.keys()
        if not common:
            raise ValueError("the two checkpoints share no problem: nothing to pair")
        cells = [(bool(a[p]), bool(b[p])) for p in common]
        return cls(
            both=cells.count((True, True)),
            only_a=cells.count((True, False)),
            only_b=cells.count((False, True)),
            neither=cells.count((False, False)),
        )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    m = only_a + only_b
    if m == 0:
        return 1.0  # the checkpoints agree on every problem: no evidence of a difference
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1))
    # in exact integers: 2**m overflows a float past ~1000 discordant problems
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def _phi(t: PairedTable) -> float:
    """Newcombe's estimate of the correlation of the paired outcomes, shrunk towards 0 by n/2 when
    positive (his continuity adjustment), and 0 when a margin is empty."""
    margins = (t.both + t.only_a, t.only_b + t.neither, t.both + t.only_b, t.only_a + t.neither)
    if 0 in margins:
        return 0.0
    cross = t.both * t.neither - t.only_a * t.only_b
    shrunk = cross - t.n / 2 if cross > t.n / 2 else min(cross, 0)
    return shrunk / math.sqrt(math.prod(margins))


def paired_interval(t: PairedTable, z: float = Z_95) -> tuple[float, float]:
    """Newcombe's square-and-add interval for accuracy(a) - accuracy(b) on paired outcomes."""
    p1, p2 = (t.both + t.only_a) / t.n, (t.both + t.only_b) / t.n
    l1, u1 = wilson(p1, t.n, z)
    l2, u2 = wilson(p2, t.n, z)
    phi = _phi(t)
    below = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
    above = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
    d = p1 - p2
    return max(-1.0, d - math.sqrt(max(below, 0.0))), min(1.0, d + math.sqrt(max(above, 0.0)))


@dataclass(frozen=True)
class PairedComparison:
    """Checkpoint a against checkpoint b on the same problems."""

    table: PairedTable
    p_value: float
    interval: tuple[float, float]

    @property
    def distinguishable(self) -> bool:
        return self.p_value < ALPHA


def compare_paired(a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedComparison:
    """The exact McNemar test and Newcombe's interval of a - b over their common problems."""
    t = PairedTable.of(a, b)
    return PairedComparison(t, mcnemar_exact(t.only_a, t.only_b), paired_interval(t))


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def describe(c: PairedComparison, a: str, b: str) -> str:
    """A paired comparison in words: the difference, its interval, the discordant problems, the p-value."""
    t, (lo, hi) = c.table, c.interval
    return (
        f"difference {100 * t.difference:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] over {t.n} problems "
        f"({t.only_a} solved only by {a}, {t.only_b} only by {b}), exact McNemar {p_text(c.p_value)}"
    )
