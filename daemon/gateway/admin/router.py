"""HTTP routes of the admin API: parse, check the `admin` scope, hand to the admin service
(`service.py`), and map what it answers or raises to HTTP."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request

from lifelong.adapters import AdapterError
from lifelong.daemon.canary import CanaryRefused, TrialView
from lifelong.daemon.gateway.admin.protocol import (
    CanaryIn,
    EvalIn,
    EvalRunOut,
    PromotedOut,
    PromoteIn,
    RollbackIn,
    RunId,
    TrainIn,
    TrainingRunOut,
    TrialOut,
)
from lifelong.daemon.gateway.admin.service import AdminService
from lifelong.daemon.gateway.auth import AdminPrincipal
from lifelong.daemon.gateway.errors import ApiError
from lifelong.daemon.gateway.health import details
from lifelong.daemon.judge import NothingToJudge
from lifelong.daemon.promotion import PromotionRefused
from lifelong.daemon.trainer import NotTheRunningRun, TrainerBusy, TrainRequest
from lifelong.daemon.upstream import AdapterLoadFailed
from lifelong.evals.suites import SuiteError
from lifelong.feedback_store.registry import NothingToRollBack

router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "Key lacks the `admin` scope."},
}


def _admin(request: Request) -> AdminService:
    return request.app.state.admin


@router.post("/train", status_code=202, responses={**ERRORS, 409: {"description": "Busy."}})
async def train(body: TrainIn, principal: AdminPrincipal, request: Request) -> TrainingRunOut:
    """Start a learning cycle now: training in its own process (202 with the running run), then
    the judge, then promotion if the gate approves and schedule.auto_promote is on."""
    train_request = TrainRequest(
        requested_by=principal.name or "anonymous",
        methods=tuple(body.methods) if body.methods else None, fresh=body.fresh, now=body.now,
    )
    try:
        run_id = await _admin(request).train(train_request)
    except TrainerBusy as exc:
        raise ApiError(409, str(exc), code="trainer_busy") from exc
    return await _run(request, run_id)


@router.get("/status", responses=ERRORS)
async def status(_: AdminPrincipal, request: Request) -> dict[str, Any]:
    """Champion, candidates, recent training runs and gate decisions, the last cycle, and the
    next scheduled one (what `lifelong status` prints)."""
    return await _admin(request).status()


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
        await _admin(request).cancel(run_id)
    except NotTheRunningRun as exc:
        raise ApiError(409, str(exc), code="not_running") from exc
    return await _run(request, run_id)


@router.get("/adapters", responses=ERRORS)
async def adapters(_: AdminPrincipal, request: Request) -> list[dict[str, Any]]:
    """Every registered adapter, oldest first (as `lifelong adapters list --json`)."""
    return await _admin(request).adapters()


@router.get("/adapters/{version}", responses={**ERRORS, 404: {"description": "No such adapter."}})
async def adapter(version: str, _: AdminPrincipal, request: Request) -> dict[str, Any]:
    """One adapter: registry row, training run, manifest, loss curve (as `adapters show --json`)."""
    return await _admin(request).adapter(version)


@router.post("/eval", status_code=202,
             responses={**ERRORS, 404: {"description": "No such adapter."},
                        409: {"description": "Cannot be judged as asked."}})
async def evaluate(body: EvalIn, _: AdminPrincipal, request: Request) -> EvalRunOut:
    """Judge a candidate against the champion (or `against`) through vLLM; 202 with the running
    eval run. Against the champion, the decision sets the adapter's status; it never promotes."""
    try:
        run_id = await _admin(request).evaluate(body.candidate, against=body.against)
    except (NothingToJudge, AdapterError, SuiteError) as exc:  # refused before a run was recorded
        raise ApiError(409, str(exc), code="cannot_judge") from exc
    return await _eval_run(request, run_id)


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
    return await _moved(_admin(request).promote(
        body.version, by=principal.name or "anonymous", forced=body.force, reason=body.reason))


@router.post("/canary", responses=PROMOTION_ERRORS)
async def start_canary(body: CanaryIn, principal: AdminPrincipal, request: Request) -> TrialOut:
    """Try `version` (approved by the gate) on promotion.canary.share of the alias's users; the
    canary promotes it, or rolls it back, on their live outcomes."""
    return await _trial(_admin(request).start_canary(body.version,
                                                    by=principal.name or "anonymous"))


@router.post("/canary/stop", responses=PROMOTION_ERRORS)
async def stop_canary(principal: AdminPrincipal, request: Request) -> TrialOut:
    """End the open canary; every user goes back to the champion (the candidate stays
    approved)."""
    return await _trial(_admin(request).stop_canary(by=principal.name or "anonymous"))


async def _trial(started: Awaitable[TrialView]) -> TrialOut:
    try:
        return TrialOut(**vars(await started))
    except (CanaryRefused, AdapterError) as exc:
        raise ApiError(409, str(exc), code="canary_refused") from exc
    except AdapterLoadFailed as exc:
        raise ApiError(502, str(exc), type="upstream_error", code="adapter_load_failed") from exc


@router.post("/rollback", responses=PROMOTION_ERRORS)
async def rollback(body: RollbackIn, principal: AdminPrincipal, request: Request) -> PromotedOut:
    """Return the public alias to the previous champion (or `to`)."""
    return await _moved(_admin(request).rollback(
        by=principal.name or "anonymous", to=body.to, reason=body.reason))


async def _moved(move: Awaitable[PromotedOut]) -> PromotedOut:
    try:
        return await move
    except (PromotionRefused, NothingToRollBack, AdapterError) as exc:
        raise ApiError(409, str(exc), code="promotion_refused") from exc
    except AdapterLoadFailed as exc:
        raise ApiError(502, str(exc), type="upstream_error", code="adapter_load_failed") from exc


async def _eval_run(request: Request, run_id: int) -> EvalRunOut:
    found = await _admin(request).eval_run(run_id)
    if found is None:
        raise ApiError(404, f"no eval run {run_id}", type="not_found_error", param="run_id",
                       code="unknown_run")
    return found


async def _run(request: Request, run_id: int) -> TrainingRunOut:
    found = await _admin(request).training_run(run_id)
    if found is None:
        raise ApiError(404, f"no training run {run_id}", type="not_found_error",
                       param="run_id", code="unknown_run")
    return found
