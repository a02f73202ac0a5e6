"""Paired statistics against reference values: scipy's binomtest (values copied below, scipy is
not a dependency), exhaustive enumeration on small cases, and Holm's worked example."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lifelong.evals.statistics import (
    holm,
    mcnemar_exact,
    mean_interval,
    min_detectable_difference,
    paired_bootstrap,
)


def pairs(candidate_only: int, champion_only: int, both: int = 0, neither: int = 0):
    """Paired pass/fail lists with the given cell counts."""
    cand = [True] * candidate_only + [False] * champion_only + [True] * both + [False] * neither
    champ = [False] * candidate_only + [True] * champion_only + [True] * both + [False] * neither
    return cand, champ


# scipy.stats.binomtest(b, b + c, 0.5): two-sided, greater, less (scipy 1.x, computed once).
SCIPY = [
    (9, 1, 0.021484375, 0.0107421875, 0.9990234375),
    (12, 3, 0.03515625, 0.017578125, 0.996307373046875),
    (5, 0, 0.0625, 0.03125, 1.0),
    (4, 0, 0.125, 0.0625, 1.0),
    (30, 18, 0.11140289106101878, 0.05570144553050939, 0.9702683123731148),
]


@pytest.mark.parametrize(("b", "c", "two_sided", "greater", "less"), SCIPY)
def test_mcnemar_exact_matches_the_binomial_test(b, c, two_sided, greater, less):
    cand, champ = pairs(b, c, both=7, neither=5)  # concordant pairs carry no information
    assert mcnemar_exact(cand, champ).p_value == pytest.approx(two_sided, rel=1e-12)
    assert mcnemar_exact(cand, champ, alternative="greater").p_value == pytest.approx(greater)
    assert mcnemar_exact(cand, champ, alternative="less").p_value == pytest.approx(less)


def test_mcnemar_reports_counts_and_difference():
    cand, champ = pairs(12, 3, both=80, neither=5)
    result = mcnemar_exact(cand, champ, alternative="greater")
    assert (result.n, result.candidate_only, result.champion_only) == (100, 12, 3)
    assert result.difference == pytest.approx(0.09)


def test_mcnemar_with_no_discordant_pairs_finds_nothing():
    cand, champ = pairs(0, 0, both=50, neither=50)
    assert mcnemar_exact(cand, champ, alternative="greater").p_value == 1.0
    assert mcnemar_exact(cand, champ).p_value == 1.0


def test_mcnemar_one_sided_p_is_the_enumerated_tail():
    # Brute force: every assignment of 8 discordant pairs, equally likely under the null.
    for b in range(9):
        tail = sum(1 for bits in itertools.product([0, 1], repeat=8) if sum(bits) >= b) / 2**8
        cand, champ = pairs(b, 8 - b)
        assert mcnemar_exact(cand, champ, alternative="greater").p_value == pytest.approx(tail)


def test_mcnemar_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_bootstrap_finds_a_clear_improvement_and_is_seeded():
    rng = np.random.default_rng(1)
    champion = rng.uniform(0, 0.8, 200)
    candidate = np.clip(champion + 0.1 + rng.normal(0, 0.05, 200), 0, 1)
    first = paired_bootstrap(candidate, champion, alternative="greater", seed=3)
    again = paired_bootstrap(candidate, champion, alternative="greater", seed=3)
    assert first == again
    assert first.p_value == pytest.approx(1 / 10_001)  # not one resample as extreme
    assert first.difference == pytest.approx(float(np.mean(candidate - champion)))


def test_bootstrap_on_noise_is_not_significant():
    rng = np.random.default_rng(2)
    champion = rng.uniform(0, 1, 100)
    candidate = champion + rng.normal(0, 0.1, 100)
    result = paired_bootstrap(candidate, champion, alternative="two-sided", seed=0)
    assert result.p_value > 0.05


def test_bootstrap_p_value_agrees_with_the_normal_theory_t_test_on_large_samples():
    rng = np.random.default_rng(5)
    diffs = rng.normal(0.02, 0.2, 2000)
    champion = rng.uniform(0.2, 0.8, 2000)
    result = paired_bootstrap(champion + diffs, champion, alternative="greater", seed=0)
    z = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(len(diffs)))
    assert result.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), abs=0.01)


def test_holm_matches_the_worked_example():
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> kept monotone at 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def exact_power(n: int, discordant: float, difference: float, alpha: float) -> float:
    """Power of the one-sided exact McNemar test, by enumerating every (discordant, wins) count."""
    p_win = (discordant + difference) / (2 * discordant)
    power = 0.0
    for k in range(n + 1):
        p_k = math.comb(n, k) * discordant**k * (1 - discordant) ** (n - k)
        if p_k < 1e-12:
            continue
        for b in range(k + 1):
            cand, champ = pairs(b, k - b)
            if mcnemar_exact(cand, champ, alternative="greater").p_value <= alpha:
                power += p_k * math.comb(k, b) * p_win**b * (1 - p_win) ** (k - b)
    return power


def test_min_detectable_difference_gives_about_the_asked_power():
    n, discordant, alpha = 300, 0.3, 0.05
    mdd = min_detectable_difference(n, alpha=alpha, power=0.8, sd=math.sqrt(discordant), binary=True)
    assert 0.75 <= exact_power(n, discordant, mdd, alpha) <= 0.9
    assert exact_power(n, discordant, mdd / 2, alpha) < 0.4


def test_three_points_need_about_a_thousand_items():
    # About 1,000 paired items to detect 3 points, for a typical discordant rate of 15%.
    sd = math.sqrt(0.15)
    assert min_detectable_difference(1000, alpha=0.05, sd=sd, binary=True) == pytest.approx(0.03, abs=0.002)
    assert min_detectable_difference(100, alpha=0.05, sd=sd, binary=True) > 0.09


def test_min_detectable_difference_never_below_what_mcnemar_can_reach():
    # 5 candidate-only passes are needed at alpha 0.05 (0.5**5 < 0.05 < 0.5**4).
    assert min_detectable_difference(20, alpha=0.05, sd=0.0, binary=True) == pytest.approx(5 / 20)
    assert min_detectable_difference(0, alpha=0.05, sd=0.3, binary=True) == math.inf


def test_mean_interval_is_wilson_for_pass_fail():
    mean, low, high = mean_interval([1] * 8 + [0] * 2)
    assert mean == 0.8
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson, z = 1.96
    assert mean_interval([1, 1, 1])[2] == 1.0
