"""Eval runs into the store: per-item results of both sides, suite summaries, the gate's decision.

The wiring frames the transaction:

    with sessions.begin() as session:
        run = start_eval_run(session, candidate_version=..., baseline_version=..., config=...)
    comparisons = await compare(...)
    decision = decide(comparisons, policy)
    with sessions.begin() as session:
        store_comparisons(session, eval_run_id=run.id, comparisons=comparisons)
        store_decision(session, eval_run_id=run.id, candidate_version=..., champion_version=...,
                       decision=decision)
        finish_eval_run(session, run_id=run.id, status="succeeded",
                        summary=summary_json(comparisons, decision))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from lifelong.evals.gate import Decision
from lifelong.evals.runner import Comparison, SuiteRun
from lifelong.feedback_store.eval_results import (
    NewEvalResult,
    Side,
    add_eval_results,
    record_gate_decision,
)
from lifelong.feedback_store.models import GateDecision


def _rows(run: SuiteRun, side: Side) -> list[NewEvalResult]:
    return [
        NewEvalResult(
            suite=run.suite.name, suite_kind=run.suite.kind, item_id=r.item_id, side=side,
            model=run.model, answers=list(r.answers), score=r.score, passed=r.passed,
            reason=r.reason, latency_ms=r.latency_s * 1000, format_ok=r.format_ok,
        )
        for r in run.results
    ]


def store_comparisons(session: Session, *, eval_run_id: int, comparisons: Sequence[Comparison]) -> None:
    """Every item's result, candidate's and champion's. Raises UnknownRun."""
    rows = [row for c in comparisons for row in (*_rows(c.candidate, "candidate"),
                                                  *_rows(c.champion, "champion"))]
    add_eval_results(session, eval_run_id=eval_run_id, results=rows)


def store_decision(
    session: Session, *, eval_run_id: int, candidate_version: str | None,
    champion_version: str | None, decision: Decision,
) -> GateDecision:
    """The gate's decision on the run, reasons and numbers included. Raises UnknownRun."""
    return record_gate_decision(
        session, eval_run_id=eval_run_id, candidate_version=candidate_version,
        champion_version=champion_version, status=decision.status, reasons=decision.reasons,
        details=decision.to_json(),
    )


def summary_json(comparisons: Sequence[Comparison], decision: Decision | None = None) -> dict[str, Any]:
    """Per suite, both sides' summaries (mean, n, 95% interval...), and the decision's status."""
    summary: dict[str, Any] = {
        "suites": [{"candidate": asdict(c.candidate.summary), "champion": asdict(c.champion.summary)}
                   for c in comparisons],
    }
    if decision is not None:
        summary["decision"] = {"status": decision.status, "reasons": list(decision.reasons)}
    return summary
