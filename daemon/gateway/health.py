"""Liveness and readiness: `/healthz` (the process answers), `/readyz` (it can serve).

Both are unauthenticated (probes carry no key), so they say only ready or not and why, in words;
`details` (upstream URLs, pids, restarts, errors, the interaction log, the database) is for
admin keys, in `/admin/status`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from lifelong.daemon.gateway.errors import DATABASE_RETRY_AFTER_S

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The gateway process is alive (it may still be waiting for vLLM)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when at least one vLLM server is ready with the champion loaded and the database
    answers; 503 otherwise, saying why (details: `/admin/status`, admin keys)."""
    state = request.app.state
    reasons = []
    retry_after = 0
    if not state.pool.any_ready:
        reasons.append("no model server is ready yet (starting, restarting or down)")
        retry_after = state.pool.retry_after_s
    if not state.database_watch.state().up:
        # Inference still answers and its log catches up later; feedback and reads get 503.
        reasons.append("the database is not answering")
        retry_after = max(retry_after, DATABASE_RETRY_AFTER_S)
    if not reasons:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable", "reason": "; ".join(reasons)}, status_code=503,
                        headers={"Retry-After": str(retry_after)})


def details(state: State) -> dict[str, Any]:
    """What the readiness answer rests on, for operators: every upstream (URL, state, last
    error; pid, restarts and replacements of the one the daemon runs), the interaction log's
    counters and the database's last check."""
    upstreams = [
        {"url": w.upstream.base_url, "ready": w.upstream.ready, "state": w.state,
         "error": w.last_error, "adapters_registered": w.upstream.adapters_registered,
         # Only for the server the daemon runs itself:
         "pid": getattr(w, "pid", None), "restarts": getattr(w, "restarts", None),
         "replacements": getattr(w, "replacements", None)}
        for w in state.watchers
    ]
    return {
        "upstreams": upstreams,
        "interaction_log": asdict(state.interaction_log.stats()),
        "database": asdict(state.database_watch.state()),
    }
