"""HTTP routes of the admin API: parse, check the `admin` scope, hand to the trainer or the store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters import AdapterError
from lifelong.daemon.adapter_report import adapter_detail, adapter_rows, learning_status
from lifelong.daemon.gateway.admin.protocol import (
    EvalIn,
    EvalRunOut,
    PromotedOut,
    PromoteIn,
    RollbackIn,
    RunId,
    TrainIn,
    TrainingRunOut,
)
from lifelong.daemon.gateway.auth import AdminPrincipal
from lifelong.daemon.gateway.errors import ApiError
from lifelong.daemon.gateway.health import details
from lifelong.daemon.judge import Judge, NothingToJudge
from lifelong.daemon.learning_cycle import LearningCycle, Schedule
from lifelong.daemon.promotion import Promoted, Promoter, PromotionRefused
from lifelong.daemon.trainer import NotTheRunningRun, Trainer, TrainerBusy, TrainRequest, describe_run
from lifelong.daemon.upstream import AdapterLoadFailed
from lifelong.evals import sandbox
from lifelong.evals.suites import SuiteError
from lifelong.feedback_store.eval_results import gate_decision_for_run
from lifelong.feedback_store.models import EvalRun, TrainingRun
from lifelong.feedback_store.registry import NothingToRollBack

router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "Key lacks the `admin` scope."},
}


def _trainer(request: Request) -> Trainer:
    return request.app.state.trainer


def _sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


@router.post("/train", status_code=202, responses={**ERRORS, 409: {"description": "Busy."}})
async def train(body: TrainIn, principal: AdminPrincipal, request: Request) -> TrainingRunOut:
    """Start a learning cycle now: training in its own process (202 with the running run), then
    the judge, then promotion if the gate approves and schedule.auto_promote is on."""
    cycle: LearningCycle = request.app.state.cycle
    train_request = TrainRequest(
        requested_by=principal.name or "anonymous",
        methods=tuple(body.methods) if body.methods else None, fresh=body.fresh, now=body.now,
    )
    try:
        run_id = await cycle.start(train_request)
    except TrainerBusy as exc:
        raise ApiError(409, str(exc), code="trainer_busy") from exc
    return await _run(request, run_id)


@router.get("/status", responses=ERRORS)
async def status(_: AdminPrincipal, request: Request) -> dict[str, Any]:
    """Champion, candidates, recent training runs and gate decisions, the last cycle, and the
    next scheduled one (what `lifelong status` prints)."""
    state = request.app.state
    schedule: Schedule | None = state.schedule
    cycle: LearningCycle = state.cycle

    def read() -> dict[str, Any]:
        with _sessions(request)() as session:
            return learning_status(session)

    found = await asyncio.to_thread(read)
    return {
        **found, "serving": state.catalog.champion or "base",
        "cycle": {"running": cycle.running, "training_run": _trainer(request).running_run,
                  "last": vars(cycle.last) if cycle.last else None},
        "schedule": {"enabled": schedule is not None,
                     "next_run": schedule.next_run() if schedule else None,
                     "min_new_feedback": schedule.min_new_feedback if schedule else None,
                     "new_feedback": (await asyncio.to_thread(cycle.new_feedback))[0]},
        "practice": state.practice.status(),
        # Which isolation python_tests runs under here, or why it is off (probed once).
        "sandbox": await asyncio.to_thread(sandbox.describe),
    }


@router.get("/health", responses=ERRORS)
async def health(_: AdminPrincipal, request: Request) -> dict[str, Any]:
    """What `/readyz` rests on: every upstream (URL, state, last error, pid, restarts), the
    interaction log's counters and the database's last check. Reads no table, so it answers
    while the database is down."""
    return details(request.app.state)


@router.get("/training-runs/{run_id}", responses={**ERRORS, 404: {"description": "No such run."}})
async def training_run(run_id: RunId, _: AdminPrincipal, request: Request) -> TrainingRunOut:
    """One training run: its state, live progress while running, what it made or why not."""
    return await _run(request, run_id)


@router.post("/training-runs/{run_id}/cancel", status_code=202,
             responses={**ERRORS, 409: {"description": "Not running here."}})
async def cancel_training_run(run_id: RunId, _: AdminPrincipal, request: Request) -> TrainingRunOut:
    """Ask the running run to stop; it ends `failed` (cancelled) and registers nothing."""
    if (await _run(request, run_id)).status != "running":
        raise ApiError(409, f"training run {run_id} has already ended", code="not_running")
    try:
        await _trainer(request).cancel(run_id)
    except NotTheRunningRun as exc:
        raise ApiError(409, str(exc), code="not_running") from exc
    return await _run(request, run_id)


@router.get("/adapters", responses=ERRORS)
async def adapters(_: AdminPrincipal, request: Request) -> list[dict[str, Any]]:
    """Every registered adapter, oldest first (as `lifelong adapters list --json`)."""

    def read() -> list[dict[str, Any]]:
        with _sessions(request)() as session:
            return adapter_rows(session)

    return await asyncio.to_thread(read)


@router.get("/adapters/{version}", responses={**ERRORS, 404: {"description": "No such adapter."}})
async def adapter(version: str, _: AdminPrincipal, request: Request) -> dict[str, Any]:
    """One adapter: registry row, training run, manifest, loss curve (as `adapters show --json`)."""

    def read() -> dict[str, Any]:
        with _sessions(request)() as session:
            return adapter_detail(session, version=version)

    return await asyncio.to_thread(read)


@router.post("/eval", status_code=202,
             responses={**ERRORS, 404: {"description": "No such adapter."},
                        409: {"description": "Cannot be judged as asked."}})
async def evaluate(body: EvalIn, _: AdminPrincipal, request: Request) -> EvalRunOut:
    """Judge a candidate against the champion (or `against`) through vLLM; 202 with the running
    eval run. Against the champion, the decision sets the adapter's status; it never promotes."""
    judge: Judge = request.app.state.judge
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(judge.judge(body.candidate, against=body.against,
                                           on_started=started.set_result))
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():  # refused before a run was recorded: say why
        try:
            task.result()
        except (NothingToJudge, AdapterError, SuiteError) as exc:
            raise ApiError(409, str(exc), code="cannot_judge") from exc
    request.app.state.background.add(task)
    task.add_done_callback(request.app.state.background.discard)
    return await _eval_run(request, started.result())


