"""The canary's decision rule: promote, roll back, time out or keep going, from two live records.

A canary routes a share of users to a candidate adapter and compares it with the champion over the
same window, looked at every minute. Outcomes (pass/fail, optional reward) are compared with
always-valid confidence sequences (`evals.sequential`), so looking every minute does not inflate
false alarms; errors and latency are guardrails.

What `decide` guarantees, on the normal approximation once each arm has min_outcomes (asymptotic,
see `evals.sequential`): alpha is split evenly over its three intervals (pass rate, reward, error
rate), so with probability >= 1 - alpha every interval it ever reports covers its true difference.
Then, however often it is called:
- a rollback on outcomes or errors means the candidate is truly worse (errors: by more than
  max_error_rate_increase), so equal versions are rolled back at most alpha of the time;
- a promotion means the candidate is truly within `margin` of the champion on the pass rate and
  within `reward_margin` on the mean reward, wherever either arm has rewards.
What it does not:
- the latency check compares two p95s as measured, with no interval: it is outside alpha;
- outcomes are assumed independent and alike over the window; users who report more often, or a
  change in traffic that hits the two arms differently (a small share sees few hours of the day
  at a time), are not modelled;
- a timeout says nothing about either version: the difference was too small to tell in time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from lifelong.evals.sequential import Arm, Difference, confidence_sequence

Decision = Literal["promote", "rollback", "timeout", "kept"]

# Intervals each rule splits alpha over (Bonferroni): a fixed count, not the ones with data so
# far, so that an interval's level never changes mid-canary when rewards start to arrive.
CANARY_INTERVALS = 3  # pass rate, mean reward, error rate
WATCH_INTERVALS = 2  # pass rate, mean reward


@dataclass(frozen=True, slots=True)
class LiveArm:
    """One version's live record over the canary window."""

    passes: Arm  # outcome feedback's passed as 1/0
    rewards: Arm  # outcome feedback's reward values (may be empty)
    requests: int  # answered + failed requests routed to it
    errors: int  # failed requests (5xx from the model server)
    latency_p95_ms: float | None

    def summary(self) -> dict[str, Any]:
        """JSON-able counts and rates (None where there is nothing to rate)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_p95_ms": self.latency_p95_ms,
            "outcomes": self.passes.n,
            "pass_rate": self.passes.mean if self.passes.n else None,
            "rewards": self.rewards.n,
            "mean_reward": self.rewards.mean if self.rewards.n else None,
        }


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """The canary's thresholds; `ge`/`gt`/`le`/`lt` bounds in each field's metadata."""

    alpha: float = field(default=0.05, metadata={
        "help": "Chance that any interval of a canary ever misses its true difference: bounds "
        "false rollbacks and false promotions alike.", "gt": 0, "lt": 1})
    margin: float = field(default=0.05, metadata={
        "help": "Non-inferiority margin on the pass rate (absolute): a candidate may be this much "
        "worse and still be promoted.", "ge": 0, "le": 1})
    reward_margin: float = field(default=0.05, metadata={
        "help": "Non-inferiority margin on the mean reward (in the reward's units).", "ge": 0})
    tau: float = field(default=0.1, metadata={
        "help": "Mixture scale: the size of difference the intervals are narrowest for.", "gt": 0})
    min_outcomes: int = field(default=30, metadata={
        "help": "Outcomes (rewards) each arm needs before any decision on pass rates (rewards): "
        "the normal approximation's burn-in.", "ge": 2})
    min_duration_s: float = field(default=0, metadata={
        "help": "No promotion before this (a rollback may come earlier).", "ge": 0})
    max_duration_s: float = field(default=3600, metadata={
        "help": "Then time out and keep the champion: not enough evidence either way.", "gt": 0})
    min_requests: int = field(default=20, metadata={
        "help": "Requests each arm needs before the error and latency checks.", "ge": 1})
    max_error_rate_increase: float = field(default=0.05, metadata={
        "help": "Roll back once the candidate's error rate is surely this much above the "
        "champion's (absolute).", "ge": 0, "le": 1})
    max_latency_ratio: float = field(default=2.0, metadata={
        "help": "Roll back once the candidate's p95 latency exceeds the champion's by this factor.",
        "gt": 1})

    def __post_init__(self) -> None:
        """Raises ValueError naming every field outside its bounds."""
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            bounds = {"ge": value >= f.metadata.get("ge", -math.inf),
                      "gt": value > f.metadata.get("gt", -math.inf),
                      "le": value <= f.metadata.get("le", math.inf),
                      "lt": value < f.metadata.get("lt", math.inf)}
            problems += [f"{f.name}={value} (must be {op} {f.metadata[op]})"
                         for op, ok in bounds.items() if not ok]
        if problems:
            raise ValueError("canary policy out of bounds: " + ", ".join(problems))


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision | None  # None: keep going
    reason: str  # one line a person reads, naming the numbers
    stats: dict[str, Any]  # JSON-able: each arm's counts and rates by its role, each interval, elapsed_s


def _interval(d: Difference) -> dict[str, Any]:
    return {"estimate": d.estimate, "lower": d.lower, "upper": d.upper,
            "n_candidate": d.n_candidate, "n_baseline": d.n_baseline}


def _line(name: str, d: Difference, alpha: float, candidate: Arm, baseline: Arm) -> str:
    return (f"{name} {candidate.mean:.3f} vs {baseline.mean:.3f}, difference {d.estimate:+.3f}, "
            f"always-valid interval [{d.lower:+.3f}, {d.upper:+.3f}] at alpha {alpha:.3g} "
            f"on {d.n_candidate} vs {d.n_baseline}")


def _outcomes(candidate: LiveArm, baseline: LiveArm, *, alpha: float, policy: CanaryPolicy,
              stats: dict[str, Any]) -> tuple[Difference | None, Difference | None]:
    """The pass-rate and reward intervals, each once both arms reach min_outcomes (else None)."""
    passes = rewards = None
    if min(candidate.passes.n, baseline.passes.n) >= policy.min_outcomes:
        passes = confidence_sequence(candidate.passes, baseline.passes, alpha=alpha, tau=policy.tau,
                                     bernoulli=True)
    if min(candidate.rewards.n, baseline.rewards.n) >= policy.min_outcomes:
        rewards = confidence_sequence(candidate.rewards, baseline.rewards, alpha=alpha,
                                      tau=policy.tau, bernoulli=False)
    stats["pass_rate"] = _interval(passes) if passes else None
    stats["reward"] = _interval(rewards) if rewards else None
    return passes, rewards


def _drop(first: LiveArm, second: LiveArm, passes: Difference | None, rewards: Difference | None,
          alpha: float, who: str) -> str | None:
    """The reason for a rollback on a confident drop from `second` to `first`, or None."""
    if passes is not None and passes.upper < 0:
        return (f"{who}'s pass rate is lower: "
                + _line("pass rate", passes, alpha, first.passes, second.passes) + " outcomes")
    if rewards is not None and rewards.upper < 0:
        return (f"{who}'s mean reward is lower: "
                + _line("mean reward", rewards, alpha, first.rewards, second.rewards) + " rewards")
    return None


def decide(candidate: LiveArm, baseline: LiveArm, *, elapsed_s: float, policy: CanaryPolicy) -> Verdict:
    """The canary's verdict at this look (call it as often as wanted: every minute).

    Rollback (any time): the error rate surely up by more than max_error_rate_increase, or p95
    latency above max_latency_ratio times the champion's (each with min_requests per arm), or the
    pass rate or mean reward surely lower (min_outcomes per arm). Promote (from min_duration_s):
    the pass rate non-inferior within `margin`, and the mean reward within `reward_margin` if
    either arm has rewards. Timeout (from max_duration_s): neither in time. Else None.
    Raises ValueError if an arm counts more errors than requests.
    """
    alpha = policy.alpha / CANARY_INTERVALS
    stats: dict[str, Any] = {"elapsed_s": elapsed_s, "alpha_each": alpha,
                             "candidate": candidate.summary(), "baseline": baseline.summary()}
    # Failed requests as 1/0 outcomes: the error-rate interval is a pass-rate interval.
    failed = Arm.bernoulli(candidate.errors, candidate.requests)
    failed_before = Arm.bernoulli(baseline.errors, baseline.requests)
    guarded = min(candidate.requests, baseline.requests) >= policy.min_requests
    errors = (confidence_sequence(failed, failed_before, alpha=alpha, tau=policy.tau, bernoulli=True)
              if guarded else None)
    stats["error_rate"] = _interval(errors) if errors else None
    passes, rewards = _outcomes(candidate, baseline, alpha=alpha, policy=policy, stats=stats)

    if errors is not None and errors.lower > policy.max_error_rate_increase:
        return Verdict("rollback", "candidate's error rate is up by more than "
                       f"{policy.max_error_rate_increase:.3g}: "
                       + _line("error rate", errors, alpha, failed, failed_before) + " requests", stats)
    c_p95, b_p95 = candidate.latency_p95_ms, baseline.latency_p95_ms
    if guarded and c_p95 is not None and b_p95 is not None and b_p95 > 0:
        ratio = c_p95 / b_p95
        stats["latency_ratio"] = ratio
        if ratio > policy.max_latency_ratio:
            return Verdict("rollback", f"candidate's p95 latency {c_p95:.0f} ms is {ratio:.2f}x the "
                           f"champion's {b_p95:.0f} ms (limit {policy.max_latency_ratio:.2f}x)", stats)
    drop = _drop(candidate, baseline, passes, rewards, alpha, "candidate")
    if drop is not None:
        return Verdict("rollback", drop, stats)

    # What still stands between the candidate and a promotion, in words.
    pending = []
    if elapsed_s < policy.min_duration_s:
        pending.append(f"{elapsed_s:.0f} s of the {policy.min_duration_s:.0f} s minimum")
    if not guarded:
        pending.append(f"requests {candidate.requests} vs {baseline.requests} "
                       f"(need {policy.min_requests} each)")
    if passes is None:
        pending.append(f"outcomes {candidate.passes.n} vs {baseline.passes.n} "
                       f"(need {policy.min_outcomes} each)")
    elif passes.lower <= -policy.margin:
        pending.append(f"pass rate not yet within the margin -{policy.margin:.3g}: "
                       + _line("pass rate", passes, alpha, candidate.passes, baseline.passes))
    if candidate.rewards.n or baseline.rewards.n:
        if rewards is None:
            pending.append(f"rewards {candidate.rewards.n} vs {baseline.rewards.n} "
                           f"(need {policy.min_outcomes} each)")
        elif rewards.lower <= -policy.reward_margin:
            pending.append(f"mean reward not yet within the margin -{policy.reward_margin:.3g}: "
                           + _line("mean reward", rewards, alpha, candidate.rewards, baseline.rewards))
    if not pending:
        assert passes is not None  # no pending item means the pass-rate interval was computed
        rewards_part = ("; " + _line("mean reward", rewards, alpha, candidate.rewards, baseline.rewards)
                        + " rewards") if rewards else ""
        return Verdict("promote", f"candidate is non-inferior (margin {policy.margin:.3g}): "
                       + _line("pass rate", passes, alpha, candidate.passes, baseline.passes)
                       + " outcomes" + rewards_part, stats)
    if elapsed_s >= policy.max_duration_s:
        return Verdict("timeout", f"no decision in {policy.max_duration_s:.0f} s, champion kept: "
                       + "; ".join(pending), stats)
    return Verdict(None, "waiting: " + "; ".join(pending), stats)


def decide_watch(champion: LiveArm, predecessor: LiveArm, *, elapsed_s: float,
                 policy: CanaryPolicy) -> Verdict:
    """After a full promotion: the new champion's live record against its predecessor's last window.

    "rollback" once the champion's pass rate or mean reward is surely lower (min_outcomes per arm,
    alpha split over the two), "kept" once max_duration_s passes without that, else None.
    The predecessor's window is a fixed sample, not one that grows with the looks as the
    construction assumes; tests/evals/test_canary_policy.py measures the false-rollback rate at
    equal rates instead (1% of 300 simulated hours at alpha 0.05). Not guaranteed: the two windows
    are different times, so a change in traffic (harder questions, other users) looks like a change
    of version, both ways.
    Errors and latency are the canary's checks, not repeated here.
    """
    alpha = policy.alpha / WATCH_INTERVALS
    stats: dict[str, Any] = {"elapsed_s": elapsed_s, "alpha_each": alpha,
                             "champion": champion.summary(), "predecessor": predecessor.summary()}
    passes, rewards = _outcomes(champion, predecessor, alpha=alpha, policy=policy, stats=stats)
    drop = _drop(champion, predecessor, passes, rewards, alpha, "new champion")
    if drop is not None:
        return Verdict("rollback", drop + " (against the predecessor's last window)", stats)
    shown = "; ".join(_line(name, d, alpha, c, p) for name, d, c, p in (
        ("pass rate", passes, champion.passes, predecessor.passes),
        ("mean reward", rewards, champion.rewards, predecessor.rewards)) if d is not None) or (
        f"outcomes {champion.passes.n} vs {predecessor.passes.n} (need {policy.min_outcomes} each)")
    if elapsed_s >= policy.max_duration_s:
        return Verdict("kept", f"no drop in {policy.max_duration_s:.0f} s: {shown}", stats)
    return Verdict(None, f"watching: {shown}", stats)
