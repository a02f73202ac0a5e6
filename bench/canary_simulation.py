"""How the canary's decision rule behaves when it is looked at every minute: simulated outcomes.

Pass/fail outcomes (and, with --reward-sd, rewards) arrive every simulated minute, a share of them
from the candidate; `lifelong.evals.canary_policy.decide` is called after each minute until it
decides or the window ends. Over many seeds it prints
(a) with equal versions, the false-rollback rate (target: at most alpha), beside the rate of a
    naive fixed-sample z-test (1 - alpha interval, rollback when it lies below 0) looked at every
    minute of the same window: the inflation that the sequential intervals exist to prevent;
(b) for each effect on the pass rate, the rollback/promote/timeout fractions and the median time
    to a decision (minutes, candidate outcomes) among the runs that decided.

    .venv/bin/python bench/canary_simulation.py --seeds 1000
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lifelong.evals.canary_policy import CanaryPolicy, Decision, LiveArm, decide
from lifelong.evals.sequential import Arm


@dataclass(frozen=True, slots=True)
class Run:
    """One simulated canary. minute: the look that decided (the last minute if none did)."""

    decision: Decision | None
    minute: int
    outcomes_candidate: int
    outcomes_baseline: int
    naive_rollback_minute: int | None  # first look where the naive z-test would have rolled back


def _naive_rollback(candidate: Arm, baseline: Arm, z: float) -> bool:
    """A fixed-sample z interval on the difference (same regularised variance) lies below 0."""
    def var(arm: Arm) -> float:
        rate = (arm.total + 0.5) / (arm.n + 1)
        return rate * (1 - rate) / arm.n
    upper = candidate.mean - baseline.mean + z * math.sqrt(var(candidate) + var(baseline))
    return upper < 0


def simulate(*, seed: int, base_rate: float, effect: float, share: float, outcomes_per_minute: float,
             policy: CanaryPolicy, reward_sd: float | None = None) -> Run:
    """One canary window: Poisson(outcomes_per_minute) outcomes a minute, each the candidate's with
    probability `share`; the champion passes at base_rate, the candidate at base_rate + effect.
    With reward_sd, every outcome also carries a reward ~ Normal(its arm's pass rate, reward_sd).
    `decide` is called after every minute; the naive z-test is looked at over the whole window."""
    rng = np.random.default_rng(seed)
    rates = (base_rate + effect, base_rate)
    passes = [0, 0]
    counts = [0, 0]
    rewards = [Arm(), Arm()]
    z = NormalDist().inv_cdf(1 - policy.alpha / 2)
    minutes = math.ceil(policy.max_duration_s / 60)
    decision: Decision | None = None
    decided_at = minutes
    naive: int | None = None
    for minute in range(1, minutes + 1):
        total = int(rng.poisson(outcomes_per_minute))
        split = int(rng.binomial(total, share))
        for i, n in enumerate((split, total - split)):
            counts[i] += n
            passes[i] += int(rng.binomial(n, rates[i]))
            if reward_sd is not None and n:
                values = rng.normal(rates[i], reward_sd, size=n)
                rewards[i] = Arm(rewards[i].n + n, rewards[i].total + float(values.sum()),
                                 rewards[i].total_sq + float((values * values).sum()))
        arms = [LiveArm(passes=Arm.bernoulli(passes[i], counts[i]), rewards=rewards[i],
                        requests=counts[i], errors=0, latency_p95_ms=None) for i in (0, 1)]
        if naive is None and min(counts) >= policy.min_outcomes and _naive_rollback(
                arms[0].passes, arms[1].passes, z):
            naive = minute
        if decision is None:
            decision = decide(arms[0], arms[1], elapsed_s=minute * 60.0, policy=policy).decision
            if decision is not None:
                decided_at = minute
                decided_counts = tuple(counts)
        if decision is not None and naive is not None:
            break  # nothing left to learn from this run
    if decision is None:
        decided_counts = tuple(counts)
    return Run(decision, decided_at, decided_counts[0], decided_counts[1], naive)


def main() -> None:
    defaults = CanaryPolicy()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--base-rate", type=float, default=0.7)
    parser.add_argument("--effects", type=float, nargs="+", default=[-0.20, -0.10, -0.05, 0.0, 0.05])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--outcomes-per-minute", type=float, default=50.0,
                        help="outcome feedback per minute, both versions together")
    parser.add_argument("--reward-sd", type=float, help="also simulate rewards with this spread")
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--tau", type=float, default=defaults.tau)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_duration_s / 60)
    args = parser.parse_args()
    policy = CanaryPolicy(alpha=args.alpha, tau=args.tau, max_duration_s=args.max_minutes * 60)

    print(f"policy: alpha {policy.alpha}, margin {policy.margin}, tau {policy.tau}, min_outcomes "
          f"{policy.min_outcomes}, window {args.max_minutes:.0f} min; {args.outcomes_per_minute:g} "
          f"outcomes/min, base pass rate {args.base_rate}, {args.seeds} seeds"
          + (f", rewards sd {args.reward_sd}" if args.reward_sd else ""))
    print(f"{'share':>6} {'effect':>7} {'rollback':>9} {'promote':>8} {'timeout':>8} "
          f"{'naive rollback':>15} {'median min':>11} {'median cand. outcomes':>22}")
    for share in args.shares:
        for effect in args.effects:
            runs = [simulate(seed=seed, base_rate=args.base_rate, effect=effect, share=share,
                             outcomes_per_minute=args.outcomes_per_minute, policy=policy,
                             reward_sd=args.reward_sd) for seed in range(args.seeds)]

            def fraction(decision: str | None, runs: list[Run] = runs) -> float:
                return sum(r.decision == decision for r in runs) / len(runs)

            decided = [r for r in runs if r.decision in ("rollback", "promote")]
            minutes = f"{statistics.median(r.minute for r in decided):.0f}" if decided else "-"
            outcomes = (f"{statistics.median(r.outcomes_candidate for r in decided):.0f}"
                        if decided else "-")
            naive = sum(r.naive_rollback_minute is not None for r in runs) / len(runs)
            print(f"{share:>6.2f} {effect:>+7.2f} {fraction('rollback'):>9.3f} {fraction('promote'):>8.3f} "
                  f"{fraction('timeout'):>8.3f} {naive:>15.3f} {minutes:>11} {outcomes:>22}")
    print(f"at effect +0.00 the rollback column is the false-rollback rate (target <= {policy.alpha}); "
          "'naive rollback': a fixed-sample z-test looked at every minute of the same window")


if __name__ == "__main__":
    main()
