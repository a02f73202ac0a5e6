"""Paired statistics for the gate: exact McNemar, paired bootstrap, Holm, detectable differences.

Candidate and champion answer the same items, so every test here is paired: it looks at the
per-item differences, which removes the item-to-item variance that dwarfs a few points of skill.

- `mcnemar_exact`: pass/fail items. Only discordant pairs carry information; under "no
  difference" the candidate wins each of them with probability 1/2, so the count it wins is
  Binomial(b + c, 1/2) and its tail is the exact p-value.
- `paired_bootstrap`: continuous scores in [0, 1]; resamples items (seeded), p-value from the
  null-centred resampled mean differences.
- `holm`: step-down adjusted p-values across suites (controls the family-wise error rate).
- `min_detectable_difference`: the smallest true difference a one-sided test on n paired items
  would detect with the given power; the gate reports it so a small suite says what it cannot see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]
_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class PairedTest:
    """One paired comparison. `difference` is mean(candidate) - mean(champion) over the n items."""

    test: Literal["mcnemar_exact", "paired_bootstrap"]
    alternative: Alternative
    n: int
    difference: float
    p_value: float
    # McNemar: the discordant counts (candidate-only passes, champion-only passes); else None.
    candidate_only: int | None = None
    champion_only: int | None = None


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (math.comb: integers, no scipy needed)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(
    candidate: Sequence[bool], champion: Sequence[bool], *, alternative: Alternative = "two-sided"
) -> PairedTest:
    """Exact McNemar test on paired pass/fail results.

    "greater": H1 is that the candidate passes more often. Raises ValueError if the lengths differ.
    """
    if len(candidate) != len(champion):
        raise ValueError(f"paired results differ in length: {len(candidate)} vs {len(champion)}")
    b = sum(1 for x, y in zip(candidate, champion, strict=True) if x and not y)
    c = sum(1 for x, y in zip(candidate, champion, strict=True) if y and not x)
    n_discordant = b + c
    upper = 1.0 - _binomial_half_cdf(b - 1, n_discordant)  # P(X >= b)
    lower = _binomial_half_cdf(b, n_discordant)  # P(X <= b)
    if alternative == "greater":
        p = upper
    elif alternative == "less":
        p = lower
    else:
        p = min(1.0, 2.0 * min(upper, lower))
    n = len(candidate)
    return PairedTest(
        test="mcnemar_exact", alternative=alternative, n=n,
        difference=(b - c) / n if n else 0.0, p_value=p, candidate_only=b, champion_only=c,
    )


def paired_bootstrap(
    candidate: Sequence[float],
    champion: Sequence[float],
    *,
    alternative: Alternative = "two-sided",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap test on continuous per-item scores (same seed, same p-value).

    The resampled mean differences are centred on zero (the null) and compared with the observed
    one; the +1s keep the p-value away from an impossible 0. Raises ValueError on unequal lengths
    or no items.
    """
    if len(candidate) != len(champion):
        raise ValueError(f"paired results differ in length: {len(candidate)} vs {len(champion)}")
    if len(candidate) == 0:
        raise ValueError("no items to compare")
    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(champion, dtype=np.float64)
    observed = float(diffs.mean())
    rng = np.random.default_rng(seed)
    n = len(diffs)
    means = np.empty(n_resamples)
    # Resample in chunks: n_resamples x n indices at once would be hundreds of MB for big suites.
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    centred = means - observed
    if alternative == "greater":
        extreme = int(np.count_nonzero(centred >= observed))
    elif alternative == "less":
        extreme = int(np.count_nonzero(centred <= observed))
    else:
        extreme = int(np.count_nonzero(np.abs(centred) >= abs(observed)))
    # An all-equal sample has no spread: no evidence of any difference.
    p = 1.0 if observed == 0.0 else (1 + extreme) / (1 + n_resamples)
    return PairedTest(
        test="paired_bootstrap", alternative=alternative, n=n, difference=observed, p_value=p
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input's order (reject where adjusted <= alpha)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        # Monotone: an adjusted p-value is never below that of a smaller raw p-value.
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def min_detectable_difference(
    n: int, *, alpha: float, power: float = 0.8, sd: float, binary: bool
) -> float:
    """The smallest true mean difference a one-sided paired test at `alpha` detects with `power`.

    Normal approximation (z_{1-alpha} + z_{power}) * sd / sqrt(n), with `sd` the standard
    deviation of per-item differences (pass/fail: sqrt of the discordant rate). For pass/fail
    items it is never below what the exact McNemar test can reach at all: with no champion-only
    passes it needs ceil(log2(1/alpha)) candidate-only ones. Returns inf when n is 0.
    """
    if n <= 0:
        return math.inf
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha}, {power}")
    z = _NORMAL.inv_cdf(1 - alpha) + _NORMAL.inv_cdf(power)
    approx = z * sd / math.sqrt(n)
    if binary:
        return min(1.0, max(approx, math.ceil(math.log2(1 / alpha)) / n))
    return approx


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Wilson's interval for 0/1 values (sane at 0% and 100%), else normal.

    Raises ValueError on no values.
    """
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = sum(values) / n
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    if all(v in (0, 1) for v in values):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return mean, max(0.0, centre - half), min(1.0, centre + half)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half
