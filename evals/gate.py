"""The promotion gate: from candidate-vs-champion comparisons to approved, rejected or not enough
evidence, with every test's numbers in the reasons; its thresholds are a `GatePolicy`
(`gate_policy.py`).

For each suite the paired test is exact McNemar when every score is pass/fail, else the paired
bootstrap on scores (`statistics.py`). The rules, in order:

1. Hard checks (any failure rejects): no empty candidate answer (if required), the
   candidate's format rate (non-empty answers the model ended itself) not below the champion's,
   and every suite with a floor (`floors`) scoring at or above it. A floor is absolute, where a
   tolerance is relative to the champion: the general suite (evals/general.py) measures how
   alike answers stay to the base model's, which the first candidate already lowers by half
   while answering just as well (measured on SmolLM2), so a floor against the base, not a
   tolerance against a moving champion, is what keeps every generation recognisably itself.
2. Regression, every suite: a drop larger than the suite's tolerance that a one-sided paired test
   finds significant at `alpha` rejects, naming the suite. A drop beyond tolerance that is not
   significant cannot be ruled harmless: not enough evidence. (No Holm here: correcting would make
   harm harder to see; erring is a false rejection, the safe side.)
3. Improvement, target suites: a suite improves when its difference is at least
   `min_improvement` and its one-sided p-value, Holm-adjusted across the target suites, is at most
   `alpha`. A suite of at least `min_items` items approves at `alpha`; a smaller one only at
   `small_suite_alpha` (0.001 by default): a small held-out suite (a user's first 18 corrected
   questions) that shows a large gain beyond doubt is not thrown away, while the chance that a
   candidate no better than the champion is approved on such a suite stays below
   `small_suite_alpha` (the exact McNemar test's size; it needs at least 10 discordant items,
   0.5^10 < 0.001). A small suite that is not that significant, or a large one whose gain is big
   enough but not yet significant, says "not enough evidence" instead of guessing: the candidate
   stays a candidate and can be judged again on more held-out data. No target suite improving
   (nor able to) rejects.

Each suite's check reports n, both means, the difference, p-values and the smallest difference the
test could detect at `alpha` with `power` (so a small suite says what it cannot see).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lifelong.evals.gate_policy import GatePolicy
from lifelong.evals.runner import Comparison
from lifelong.evals.statistics import (
    PairedTest,
    holm,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap,
)

Status = Literal["approved", "rejected", "not_enough_evidence"]
Outcome = Literal["improved", "not_improved", "too_few_items", "unclear_gain",
                  "held", "regressed", "unclear_drop"]


@dataclass(frozen=True, slots=True)
class SuiteCheck:
    suite: str
    kind: str
    outcome: Outcome
    test: str  # "mcnemar_exact" or "paired_bootstrap"
    n: int
    candidate_mean: float
    champion_mean: float
    difference: float  # candidate - champion
    p_improvement: float | None  # one-sided, candidate better (target suites only)
    p_improvement_adjusted: float | None  # Holm-adjusted across target suites
    p_regression: float  # one-sided, candidate worse
    min_detectable_difference: float
    tolerance: float


@dataclass(frozen=True, slots=True)
class HardCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    reasons: tuple[str, ...]  # one line per finding, the deciding ones first
    suites: tuple[SuiteCheck, ...]
    hard_checks: tuple[HardCheck, ...]
    policy: GatePolicy

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, for the eval run's row and the registry."""
        data = asdict(self)
        data["policy"]["tolerances"] = dict(self.policy.tolerances)
        data["policy"]["floors"] = dict(self.policy.floors)
        return data


