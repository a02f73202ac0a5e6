"""The promotion gate's policy (`gate.decide` applies it): one frozen dataclass, the help and
bounds of each field in its metadata (`ge`, `gt`, `le`, `lt`, as pydantic names them).

It is the one source of these thresholds: the daemon's `evals.gate` settings are built from
these fields, so their defaults cannot drift apart. Apart from `gate.py` so that reading the
settings loads neither numpy nor the eval runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GatePolicy:
    min_improvement: float = field(default=0.02, metadata={
        "help": "Gain needed on a target suite's mean score (pass rate for pass/fail).",
        "ge": 0, "le": 1})
    alpha: float = field(default=0.05, metadata={"help": "Significance level.", "gt": 0, "lt": 1})
    holm: bool = field(default=True, metadata={
        "help": "Holm-correct the improvement tests across target suites."})
    tolerance: float = field(default=0.01, metadata={
        "help": "Largest drop any suite may show (a suite in `tolerances` has its own).",
        "ge": 0, "le": 1})
    tolerances: Mapping[str, float] = field(default_factory=dict, metadata={
        "help": "Per-suite tolerances, by suite name."})
    floors: Mapping[str, float] = field(default_factory=dict, metadata={
        "help": "Lowest mean score a candidate may have, by suite name (a hard check)."})
    min_items: int = field(default=200, metadata={
        "help": "A target suite smaller than this approves only at small_suite_alpha.", "ge": 1})
    small_suite_alpha: float = field(default=0.001, metadata={
        "help": "Significance a target suite below min_items must reach to approve: a large "
        "gain beyond doubt on a small held-out suite is kept, and a candidate no better than "
        "the champion passes such a suite at most this often.", "gt": 0, "lt": 1})
    power: float = field(default=0.8, metadata={
        "help": "Power at which each check reports the smallest difference it could detect.",
        "gt": 0, "lt": 1})
    require_nonempty: bool = field(default=True, metadata={
        "help": "Reject a candidate that gives an empty answer."})
    format_rate_not_lower: bool = field(default=True, metadata={
        "help": "Reject a candidate whose format rate (non-empty answers the model ended "
        "itself) is below the champion's."})
    bootstrap_resamples: int = field(default=10_000, metadata={
        "help": "Resamples of the paired bootstrap (suites scored other than pass/fail).",
        "ge": 1})
    seed: int = field(default=0, metadata={"help": "Seed of the paired bootstrap."})

    def tolerance_for(self, suite: str) -> float:
        return self.tolerances.get(suite, self.tolerance)
