"""The gate: a clear improvement is approved, a regression rejected naming its suite, a small
suite cannot approve, and every decision carries each test's numbers.

Comparisons are built from plain per-item results (the runner's own types) rather than by running
models: the gate is arithmetic on them, and these cases need exact counts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lifelong.evals.gate import GatePolicy, decide
from lifelong.evals.runner import Comparison, ItemResult, SuiteRun, summarise
from lifelong.evals.suites import EvalItem, Suite

POLICY = GatePolicy(min_improvement=0.05, alpha=0.05, tolerance=0.02, min_items=100)


def run(suite: Suite, model: str, scores, answers=None, finishes=None) -> SuiteRun:
    results = tuple(
        ItemResult(item_id=item.id, answers=(answers[k] if answers else "42",), score=float(score),
                   passed=score >= 1.0, reason="", latency_s=0.01,
                   finish_reasons=(finishes[k] if finishes else "stop",))
        for k, (item, score) in enumerate(zip(suite.items, scores, strict=True)))
    return SuiteRun(suite=suite, model=model, results=results, summary=summarise(suite, model, results))


def comparison(name: str, kind: str, *, both: int = 0, candidate_only: int = 0,
               champion_only: int = 0, neither: int = 0, **candidate_kwargs) -> Comparison:
    """A pass/fail suite with the given paired cell counts."""
    n = both + candidate_only + champion_only + neither
    suite = Suite(name, kind, tuple(EvalItem(id=f"{name}-{k}", prompt="q", reference="42",
                                             verifier="exact_match") for k in range(n)))
    cand = [1] * both + [1] * candidate_only + [0] * champion_only + [0] * neither
    champ = [1] * both + [0] * candidate_only + [1] * champion_only + [0] * neither
    return Comparison(suite=suite, candidate=run(suite, "cand", cand, **candidate_kwargs),
                      champion=run(suite, "champ", champ))


def test_clear_improvement_without_regressions_is_approved():
    decision = decide([
        comparison("target:sub2", "target", both=60, candidate_only=40, champion_only=2, neither=98),
        comparison("arithmetic", "regression", both=140, neither=10),
        comparison("retention", "retention", both=118, candidate_only=1, champion_only=1),
    ], POLICY)
    assert decision.status == "approved"
    assert decision.reasons[0] == "approved: improved significantly in target:sub2"
    target = decision.suites[0]
    assert (target.outcome, target.test, target.n) == ("improved", "mcnemar_exact", 200)
    assert target.difference == pytest.approx(0.19)
    assert target.p_improvement < 1e-8 and target.p_improvement_adjusted == target.p_improvement
    assert 0 < target.min_detectable_difference < 0.19
    assert [c.outcome for c in decision.suites[1:]] == ["held", "held"]
    assert "target:sub2 (target): improved: +0.190 (candidate 0.500 vs champion 0.310, n=200" in \
        decision.reasons[3]


def test_regression_in_one_suite_is_rejected_naming_it():
    decision = decide([
        comparison("target:sub2", "target", both=60, candidate_only=40, neither=100),
        comparison("arithmetic", "regression", both=100, champion_only=30, neither=20),
        comparison("retention", "retention", both=120),
    ], POLICY)
    assert decision.status == "rejected"
    assert decision.reasons[0] == "rejected: regressed beyond tolerance in arithmetic"
    check = decision.suites[1]
    assert (check.outcome, check.difference) == ("regressed", pytest.approx(-0.2))
    assert check.p_regression == pytest.approx(0.5**30)
    assert any(line.startswith("arithmetic (regression): regressed: -0.200") for line in decision.reasons)


def test_small_target_suite_approves_only_beyond_doubt():
    # 14 wins, 0 losses of 20: p = 0.5**14 = 6e-5, below small_suite_alpha (0.001).
    decision = decide([comparison("target:add3", "target", both=5, candidate_only=14, neither=1)], POLICY)
    assert decision.status == "approved", decision.reasons
    check = decision.suites[0]
    assert (check.outcome, check.n) == ("improved", 20)
    assert check.p_improvement == pytest.approx(0.5**14)


def test_small_target_suite_that_is_only_significant_at_alpha_is_not_enough_evidence():
    # 8 wins, 0 losses of 20: p = 0.5**8 = 0.004, significant at 0.05 but not at 0.001.
    decision = decide([comparison("target:add3", "target", both=5, candidate_only=8, neither=7)], POLICY)
    assert decision.status == "not_enough_evidence"
    assert "target:add3 cannot show an improvement of 0.05 (fewer than 100 items" in decision.reasons[0]
    check = decision.suites[0]
    assert (check.outcome, check.n) == ("too_few_items", 20)
    assert check.p_improvement == pytest.approx(0.5**8)
    assert check.min_detectable_difference >= 5 / 20


def test_no_target_suite_is_not_enough_evidence():
    decision = decide([comparison("arithmetic", "regression", both=150)], POLICY)
    assert decision.status == "not_enough_evidence"


def test_holm_correction_across_target_suites_can_withhold_approval():
    # Each suite alone: 5 wins, 0 losses, p = 1/32 < 0.05; Holm across the two doubles the smaller.
    suites = [comparison(f"target:{k}", "target", both=50, candidate_only=5, neither=45) for k in "ab"]
    decision = decide(suites, POLICY)
    assert [c.p_improvement for c in decision.suites] == [pytest.approx(1 / 32)] * 2
    assert [c.p_improvement_adjusted for c in decision.suites] == [pytest.approx(1 / 16)] * 2
    assert decision.status == "not_enough_evidence"
    assert [c.outcome for c in decision.suites] == ["unclear_gain", "unclear_gain"]
    assert decide(suites, replace(POLICY, holm=False)).status == "approved"


def test_no_gain_in_a_large_target_suite_is_rejected():
    decision = decide([comparison("target:sub2", "target", both=100, candidate_only=3,
                                  champion_only=3, neither=94)], POLICY)
    assert decision.status == "rejected"
    assert decision.reasons[0] == "rejected: no target suite improved by 0.05 or more"


def test_drop_within_a_suites_own_tolerance_is_held():
    suites = [comparison("target:sub2", "target", both=60, candidate_only=40, neither=100),
              comparison("noisy", "regression", both=90, champion_only=6, neither=4)]
    assert decide(suites, POLICY).status == "rejected"  # -6 points, p = 1/64 under 2% tolerance
    relaxed = decide(suites, replace(POLICY, tolerances={"noisy": 0.1}))
    assert relaxed.status == "approved" and relaxed.suites[1].outcome == "held"


def test_drop_beyond_tolerance_that_is_not_significant_is_not_enough_evidence():
    decision = decide([comparison("target:sub2", "target", both=60, candidate_only=40, neither=100),
                       comparison("tiny", "regression", both=8, champion_only=2)], POLICY)
    assert decision.suites[1].outcome == "unclear_drop"
    assert decision.status == "not_enough_evidence" and "tiny" in decision.reasons[0]


def test_an_empty_candidate_answer_is_rejected():
    answers = ["42"] * 199 + ["  "]
    decision = decide([comparison("target:sub2", "target", both=60, candidate_only=40, neither=100,
                                  answers=answers)], POLICY)
    assert decision.status == "rejected"
    assert decision.reasons[0].startswith("rejected: hard check failed: every answer non-empty")
    assert decision.hard_checks[0].detail == "empty answers: target:sub2: 1"


def test_a_lower_format_rate_is_rejected():
    finishes = ["stop"] * 190 + ["length"] * 10
    decision = decide([comparison("target:sub2", "target", both=60, candidate_only=40, neither=100,
                                  finishes=finishes)], POLICY)
    assert decision.status == "rejected" and "format rate not lower" in decision.reasons[0]
    assert decision.hard_checks[1].detail == "candidate 190/200 well-formed answers, champion 200/200"


def test_continuous_scores_use_the_paired_bootstrap():
    n = 200
    suite = Suite("target:essay", "target", tuple(EvalItem(id=str(k), prompt="q", reference="",
                                                           verifier="exact_match") for k in range(n)))
    champion = [0.3 + 0.4 * (k % 5) / 4 for k in range(n)]
    candidate = [min(1.0, s + 0.1) for s in champion]
    decision = decide([Comparison(suite, run(suite, "cand", candidate), run(suite, "champ", champion))],
                      POLICY)
    (check,) = decision.suites
    assert check.test == "paired_bootstrap" and check.difference == pytest.approx(0.1)
    assert decision.status == "approved"


def test_decision_serialises_to_plain_json():
    decision = decide([comparison("target:sub2", "target", both=60, candidate_only=40, neither=100)],
                      POLICY)
    data = json.loads(json.dumps(decision.to_json()))
    assert data["status"] == "approved" and data["suites"][0]["n"] == 200
    assert data["policy"]["min_items"] == 100


def test_unpaired_comparison_is_refused():
    a = comparison("x", "target", both=3)
    b = comparison("y", "target", both=3)
    with pytest.raises(ValueError, match="different items"):
        decide([Comparison(a.suite, a.candidate, b.champion)], POLICY)


def test_a_suite_below_its_floor_rejects_whatever_its_champion_scored():
    target = comparison("target:sums", "target", both=10, candidate_only=150, neither=40)
    # The general suite: the champion kept 60% alike to the base model, the candidate 20%.
    general = comparison("general", "retention", both=40, champion_only=80, neither=80)
    floors = replace(POLICY, floors={"general": 0.3}, tolerances={"general": 1.0})
    decision = decide([target, general], floors)
    assert decision.status == "rejected"
    assert decision.reasons[0] == "rejected: hard check failed: general at or above its floor"
    assert "candidate mean 0.200, floor 0.3 (champion 0.600)" in " ".join(decision.reasons)
    kept = comparison("general", "retention", both=80, champion_only=40, neither=80)
    assert decide([target, kept], floors).status == "approved"  # 0.4: above the floor
    assert decide([target, general], replace(POLICY, tolerances={"general": 1.0})).status == \
        "approved"  # no floor, no tolerance: nothing holds it