def _tests(comparison: Comparison, policy: GatePolicy) -> tuple[PairedTest, PairedTest, float]:
    """(improvement test, regression test, smallest detectable difference) for one suite."""
    cand, champ = comparison.candidate.results, comparison.champion.results
    if [r.item_id for r in cand] != [r.item_id for r in champ]:
        raise ValueError(f"suite {comparison.suite.name}: candidate and champion answered different items")
    n = len(cand)
    if all(r.score in (0.0, 1.0) for r in (*cand, *champ)):
        a, b = [r.passed for r in cand], [r.passed for r in champ]
        up, down = mcnemar_exact(a, b, alternative="greater"), mcnemar_exact(a, b, alternative="less")
        assert up.candidate_only is not None and up.champion_only is not None
        sd = math.sqrt((up.candidate_only + up.champion_only) / n) if n else 0.0
        mdd = min_detectable_difference(n, alpha=policy.alpha, power=policy.power, sd=sd, binary=True)
        return up, down, mdd
    x, y = [r.score for r in cand], [r.score for r in champ]
    resamples, seed = policy.bootstrap_resamples, policy.seed
    up = paired_bootstrap(x, y, alternative="greater", n_resamples=resamples, seed=seed)
    down = paired_bootstrap(x, y, alternative="less", n_resamples=resamples, seed=seed)
    diffs = [p - q for p, q in zip(x, y, strict=True)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    mdd = min_detectable_difference(n, alpha=policy.alpha, power=policy.power, sd=sd, binary=False)
    return up, down, mdd


def _hard_checks(comparisons: Sequence[Comparison], policy: GatePolicy) -> list[HardCheck]:
    checks = []
    if policy.require_nonempty:
        empty = {c.suite.name: c.candidate.summary.empty_answers for c in comparisons
                 if c.candidate.summary.empty_answers}
        detail = ", ".join(f"{name}: {count}" for name, count in empty.items()) or "none"
        checks.append(HardCheck("every answer non-empty", not empty, f"empty answers: {detail}"))
    if policy.format_rate_not_lower:
        def rate(side: str) -> tuple[int, int]:
            results = [r for c in comparisons for r in getattr(c, side).results]
            return sum(r.format_ok for r in results), len(results)
        (cand_ok, n), (champ_ok, _) = rate("candidate"), rate("champion")
        checks.append(HardCheck(
            "format rate not lower", cand_ok >= champ_ok,
            f"candidate {cand_ok}/{n} well-formed answers, champion {champ_ok}/{n}"))
    for comparison in comparisons:
        floor = policy.floors.get(comparison.suite.name)
        if floor is not None:
            mean = comparison.candidate.summary.mean
            checks.append(HardCheck(
                f"{comparison.suite.name} at or above its floor", mean >= floor,
                f"candidate mean {mean:.3f}, floor {floor:g} (champion "
                f"{comparison.champion.summary.mean:.3f})"))
    return checks


def _line(check: SuiteCheck, alpha: float) -> str:
    p = (f"p(better)={check.p_improvement:.4g}, Holm {check.p_improvement_adjusted:.4g}; "
         if check.p_improvement is not None else "")
    return (f"{check.suite} ({check.kind}): {check.outcome.replace('_', ' ')}: "
            f"{check.difference:+.3f} (candidate {check.candidate_mean:.3f} vs champion "
            f"{check.champion_mean:.3f}, n={check.n}, {check.test}; {p}p(worse)={check.p_regression:.4g}; "
            f"alpha {alpha:g}; tolerance {check.tolerance:g}; smallest detectable difference "
            f"{check.min_detectable_difference:.3f})")


def decide(comparisons: Sequence[Comparison], policy: GatePolicy) -> Decision:
    """The gate's decision on a candidate from its comparisons with the champion.

    Raises ValueError when a comparison's two runs answered different items.
    """
    tested = [(c, *_tests(c, policy)) for c in comparisons]
    targets = [i for i, (c, *_) in enumerate(tested) if c.suite.kind == "target"]
    raw = [tested[i][1].p_value for i in targets]
    adjusted = dict(zip(targets, holm(raw) if policy.holm else raw, strict=True))
    checks = []
    for i, (c, up, down, mdd) in enumerate(tested):
        tolerance = policy.tolerance_for(c.suite.name)
        diff = up.difference
        significant_drop = down.p_value <= policy.alpha
        if diff < -tolerance:
            outcome: Outcome = "regressed" if significant_drop else "unclear_drop"
        elif i not in adjusted:
            outcome = "held"
        elif diff >= policy.min_improvement and adjusted[i] <= _alpha_for(up.n, policy):
            outcome = "improved"
        elif up.n < policy.min_items:
            outcome = "too_few_items"
        elif diff >= policy.min_improvement:
            outcome = "unclear_gain"
        else:
            outcome = "not_improved"
        checks.append(SuiteCheck(
            suite=c.suite.name, kind=c.suite.kind, outcome=outcome, test=up.test, n=up.n,
            candidate_mean=c.candidate.summary.mean, champion_mean=c.champion.summary.mean,
            difference=diff, p_improvement=up.p_value if i in adjusted else None,
            p_improvement_adjusted=adjusted.get(i), p_regression=down.p_value,
            min_detectable_difference=mdd, tolerance=tolerance,
        ))
    hard = _hard_checks(comparisons, policy)
    status, headline = _status(checks, hard, policy)
    reasons = [headline] + [f"hard check {h.name}: {'ok' if h.passed else 'FAILED'} ({h.detail})"
                            for h in hard] + [_line(check, policy.alpha) for check in checks]
    return Decision(status=status, reasons=tuple(reasons), suites=tuple(checks),
                    hard_checks=tuple(hard), policy=policy)


def _alpha_for(n: int, policy: GatePolicy) -> float:
    """The significance level a target suite of `n` items must reach to approve."""
    return policy.alpha if n >= policy.min_items else min(policy.alpha, policy.small_suite_alpha)


def _status(checks: list[SuiteCheck], hard: list[HardCheck], policy: GatePolicy) -> tuple[Status, str]:
    def names(*outcomes: str) -> list[str]:
        return [c.suite for c in checks if c.outcome in outcomes]

    if failed := [h.name for h in hard if not h.passed]:
        return "rejected", f"rejected: hard check failed: {', '.join(failed)}"
    if regressed := names("regressed"):
        return "rejected", f"rejected: regressed beyond tolerance in {', '.join(regressed)}"
    if not any(c.kind == "target" for c in checks):
        return "not_enough_evidence", "not enough evidence: no target suite to improve on"
    if unclear := names("unclear_drop"):
        return "not_enough_evidence", (f"not enough evidence: a drop beyond tolerance in "
                                       f"{', '.join(unclear)} is not significant, nor ruled out")
    if improved := names("improved"):
        return "approved", f"approved: improved significantly in {', '.join(improved)}"
    if small := names("too_few_items", "unclear_gain"):
        return "not_enough_evidence", (
            f"not enough evidence: {', '.join(small)} cannot show an improvement of "
            f"{policy.min_improvement:g} (fewer than {policy.min_items} items and not "
            f"significant at {policy.small_suite_alpha:g}, or not significant at {policy.alpha:g})")
    return "rejected", f"rejected: no target suite improved by {policy.min_improvement:g} or more"
