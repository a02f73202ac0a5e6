"""An eval run's per-item results (both sides) and the gate's decision go into the store and
come back as they were: per run, per suite, per side, and by candidate version."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from lifelong.evals.gate import GatePolicy, decide
from lifelong.evals.records import store_comparisons, store_decision, summary_json
from lifelong.evals.runner import Comparison, ItemResult, SuiteRun, summarise
from lifelong.evals.suites import EvalItem, Suite
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.eval_results import (
    gate_decision_for_run,
    latest_gate_decision,
    list_eval_results,
    record_gate_decision,
)
from lifelong.feedback_store.runs import finish_eval_run, start_eval_run


def suite_run(suite: Suite, model: str, passes: list[bool]) -> SuiteRun:
    results = tuple(ItemResult(item_id=item.id, answers=("46", "47"), score=float(ok), passed=ok,
                               reason="r", latency_s=0.25, finish_reasons=("stop", "stop"))
                    for item, ok in zip(suite.items, passes, strict=True))
    return SuiteRun(suite, model, results, summarise(suite, model, results))


def comparisons() -> list[Comparison]:
    suite = Suite("target:sub2", "target", tuple(
        EvalItem(id=f"t{k}", prompt="q", reference="46", verifier="numeric") for k in range(3)))
    return [Comparison(suite, suite_run(suite, "cand-v2", [True, True, False]),
                       suite_run(suite, "base", [True, False, False]))]


def test_results_of_both_sides_are_stored_per_item(session):
    run = start_eval_run(session, candidate_version="v2", baseline_version=None, config={})
    store_comparisons(session, eval_run_id=run.id, comparisons=comparisons())
    session.commit()
    rows = list_eval_results(session, eval_run_id=run.id)
    assert len(rows) == 6
    cand = list_eval_results(session, eval_run_id=run.id, side="candidate", suite="target:sub2")
    assert [(r.item_id, r.passed, r.model) for r in cand] == [
        ("t0", True, "cand-v2"), ("t1", True, "cand-v2"), ("t2", False, "cand-v2")]
    first = cand[0]
    assert (first.answers, first.score, first.reason, first.latency_ms, first.format_ok,
            first.suite_kind) == (["46", "47"], 1.0, "r", 250.0, True, "target")


def test_a_second_result_for_the_same_item_and_side_is_refused(session):
    run = start_eval_run(session, candidate_version="v2", baseline_version=None, config={})
    store_comparisons(session, eval_run_id=run.id, comparisons=comparisons())
    with pytest.raises(IntegrityError):
        store_comparisons(session, eval_run_id=run.id, comparisons=comparisons())


def test_results_for_an_unknown_run_are_refused(session):
    with pytest.raises(UnknownRun, match="no eval run 99"):
        store_comparisons(session, eval_run_id=99, comparisons=comparisons())


def test_decision_is_stored_with_its_reasons_and_numbers(session):
    run = start_eval_run(session, candidate_version="v2", baseline_version="v1", config={})
    decision = decide(comparisons(), GatePolicy(min_items=100))
    store_decision(session, eval_run_id=run.id, candidate_version="v2", champion_version="v1",
                   decision=decision)
    finish_eval_run(session, run_id=run.id, status="succeeded",
                    summary=summary_json(comparisons(), decision))
    session.commit()
    row = gate_decision_for_run(session, eval_run_id=run.id)
    assert row.status == "not_enough_evidence" and row.reasons == list(decision.reasons)
    assert row.details["suites"][0]["n"] == 3 and row.details["suites"][0]["outcome"] == "too_few_items"
    assert latest_gate_decision(session, candidate_version="v2").id == row.id
    assert latest_gate_decision(session, candidate_version="v3") is None
    assert run.summary["decision"]["status"] == "not_enough_evidence"
    assert run.summary["suites"][0]["candidate"]["n"] == 3


def test_latest_decision_is_the_newest_for_the_version(session):
    ids = []
    for status in ("rejected", "approved"):
        run = start_eval_run(session, candidate_version="v2", baseline_version="v1", config={})
        ids.append(record_gate_decision(session, eval_run_id=run.id, candidate_version="v2",
                                        champion_version="v1", status=status, reasons=[status],
                                        details={}).id)
    session.commit()
    assert latest_gate_decision(session, candidate_version="v2").status == "approved"


def test_one_decision_per_run_and_only_known_statuses(session):
    run = start_eval_run(session, candidate_version="v2", baseline_version=None, config={})
    with pytest.raises(ValueError, match="not 'maybe'"):
        record_gate_decision(session, eval_run_id=run.id, candidate_version="v2",
                             champion_version=None, status="maybe", reasons=[], details={})
    record_gate_decision(session, eval_run_id=run.id, candidate_version="v2", champion_version=None,
                         status="approved", reasons=[], details={})
    with pytest.raises(IntegrityError):
        record_gate_decision(session, eval_run_id=run.id, candidate_version="v2",
                             champion_version=None, status="rejected", reasons=[], details={})
