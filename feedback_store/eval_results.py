"""Eval results and gate decisions: per-item answers and verdicts of an eval run, and the gate's
decision on it.

Plain values in (the store knows nothing of the evals library); rows out. Functions flush, never
commit: the caller frames the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalResult, EvalRun, GateDecision

Side = Literal["candidate", "champion"]
GateStatus = Literal["approved", "rejected", "not_enough_evidence"]


@dataclass(frozen=True, slots=True)
class NewEvalResult:
    suite: str
    suite_kind: Literal["target", "regression", "retention"]
    item_id: str
    side: Side
    model: str
    answers: list[str]
    score: float
    passed: bool
    reason: str
    latency_ms: float
    format_ok: bool


def _run(session: Session, eval_run_id: int) -> EvalRun:
    run = session.get(EvalRun, eval_run_id)
    if run is None:
        raise UnknownRun(f"no eval run {eval_run_id}", field="eval_run_id")
    return run


def add_eval_results(
    session: Session, *, eval_run_id: int, results: Sequence[NewEvalResult]
) -> None:
    """Store `results` under the eval run. Raises UnknownRun; the database refuses a second result
    for the same (suite, item, side) in a run (IntegrityError at flush)."""
    _run(session, eval_run_id)
    session.add_all(
        EvalResult(
            eval_run_id=eval_run_id, suite=r.suite, suite_kind=r.suite_kind, item_id=r.item_id,
            side=r.side, model=r.model, answers=list(r.answers), score=r.score, passed=r.passed,
            reason=r.reason, latency_ms=r.latency_ms, format_ok=r.format_ok,
        )
        for r in results
    )
    session.flush()


def list_eval_results(
    session: Session, *, eval_run_id: int, suite: str | None = None, side: Side | None = None
) -> list[EvalResult]:
    """An eval run's results in the order stored; only one suite's or side's when given."""
    query = select(EvalResult).where(EvalResult.eval_run_id == eval_run_id).order_by(EvalResult.id)
    if suite is not None:
        query = query.where(EvalResult.suite == suite)
    if side is not None:
        query = query.where(EvalResult.side == side)
    return list(session.scalars(query))


def record_gate_decision(
    session: Session,
    *,
    eval_run_id: int,
    candidate_version: str | None,
    champion_version: str | None,
    status: GateStatus,
    reasons: Sequence[str],
    details: dict[str, Any],
) -> GateDecision:
    """The gate's decision on an eval run (one per run). Raises UnknownRun; ValueError for an
    unknown status."""
    if status not in ("approved", "rejected", "not_enough_evidence"):
        raise ValueError(f"a gate decision is approved, rejected or not_enough_evidence, not {status!r}")
    _run(session, eval_run_id)
    row = GateDecision(
        eval_run_id=eval_run_id, decided_at=datetime.now(UTC), candidate_version=candidate_version,
        champion_version=champion_version, status=status, reasons=list(reasons), details=details,
    )
    session.add(row)
    session.flush()
    return row


def gate_decision_for_run(session: Session, *, eval_run_id: int) -> GateDecision | None:
    """The decision on an eval run, if the gate has made one."""
    return session.scalars(
        select(GateDecision).where(GateDecision.eval_run_id == eval_run_id)
    ).one_or_none()


def latest_gate_decision(session: Session, *, candidate_version: str) -> GateDecision | None:
    """The newest decision on an adapter version (what `adapters show` prints), if any."""
    return session.scalars(
        select(GateDecision)
        .where(GateDecision.candidate_version == candidate_version)
        .order_by(GateDecision.decided_at.desc(), GateDecision.id.desc())
        .limit(1)
    ).one_or_none()
