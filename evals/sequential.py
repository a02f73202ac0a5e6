"""Always-valid confidence sequences for the difference of two means (candidate - baseline).

A canary is looked at every minute. A fixed-sample interval looked at that often misses the true
difference far more often than its nominal alpha (bench/canary_simulation.py measures it); a
confidence sequence is built to be looked at after every observation.

The bound is the normal-mixture sequential probability ratio test (mSPRT) of Johari, Pekelis &
Walsh, "Always valid inference: continuous monitoring of A/B tests" (2017; the form Optimizely
ships), inverted into an interval. With V the variance of the estimate (s1²/n1 + s2²/n2) and the
effect mixed over N(0, tau²), the mixture likelihood ratio of "difference = d" is
    sqrt(V / (V + tau²)) * exp(tau² (estimate - d)² / (2 V (V + tau²))),
and the interval holds every d where it stays below 1/alpha:
    estimate ± sqrt(V (V + tau²) / tau² * (2 ln(1/alpha) + ln((V + tau²) / V))).
In the sum scale (S = estimate / V, information I = 1/V) this is exactly the two-sided
normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences" (2021), with rho = 1/tau²: S² < (I + rho) ln((I + rho) / (rho alpha²)).

What it guarantees: for Gaussian observations of known variance, P(the true difference lies in
every interval of the sequence, at every n) >= 1 - alpha (Ville's inequality on the mixture
martingale), so stopping whenever an interval excludes a value, at any look, errs at most alpha.
What it does not:
- here V is the plug-in sample variance and the data are pass/fail or bounded rewards, so the
  guarantee is asymptotic (normal approximation; Bibaut, Kallus & Lindon 2024 show such a plug-in,
  delayed-start test reaches level alpha as the burn-in grows): callers wait for a minimum count
  per arm before acting (the canary policy's min_outcomes);
- it assumes independent observations from a fixed distribution per arm: a drift in traffic over
  the window moves the true difference it covers;
- tau only moves the width, never the validity: the sequence is narrowest near n where the
  standard error is about tau, so tau is set to the size of difference one wants to find.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Hand-written, not imported: confseq 0.0.11 (the reference implementation of Howard et al.) has
# no wheel on PyPI and its sdist failed to build here (CMake needs Boost headers; its run-time
# requirements add pandas, matplotlib and pytest), and savvi 0.3.1 needs cvxpy and pools one
# variance for both arms. The bound itself is the one line in `_radius`.


@dataclass(frozen=True, slots=True)
class Arm:
    """Sufficient statistics of one arm's observations: count, sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Arm:
        arm = cls()
        for value in values:
            arm = arm.add(value)
        return arm

    @classmethod
    def bernoulli(cls, passes: int, n: int) -> Arm:
        """An arm of n pass/fail outcomes, `passes` of them 1. Raises ValueError if not 0 <= passes <= n."""
        if not 0 <= passes <= n:
            raise ValueError(f"passes must lie in [0, n], got {passes} of {n}")
        return cls(n=n, total=float(passes), total_sq=float(passes))

    def add(self, value: float) -> Arm:
        return Arm(n=self.n + 1, total=self.total + value, total_sq=self.total_sq + value * value)

    @property
    def mean(self) -> float:
        """Raises ValueError on an empty arm."""
        if self.n == 0:
            raise ValueError("no observations")
        return self.total / self.n

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 denominator). Raises ValueError below two observations."""
        if self.n < 2:
            raise ValueError(f"a variance needs two observations, got {self.n}")
        # Clamped: total_sq - n * mean² can come out a hair below zero in floating point.
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True, slots=True)
class Difference:
    """candidate mean - baseline mean, with its always-valid interval [lower, upper]."""

    estimate: float
    lower: float
    upper: float
    n_candidate: int
    n_baseline: int


def _bernoulli_variance(arm: Arm) -> float:
    # Half a pass and half a fail added: at 0 or n passes the plug-in p(1 - p) is 0, which would
    # make the interval a point after a handful of outcomes and let three lucky passes "prove" a
    # difference. The shrunk rate keeps the variance >= about 1/(2(n + 1)) and fades as n grows.
    rate = (arm.total + 0.5) / (arm.n + 1)
    return rate * (1.0 - rate)


def _radius(v: float, *, alpha: float, tau: float) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate of variance v."""
    if v == 0.0:
        return 0.0  # the limit of the formula: v * ln(1/v) -> 0
    t2 = tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))


def confidence_sequence(candidate: Arm, baseline: Arm, *, alpha: float, tau: float,
                        bernoulli: bool) -> Difference:
    """The always-valid (1 - alpha) interval for candidate mean - baseline mean at this look.

    `bernoulli`: the values are 1/0 outcomes; their variance is regularised (see
    `_bernoulli_variance`), so no arm gives a zero-width interval. Otherwise the sample variance
    is used as is: real-valued arms with no spread at all give a zero-width interval.
    Raises ValueError if alpha is not in (0, 1), tau <= 0, or an arm is empty (under two
    observations when not `bernoulli`).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if tau <= 0.0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if bernoulli:
        if candidate.n == 0 or baseline.n == 0:
            raise ValueError(f"both arms need outcomes, got {candidate.n} and {baseline.n}")
        v = _bernoulli_variance(candidate) / candidate.n + _bernoulli_variance(baseline) / baseline.n
    else:
        v = candidate.variance / candidate.n + baseline.variance / baseline.n
    estimate = candidate.mean - baseline.mean
    radius = _radius(v, alpha=alpha, tau=tau)
    lower, upper = estimate - radius, estimate + radius
    if bernoulli:  # two pass rates differ by at most 1: cutting the rest loses no coverage
        lower, upper = max(lower, -1.0), min(upper, 1.0)
    return Difference(estimate=estimate, lower=lower, upper=upper,
                      n_candidate=candidate.n, n_baseline=baseline.n)