@router.get("/eval-runs/{run_id}", responses={**ERRORS, 404: {"description": "No such run."}})
async def eval_run(run_id: RunId, _: AdminPrincipal, request: Request) -> EvalRunOut:
    """One eval run: its state, per-suite summaries, and the gate's decision with its numbers."""
    return await _eval_run(request, run_id)


PROMOTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 404: {"description": "No such adapter."},
    409: {"description": "Not approved, already champion, nothing to roll back, or invalid."},
    502: {"description": "A vLLM server refused to load it; nothing changed."},
}


@router.post("/promote", responses=PROMOTION_ERRORS)
async def promote(body: PromoteIn, principal: AdminPrincipal, request: Request) -> PromotedOut:
    """Serve `version` under the public alias: loaded and warmed on every vLLM server first,
    then flipped; without `force`, only a version the gate approved."""
    promoter: Promoter = request.app.state.promoter
    return await _moved(promoter.promote(body.version, by=principal.name or "anonymous",
                                         forced=body.force, reason=body.reason))


@router.post("/rollback", responses=PROMOTION_ERRORS)
async def rollback(body: RollbackIn, principal: AdminPrincipal, request: Request) -> PromotedOut:
    """Return the public alias to the previous champion (or `to`)."""
    promoter: Promoter = request.app.state.promoter
    return await _moved(promoter.rollback(by=principal.name or "anonymous", to=body.to,
                                          reason=body.reason))


async def _moved(move: Awaitable[Promoted]) -> PromotedOut:
    try:
        done = await move
    except (PromotionRefused, NothingToRollBack, AdapterError) as exc:
        raise ApiError(409, str(exc), code="promotion_refused") from exc
    except AdapterLoadFailed as exc:
        raise ApiError(502, str(exc), type="upstream_error", code="adapter_load_failed") from exc
    return PromotedOut(champion=done.version, previous=done.previous, forced=done.forced)


async def _eval_run(request: Request, run_id: int) -> EvalRunOut:
    def read() -> EvalRunOut | None:
        with _sessions(request)() as session:
            row = session.get(EvalRun, run_id)
            if row is None:
                return None
            decision = gate_decision_for_run(session, eval_run_id=run_id)
            return EvalRunOut(
                id=row.id, status=row.status, candidate_version=row.candidate_version,
                baseline_version=row.baseline_version, started_at=row.started_at.isoformat(),
                finished_at=row.finished_at.isoformat() if row.finished_at else None,
                error=row.error, summary=row.summary,
                decision=decision.details if decision is not None else None,
            )

    found = await asyncio.to_thread(read)
    if found is None:
        raise ApiError(404, f"no eval run {run_id}", type="not_found_error", param="run_id",
                       code="unknown_run")
    return found


async def _run(request: Request, run_id: int) -> TrainingRunOut:
    def read() -> dict[str, Any] | None:
        with _sessions(request)() as session:
            row = session.get(TrainingRun, run_id)
            return describe_run(row) if row is not None else None

    found = await asyncio.to_thread(read)
    if found is None:
        raise ApiError(404, f"no training run {run_id}", type="not_found_error",
                       param="run_id", code="unknown_run")
    return TrainingRunOut(**found)
