"""Training and eval runs: started, then finished as succeeded or failed, with what they found.

Minimal on purpose: the trainer and the gate add columns through migrations as they need them.
Functions flush, never commit: the caller frames the transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalRun, TrainingRun

Finished = Literal["succeeded", "failed"]


def _check_finished(status: str) -> None:
    if status not in ("succeeded", "failed"):
        raise ValueError(f"a run finishes as 'succeeded' or 'failed', not {status!r}")


def start_training_run(
    session: Session,
    *,
    method: str,
    parent_version: str | None,
    config: dict[str, Any],
    data_watermark: int | None = None,
) -> TrainingRun:
    """A `running` training run (id assigned)."""
    row = TrainingRun(
        started_at=datetime.now(UTC), status="running", method=method,
        parent_version=parent_version, data_watermark=data_watermark, config=config,
    )
    session.add(row)
    session.flush()
    return row


def finish_training_run(
    session: Session,
    *,
    run_id: int,
    status: Finished,
    adapter_version: str | None = None,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
) -> TrainingRun:
    """Record the end of a training run. Raises UnknownRun; ValueError for another status."""
    _check_finished(status)
    row = session.get(TrainingRun, run_id)
    if row is None:
        raise UnknownRun(f"no training run {run_id}", field="run_id")
    row.finished_at = datetime.now(UTC)
    row.status, row.adapter_version, row.metrics, row.error = status, adapter_version, metrics, error
    session.flush()
    return row


def start_eval_run(
    session: Session,
    *,
    candidate_version: str | None,
    baseline_version: str | None,
    config: dict[str, Any],
) -> EvalRun:
    """A `running` eval run (id assigned); a version of None means the base model."""
    row = EvalRun(
        started_at=datetime.now(UTC), status="running", candidate_version=candidate_version,
        baseline_version=baseline_version, config=config,
    )
    session.add(row)
    session.flush()
    return row


def finish_eval_run(
    session: Session,
    *,
    run_id: int,
    status: Finished,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> EvalRun:
    """Record the end of an eval run. Raises UnknownRun; ValueError for another status."""
    _check_finished(status)
    row = session.get(EvalRun, run_id)
    if row is None:
        raise UnknownRun(f"no eval run {run_id}", field="run_id")
    row.finished_at = datetime.now(UTC)
    row.status, row.summary, row.error = status, summary, error
    session.flush()
    return row
