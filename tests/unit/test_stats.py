"""The intervals and the paired test against cases computed by hand or published."""

import math

import pytest

from shared.stats import PairedTable, compare_paired, mcnemar_exact, paired_interval, wilson

Z2 = 1.959963984540054**2  # 3.841459


def test_wilson_for_7_of_10_matches_the_hand_computation():
    # centre (0.7 + z^2/20) / (1 + z^2/10) = 0.89207 / 1.38415 = 0.64449
    # half-width z * sqrt(0.7 * 0.3 / 10 + z^2/400) / 1.38415 = 1.95996 * 0.17494 / 1.38415 = 0.24772
    assert wilson(0.7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)


def test_wilson_at_0_and_n_of_n_is_one_sided_and_never_a_point():
    # 0 of 64: the lower bound is 0 and the upper (z^2/n) / (1 + z^2/n) = 0.060023 / 1.060023 = 0.056624
    lo, hi = wilson(0.0, 64)
    assert (
        lo == 0.0
        and hi == pytest.approx((Z2 / 64) / (1 + Z2 / 64))
        and hi == pytest.approx(0.056624, abs=1e-6)
    )
    # 64 of 64 mirrors it
    assert wilson(1.0, 64) == pytest.approx((1 - hi, 1.0))


def test_a_wilson_interval_shrinks_like_one_over_root_n():
    widths = [wilson(0.5, n)[1] - wilson(0.5, n)[0] for n in (64, 256)]
    # 32 of 64: 2 * z * sqrt(0.25/64 + z^2/(4 * 64^2)) / (1 + z^2/64) = 2 * 1.959964 * 0.064348 / 1.060023
    assert widths[0] == pytest.approx(0.23796, abs=1e-5)  # the "about +-12 points at 64 problems"
    assert widths[1] / widths[0] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(("rate", "n"), [(0.5, 0), (1.2, 10), (-0.1, 10)])
def test_wilson_refuses_what_is_not_a_rate_over_problems(rate: float, n: int):
    with pytest.raises(ValueError):
        wilson(rate, n)


def test_exact_mcnemar_on_a_9_to_1_split():
    # 10 discordant problems, 9 won by a: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(9, 1) == pytest.approx(0.021484375, rel=1e-12)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    # 5 to 0 is the smallest p five discordant problems can give, and it is not below 0.05
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0


def test_exact_mcnemar_stays_exact_beyond_float_range():
    # 2^2000 overflows a float; a split of 1000 vs 1000 is as even as it gets
    assert mcnemar_exact(1000, 1000) == 1.0
    assert 0 < mcnemar_exact(1100, 900) < 1e-4


def test_newcombe_paired_interval_matches_the_published_example():
    # Fagerland, Lydersen and Laake, "Statistical Analysis of Contingency Tables" (2017), chapter 8:
    # complete response before and after consolidation therapy (Cavo et al. 2012), 59 both, 6 before
    # only, 16 after only, 80 neither: difference -0.0621, Newcombe square-and-add -0.1186 to -0.0046
    t = PairedTable(both=59, only_a=6, only_b=16, neither=80)
    assert t.difference == pytest.approx(-10 / 161)
    assert paired_interval(t) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


def test_a_constructed_pair_of_checkpoints():
    # 20 problems: both solve 0-5, only a solves 6-14 (9), only b solves 15 (1), neither 16-19
    a = {f"p{i}": i < 15 for i in range(20)}
    b = {f"p{i}": i < 6 or i == 15 for i in range(20)}
    c = compare_paired(a, b)
    assert c.table == PairedTable(both=6, only_a=9, only_b=1, neither=4)
    assert c.p_value == pytest.approx(22 / 1024) and c.distinguishable
    assert c.table.difference == pytest.approx(0.4)
    lo, hi = c.interval
    assert 0 < lo < 0.4 < hi <= 1


def test_pairing_uses_only_the_problems_both_checkpoints_have():
    c = compare_paired({"x": True, "y": False, "z": True}, {"x": False, "y": False, "w": True})
    assert c.table.n == 2 and (c.table.only_a, c.table.neither) == (1, 1)
    with pytest.raises(ValueError, match="share no problem"):
        compare_paired({"x": True}, {"y": True})


def test_identical_checkpoints_are_not_distinguishable_and_their_difference_interval_holds_zero():
    same = {f"p{i}": i % 3 == 0 for i in range(30)}
    c = compare_paired(same, same)
    assert c.p_value == 1.0 and not c.distinguishable
    lo, hi = c.interval
    assert lo < 0 < hi and math.isclose(lo, -hi)
