"""Liveness and readiness: `/healthz` (the process answers), `/readyz` (it can serve a model)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The gateway process is alive (it may still be waiting for vLLM)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when at least one vLLM server is ready with the champion loaded; 503 otherwise."""
    state = request.app.state
    upstreams = [
        {"url": w.upstream.base_url, "ready": w.upstream.ready, "state": w.state,
         "error": w.last_error, "adapters_registered": w.upstream.adapters_registered,
         # Only for the server the daemon runs itself:
         "pid": getattr(w, "pid", None), "restarts": getattr(w, "restarts", None),
         "replacements": getattr(w, "replacements", None)}
        for w in state.watchers
    ]
    ready = state.pool.any_ready
    body = {
        "status": "ready" if ready else "unavailable",
        "champion": state.catalog.champion,
        "upstreams": upstreams,
        "interaction_log": asdict(state.interaction_log.stats()),
    }
    headers = None if ready else {"Retry-After": str(state.pool.retry_after_s)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)
