"""HTTP routes for feedback, tasks and interactions: parse, check scope, hand to the service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from lifelong.daemon.gateway.auth import FeedbackPrincipal, insufficient_scope
from lifelong.daemon.gateway.feedback.protocol import (
    FEEDBACK_EXAMPLES,
    CorrectionIn,
    FeedbackBatchIn,
    FeedbackBatchOut,
    FeedbackOut,
    IdempotencyKey,
    InteractionOut,
    OutcomeIn,
    PreferenceIn,
    RatingIn,
    TaskIn,
    TaskOut,
)
from lifelong.daemon.gateway.feedback.service import FeedbackService
from lifelong.evals.suites import FAMILY_TAG

router = APIRouter(tags=["feedback"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "Key lacks the `feedback` scope, or the interaction is another's."},
    404: {"description": "Unknown interaction."},
    409: {"description": "The Idempotency-Key was first used for other feedback."},
    413: {"description": "Body larger than gateway.max_request_bytes."},
    422: {"description": "Malformed or out-of-range field (named in `error.param`)."},
    503: {"description": "The database is not answering; retry (after Retry-After seconds)."},
}


def _service(request: Request) -> FeedbackService:
    return request.app.state.feedback


ServiceDep = Annotated[FeedbackService, Depends(_service)]


@router.post("/v1/feedback", status_code=201, responses=ERRORS)
async def give_feedback(
    item: Annotated[
        RatingIn | CorrectionIn | PreferenceIn | OutcomeIn,
        Body(discriminator="kind", openapi_examples=FEEDBACK_EXAMPLES),
    ],
    principal: FeedbackPrincipal,
    service: ServiceDep,
    idempotency_key: IdempotencyKey = None,
) -> FeedbackOut:
    """Record one piece of feedback on an interaction; 201 once it is committed."""
    (stored,) = await service.add([item], principal, idempotency_key=idempotency_key)
    return stored


@router.post("/v1/feedback:batch", status_code=201, responses=ERRORS)
async def give_feedback_batch(
    batch: FeedbackBatchIn, principal: FeedbackPrincipal, service: ServiceDep,
    idempotency_key: IdempotencyKey = None,
) -> FeedbackBatchOut:
    """Record many pieces of feedback at once: all are committed, or none is."""
    return FeedbackBatchOut(
        items=await service.add(batch.items, principal, idempotency_key=idempotency_key)
    )


@router.post("/v1/tasks", status_code=201, responses={
    **ERRORS, 403: {"description": "Key lacks the `feedback` scope, or the `evals` scope for "
                    "`heldout: true` or a `family:` tag."}})
async def register_task(task: TaskIn, principal: FeedbackPrincipal, service: ServiceDep) -> TaskOut:
    """Register a verifiable prompt (reference answer + verifier) for evaluation and training.
    `heldout: true` and `family:` tags need the `evals` scope (or `admin`)."""
    # They choose what the gate judges candidates on (its target suites, one per family, named
    # in /metrics): a `feedback` key may add tasks, not steer the gate.
    if (task.heldout or any(tag.startswith(FAMILY_TAG) for tag in task.tags)) \
            and not principal.may("evals"):
        raise insufficient_scope("evals", "for `heldout: true` or a `family:` tag")
    return await service.add_task(task, principal)


@router.get("/v1/interactions/{interaction_id}", responses=ERRORS)
async def get_interaction(
    interaction_id: str, principal: FeedbackPrincipal, service: ServiceDep
) -> InteractionOut:
    """One interaction with all its feedback (your own, unless your key has `admin`)."""
    return await service.interaction(interaction_id, principal)
