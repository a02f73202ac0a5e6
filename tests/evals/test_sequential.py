"""The always-valid confidence sequence: the closed form against the mixture likelihood ratio it
inverts, coverage over whole simulated paths looked at again and again (where a fixed-sample
interval fails), width, and the pass-rate regularisation at 0 and n passes."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from lifelong.evals.sequential import Arm, Difference, confidence_sequence

ALPHA = 0.05


def test_arm_keeps_the_sufficient_statistics_of_its_values() -> None:
    values = [0.2, 1.5, -0.3, 0.9, 0.9]
    arm = Arm.of(values)
    assert (arm.n, arm.total) == (5, pytest.approx(sum(values)))
    assert arm.total_sq == pytest.approx(sum(v * v for v in values))
    assert arm.mean == pytest.approx(np.mean(values))
    assert arm.variance == pytest.approx(np.var(values, ddof=1))
    assert Arm.of(values[:4]).add(values[4]) == arm
    assert Arm.bernoulli(3, 10) == Arm.of([1, 1, 1] + [0] * 7)


def test_arm_refuses_what_it_cannot_answer() -> None:
    with pytest.raises(ValueError, match="no observations"):
        _ = Arm().mean
    with pytest.raises(ValueError, match="two observations"):
        _ = Arm.of([1.0]).variance
    with pytest.raises(ValueError, match="passes"):
        Arm.bernoulli(11, 10)


def test_the_bound_is_where_the_normal_mixture_likelihood_ratio_reaches_one_over_alpha() -> None:
    """Integrate the likelihood ratio of "difference = d" over d's N(0, tau²) mixture numerically
    at the returned bounds: it must equal 1/alpha there (the closed form is the test's inversion)."""
    candidate, baseline = Arm.of([0.1, 0.5, 0.9, 0.4, 0.7] * 8), Arm.of([0.3, 0.2, 0.6, 0.1] * 10)
    tau = 0.1
    d = confidence_sequence(candidate, baseline, alpha=ALPHA, tau=tau, bernoulli=False)
    v = candidate.variance / candidate.n + baseline.variance / baseline.n
    theta = np.linspace(-12 * tau, 12 * tau, 200_001)
    prior = np.exp(-theta**2 / (2 * tau**2)) / math.sqrt(2 * math.pi * tau**2)
    for bound in (d.lower, d.upper):
        shift = d.estimate - bound  # the estimate seen from the null "difference = bound"
        ratio = np.exp((theta * shift - theta**2 / 2) / v)
        mixture = float(np.sum(ratio * prior) * (theta[1] - theta[0]))
        assert mixture == pytest.approx(1 / ALPHA, rel=1e-4)
    assert d.estimate == pytest.approx(candidate.mean - baseline.mean)
    assert d.lower < d.estimate < d.upper


def _paths(rng: np.random.Generator, *, share: float, n: int, draw) -> tuple[np.ndarray, ...]:
    """Cumulative (count, sum, sum of squares) per arm after each of n observations;
    draw(rng, to_candidate) gives the n values."""
    to_candidate = rng.random(n) < share
    values = draw(rng, to_candidate)
    out = []
    for mask in (to_candidate, ~to_candidate):
        out += [np.cumsum(mask), np.cumsum(values * mask), np.cumsum(values * values * mask)]
    return tuple(out)


def _misses(true: float, *, draw, bernoulli: bool, share: float, seeds: int, n: int,
            burn_in: int = 30, every: int = 10) -> tuple[float, float]:
    """Over `seeds` paths looked at every `every` observations once each arm has burn_in: the
    fraction where the sequence ever misses `true`, and the same for a fixed-sample z interval."""
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    sequence_missed = fixed_missed = 0
    for seed in range(seeds):
        nc, sc, qc, nb, sb, qb = _paths(np.random.default_rng(seed), share=share, n=n, draw=draw)
        seq = fixed = False
        for i in range(0, n, every):
            if min(nc[i], nb[i]) < burn_in:
                continue
            candidate = Arm(int(nc[i]), float(sc[i]), float(qc[i]))
            baseline = Arm(int(nb[i]), float(sb[i]), float(qb[i]))
            d = confidence_sequence(candidate, baseline, alpha=ALPHA, tau=0.1, bernoulli=bernoulli)
            seq = seq or not d.lower <= true <= d.upper
            half = z * math.sqrt(candidate.variance / candidate.n + baseline.variance / baseline.n)
            fixed = fixed or abs(d.estimate - true) > half
        sequence_missed += seq
        fixed_missed += fixed
    return sequence_missed / seeds, fixed_missed / seeds


def test_pass_rate_sequence_covers_the_true_difference_over_whole_paths() -> None:
    """0.65 vs 0.70, a fifth of the traffic to the candidate, looked at 300 times per path."""
    def draw(rng: np.random.Generator, to_candidate: np.ndarray) -> np.ndarray:
        return (rng.random(len(to_candidate)) < np.where(to_candidate, 0.65, 0.70)).astype(float)

    sequence, fixed = _misses(-0.05, draw=draw, bernoulli=True, share=0.2, seeds=200, n=3000)
    assert sequence <= ALPHA
    assert fixed > ALPHA  # the same looks at a fixed-sample interval: what the sequence prevents


def test_real_valued_sequence_covers_the_true_difference_with_unequal_spreads() -> None:
    """Gaussian rewards, sd 1 (candidate) vs 2, half the traffic each, true difference +0.3."""
    def draw(rng: np.random.Generator, to_candidate: np.ndarray) -> np.ndarray:
        return np.where(to_candidate, rng.normal(0.8, 1.0, len(to_candidate)),
                        rng.normal(0.5, 2.0, len(to_candidate)))

    sequence, fixed = _misses(0.3, draw=draw, bernoulli=False, share=0.5, seeds=200, n=3000)
    assert sequence <= ALPHA
    assert fixed > ALPHA


def test_the_interval_shrinks_as_outcomes_come_in() -> None:
    widths = []
    for n in (50, 500, 5000, 50_000):
        d = confidence_sequence(Arm.bernoulli(int(0.7 * n), n), Arm.bernoulli(int(0.7 * n), n),
                                alpha=ALPHA, tau=0.1, bernoulli=True)
        widths.append(d.upper - d.lower)
    ratios = [narrow / wide for wide, narrow in zip(widths, widths[1:], strict=False)]
    assert all(r < 0.5 for r in ratios)  # ten times the data: well under half the width
    # Once the standard error is below tau, about 1/sqrt(n) with a log factor: a little above
    # the 1/sqrt(10) a fixed-sample interval gains. (While it is above tau the width goes as
    # V / tau, so the first step gains more.)
    assert all(1 / math.sqrt(10) < r < 0.4 for r in ratios[1:])


@pytest.mark.parametrize("passes", [0, 40])
def test_all_fail_or_all_pass_arms_still_give_a_real_interval(passes: int) -> None:
    arm = Arm.bernoulli(passes, 40)
    d = confidence_sequence(arm, arm, alpha=ALPHA, tau=0.1, bernoulli=True)
    assert d.estimate == 0.0
    assert d.upper - d.lower > 0.05  # 40 outcomes cannot pin a difference to the point
    # Without the regularisation the same counts would claim certainty: zero width.
    raw = confidence_sequence(arm, arm, alpha=ALPHA, tau=0.1, bernoulli=False)
    assert raw.upper - raw.lower == 0.0


def test_three_lucky_passes_do_not_prove_a_difference() -> None:
    d = confidence_sequence(Arm.bernoulli(3, 3), Arm.bernoulli(0, 3), alpha=ALPHA, tau=0.1,
                            bernoulli=True)
    assert d.estimate == 1.0
    assert d.lower < 0 < d.upper


def test_a_smaller_alpha_gives_a_wider_interval() -> None:
    c, b = Arm.bernoulli(70, 100), Arm.bernoulli(60, 100)
    wide = confidence_sequence(c, b, alpha=0.01, tau=0.1, bernoulli=True)
    narrow = confidence_sequence(c, b, alpha=0.1, tau=0.1, bernoulli=True)
    assert wide.lower < narrow.lower and narrow.upper < wide.upper
    assert narrow == Difference(estimate=narrow.estimate, lower=narrow.lower, upper=narrow.upper,
                                n_candidate=100, n_baseline=100)


def test_bad_arguments_are_refused() -> None:
    arm = Arm.bernoulli(5, 10)
    with pytest.raises(ValueError, match="alpha"):
        confidence_sequence(arm, arm, alpha=1.0, tau=0.1, bernoulli=True)
    with pytest.raises(ValueError, match="tau"):
        confidence_sequence(arm, arm, alpha=ALPHA, tau=0.0, bernoulli=True)
    with pytest.raises(ValueError, match="outcomes"):
        confidence_sequence(arm, Arm(), alpha=ALPHA, tau=0.1, bernoulli=True)
    with pytest.raises(ValueError, match="two observations"):
        confidence_sequence(Arm.of([1.0]), Arm.of([1.0, 2.0]), alpha=ALPHA, tau=0.1, bernoulli=False)


def test_a_pass_rate_difference_never_reaches_past_plus_or_minus_one():
    # The demo's first canary: 13 of 22 against 0 of 43 gave an upper bound of +1.05 uncut.
    cut = confidence_sequence(Arm.bernoulli(13, 22), Arm.bernoulli(0, 43), alpha=0.05 / 3,
                              tau=0.1, bernoulli=True)
    assert 0 < cut.lower < cut.estimate < cut.upper == 1.0
    worst = confidence_sequence(Arm.bernoulli(0, 5), Arm.bernoulli(5, 5), alpha=0.05, tau=0.1,
                                bernoulli=True)
    assert worst.lower == -1.0 and worst.upper < 1.0
