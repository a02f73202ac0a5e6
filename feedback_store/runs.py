"""Training and eval runs: started, updated while they run, then finished with what they found.

A training run ends `succeeded` (an adapter), `skipped` (too little data; nothing trained),
`failed` (with the error) or `interrupted` (its process died with the daemon). Eval runs end
`succeeded`, `failed` or `interrupted`. Functions flush, never commit: the caller frames the
transaction.

A run the leading gateway leaves to a trainer worker (`lifelong trainer`) is a `running` row with
no host yet and `config["runner"] == "worker"`. A worker claims it (`claim_training_run`: host and
pid set where still unset, one conditional UPDATE, so two workers never both win) together with
a lease named for the run (`claim_lease`), which it renews while it lives (`renew_claim`): the
leader marks interrupted a claimed run whose lease ran out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lifelong.feedback_store import leases
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.leases import LeaseView
from lifelong.feedback_store.models import EvalRun, Lease, TrainingRun

TrainingFinished = Literal["succeeded", "failed", "skipped", "interrupted"]
EvalFinished = Literal["succeeded", "failed", "interrupted"]
WORKER = "worker"  # a training run's config["runner"] when a trainer worker carries it out


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
    if not _end_if_running(session, run_id, status=status, adapter_version=adapter_version,
                           metrics=metrics, error=error):
        raise ValueError(f"training run {run_id} ended meanwhile, not running")
    session.refresh(row)
    return row


def _end_if_running(session: Session, run_id: int, **values: Any) -> bool:
    """End the run with `values` if it is still running; whether it was. One conditional UPDATE:
    of two processes ending the same run at once (a trainer publishing, a gateway timing it
    out), the database lets one win and the other sees it ended (on PostgreSQL a plain write of
    a row read earlier would overwrite the winner's end)."""
    ended = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "running")
        .values(finished_at=datetime.now(UTC), **values)
        .execution_options(synchronize_session=False)
    )
    return ended.rowcount == 1  # type: ignore[attr-defined]


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
    even then only the runs a daemon started (a person's `lifelong train` elsewhere is theirs).
    A run left to a trainer worker is always its leader's, on whatever host the worker is."""
    rows = list(session.scalars(select(TrainingRun).where(TrainingRun.status == "running")))
    ended = []
    for row in rows:
        if other_hosts and (row.config or {}).get("runner") == WORKER:
            error = ("the gateway that queued it for a trainer worker no longer leads the "
                     "learning loop; a new leader took over")
        elif row.host == host:
            if row.pid is not None and alive(row.pid):
                continue
            error = f"the trainer process ({row.pid or 'not started'}) ended with the daemon"
        elif other_hosts and "request" in (row.config or {}):
            error = (f"the gateway on {row.host} that ran it no longer leads the learning loop; "
                     "a new leader took over")
        else:
            continue
        if _end_if_running(session, row.id, status="interrupted", error=error):
            session.refresh(row)
            ended.append(row.id)
    return ended


def interrupt_running_eval_runs(session: Session) -> list[int]:
    """Mark every running eval run interrupted: at start-up, the judge that ran it is gone."""
    rows = list(session.scalars(select(EvalRun).where(EvalRun.status == "running")))
    for row in rows:
        row.status, row.finished_at = "interrupted", datetime.now(UTC)
        row.error = "the daemon stopped during the eval"
    session.flush()
    return [row.id for row in rows]


# --- trainer workers ---------------------------------------------------------------------------


def claim_lease(run_id: int) -> str:
    """The name of the lease a trainer worker holds on the run it carries out."""
    return f"training-run:{run_id}"


@dataclass(frozen=True)
class Claim:
    """A run a trainer worker took: its config (the request) and its lease's epoch."""

    run_id: int
    config: dict[str, Any]
    epoch: int


def claim_training_run(
    session: Session, *, holder: str, host: str, pid: int, lease_s: float,
) -> Claim | None:
    """The oldest run waiting for a trainer worker, now claimed: its host and pid set to the
    worker's and its lease (`claim_lease`) held by `holder` for `lease_s`. None if no run waits.

    The claim is an UPDATE that sets the host only where it is still unset: on PostgreSQL a
    second worker's UPDATE of the same row waits for the first to commit, then finds the host
    set and changes nothing (SQLite runs one writer at a time), so a run is never claimed twice."""
    waiting = session.execute(
        select(TrainingRun.id, TrainingRun.config)
        .where(TrainingRun.status == "running", TrainingRun.host.is_(None))
        .order_by(TrainingRun.id)
    ).all()
    for run_id, config in waiting:
        if (config or {}).get("runner") != WORKER:
            continue
        taken = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == "running",
                   TrainingRun.host.is_(None))
            .values(host=host, pid=pid)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            epoch = leases.acquire(session, name=claim_lease(run_id), holder=holder,
                                   ttl_s=lease_s)
            assert epoch is not None  # nobody else ever claimed this run: its lease is free
            return Claim(run_id=run_id, config=config, epoch=epoch)
    return None


def renew_claim(session: Session, *, claim: Claim, holder: str, lease_s: float) -> bool:
    """Extend a worker's claim by `lease_s` from now. False if its run is no longer running or
    the claim is no longer the worker's: the run was ended elsewhere (cancelled, timed out,
    interrupted by the leader), and the worker should stop its process."""
    status = session.scalar(select(TrainingRun.status).where(TrainingRun.id == claim.run_id))
    if status != "running":
        return False
    return leases.renew(session, name=claim_lease(claim.run_id), holder=holder,
                        epoch=claim.epoch, ttl_s=lease_s)


def release_claim(session: Session, *, run_id: int) -> None:
    """Forget the claim lease of a run that has ended."""
    session.execute(delete(Lease).where(Lease.name == claim_lease(run_id)))


@dataclass(frozen=True)
class WorkerRunState:
    """A run left to a trainer worker, as the leader sees it."""

    status: str
    host: str | None  # None: no worker claimed it yet
    claim: LeaseView | None  # the claiming worker's lease (None: none, or it was released)


def worker_run_state(session: Session, *, run_id: int) -> WorkerRunState | None:
    """The run's status and its worker's claim; None if there is no such run."""
    row = session.get(TrainingRun, run_id)
    if row is None:
        return None
    claim = leases.view(session, name=claim_lease(run_id)) if row.host is not None else None
    return WorkerRunState(status=row.status, host=row.host, claim=claim)
