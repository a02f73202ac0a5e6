"""Training and eval runs: started, updated while they run, then finished with what they found.

A training run ends `succeeded` (an adapter), `skipped` (too little data; nothing trained),
`failed` (with the error) or `interrupted` (its process died with the daemon). Eval runs end
`succeeded`, `failed` or `interrupted`. Functions flush, never commit: the caller frames the
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalRun, TrainingRun

TrainingFinished = Literal["succeeded", "failed", "skipped", "interrupted"]
EvalFinished = Literal["succeeded", "failed", "interrupted"]


def _check_finished(status: str, allowed: tuple[str, ...]) -> None:
    if status not in allowed:
        raise ValueError(f"a run finishes as one of {allowed}, not {status!r}")


def _running_training_run(session: Session, run_id: int) -> TrainingRun:
    row = session.get(TrainingRun, run_id)
    if row is None:
        raise UnknownRun(f"no training run {run_id}", field="run_id")
    if row.status != "running":
        raise ValueError(f"training run {run_id} is {row.status}, not running")
    return row


def start_training_run(
    session: Session,
    *,
    method: str,
    parent_version: str | None,
    config: dict[str, Any],
    data_watermark: int | None = None,
    host: str | None = None,
    pid: int | None = None,
) -> TrainingRun:
    """A `running` training run (id assigned); `host`/`pid`: the process that trains it."""
    row = TrainingRun(
        started_at=datetime.now(UTC), status="running", method=method,
        parent_version=parent_version, data_watermark=data_watermark, config=config,
        host=host, pid=pid,
    )
    session.add(row)
    session.flush()
    return row


def update_training_run(
    session: Session,
    *,
    run_id: int,
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    data_watermark: int | None = None,
    host: str | None = None,
    pid: int | None = None,
    method: str | None = None,
) -> TrainingRun:
    """Change a running run as it learns more about itself; None leaves a field as it is.

    Raises UnknownRun; ValueError if the run is no longer running (a late progress write from
    a trainer that was already marked failed must not resurrect it)."""
    row = _running_training_run(session, run_id)
    for name, value in (
        ("metrics", metrics), ("parent_version", parent_version),
        ("data_watermark", data_watermark), ("host", host), ("pid", pid), ("method", method),
    ):
        if value is not None:
            setattr(row, name, value)
    session.flush()
    return row


def finish_training_run(
    session: Session,
    *,
    run_id: int,
    status: TrainingFinished,
    adapter_version: str | None = None,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
) -> TrainingRun:
    """Record the end of a running training run. Raises UnknownRun; ValueError for a status a
    run cannot end in, or a run that already ended (the first end is the truth)."""
    _check_finished(status, ("succeeded", "failed", "skipped", "interrupted"))
    row = _running_training_run(session, run_id)
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
    status: EvalFinished,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> EvalRun:
    """Record the end of an eval run. Raises UnknownRun; ValueError for another status."""
    _check_finished(status, ("succeeded", "failed", "interrupted"))
    row = session.get(EvalRun, run_id)
    if row is None:
        raise UnknownRun(f"no eval run {run_id}", field="run_id")
    row.finished_at = datetime.now(UTC)
    row.status, row.summary, row.error = status, summary, error
    session.flush()
    return row


def interrupt_dead_training_runs(
    session: Session, *, host: str, alive: Callable[[int], bool], other_hosts: bool = False,
) -> list[int]:
    """Mark `interrupted` every running run on `host` whose process is gone (`alive(pid)` false,
    or no pid yet). Runs on other hosts are left alone (only their own host can tell), unless
    `other_hosts`: a newly elected leader's, whose predecessor lost the lease with its runs;
    even then only the runs a daemon started (a person's `lifelong train` elsewhere is theirs)."""
    rows = session.scalars(select(TrainingRun).where(TrainingRun.status == "running"))
    ended = []
    for row in rows:
        if row.host == host:
            if row.pid is not None and alive(row.pid):
                continue
            error = f"the trainer process ({row.pid or 'not started'}) ended with the daemon"
        elif other_hosts and "request" in (row.config or {}):
            error = (f"the gateway on {row.host} that ran it no longer leads the learning loop; "
                     "a new leader took over")
        else:
            continue
        row.status, row.finished_at, row.error = "interrupted", datetime.now(UTC), error
        ended.append(row.id)
    session.flush()
    return ended


def interrupt_running_eval_runs(session: Session) -> list[int]:
    """Mark every running eval run interrupted: at start-up, the judge that ran it is gone."""
    rows = list(session.scalars(select(EvalRun).where(EvalRun.status == "running")))
    for row in rows:
        row.status, row.finished_at = "interrupted", datetime.now(UTC)
        row.error = "the daemon stopped during the eval"
    session.flush()
    return [row.id for row in rows]
