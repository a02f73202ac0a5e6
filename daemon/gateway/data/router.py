"""HTTP routes of the data API: `POST /admin/data/erasures`, `GET /admin/data/export`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from lifelong.daemon.gateway.auth import AdminPrincipal
from lifelong.daemon.gateway.data.protocol import USER_KEY_CHARS, DeletedOut, ErasureIn, ErasureOut
from lifelong.daemon.gateway.data.service import DataService
from lifelong.feedback_store.deletion import Subject

router = APIRouter(prefix="/admin/data", tags=["data"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "Key lacks the `admin` scope."},
    422: {"description": "Neither or both of principal and user_key."},
}


def _data(request: Request) -> DataService:
    return request.app.state.data


@router.post("/erasures", responses=ERRORS)
async def erasure(body: ErasureIn, principal: AdminPrincipal, request: Request) -> ErasureOut:
    """Delete everything of one principal or one end user: their interactions with all feedback
    on them, and for a principal also the feedback it gave and its tasks. Answers once done,
    with the receipt. Adapters trained on the data are not changed: `lifelong adapters show`
    says how much of each one's data has been deleted since."""
    subject = Subject(principal=body.principal, user_key=body.user_key)  # InvalidSubject: 422
    receipt = await _data(request).erase(subject, by=principal.name or "anonymous")
    return ErasureOut(principal=subject.principal, user_key=subject.user_key,
                      deleted=DeletedOut(**receipt.deleted.to_dict()),
                      started_at=receipt.started_at.isoformat(),
                      finished_at=receipt.finished_at.isoformat(), batches=receipt.batches)


@router.get("/export", responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}}}})
async def export(
    _: AdminPrincipal, request: Request,
    principal: Annotated[str | None, Query(min_length=1)] = None,
    user_key: Annotated[str | None, Query(min_length=1, max_length=USER_KEY_CHARS)] = None,
) -> StreamingResponse:
    """Everything an erasure of the same subject would delete that a person sent, as JSON
    lines: each interaction, then the feedback naming it; for a principal also the feedback it
    gave on others' answers, and its tasks. Each line has `type` and the row's columns."""
    subject = Subject(principal=principal, user_key=user_key)  # InvalidSubject: 422
    rows = _data(request).export(subject)

    def lines() -> Iterator[str]:
        for row in rows:
            yield json.dumps(row, separators=(",", ":")) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
