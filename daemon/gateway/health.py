"""Liveness and readiness: `/healthz` (the process answers), `/readyz` (it can serve).

Both are unauthenticated (probes carry no key), so they say only ready or not and why, in words;
`details` (upstream URLs, pids, restarts, errors, the interaction log, the database) is for
admin keys, in `/admin/health`.
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
    """200 when at least one vLLM server is ready with the champion loaded (`degraded` while
    the database does not answer); 503 otherwise, saying why (details: `/admin/health`)."""
    state = request.app.state
    code, body, retry_after = readiness(
        model_ready=state.pool.any_ready, model_retry_after_s=state.pool.retry_after_s,
        database_up=state.database_watch.state().up)
    return JSONResponse(body, status_code=code,
                        headers={"Retry-After": str(retry_after)} if retry_after else None)


def readiness(*, model_ready: bool, model_retry_after_s: int,
              database_up: bool) -> tuple[int, dict[str, str], int]:
    """(status code, body, Retry-After seconds or 0) of `/readyz`.

    A database that does not answer makes the instance `degraded`, not unready: every replica
    shares it, so failing readiness on it would take them all out of a balancer at once and stop
    inference, which goes on without it (its log catches up); feedback and reads answer 503."""
    if not model_ready:
        reason = "no model server is ready yet (starting, restarting or down)"
        if not database_up:
            reason += "; the database is not answering"
        retry_after = max(1, model_retry_after_s if database_up else max(
            model_retry_after_s, DATABASE_RETRY_AFTER_S))
        return 503, {"status": "unavailable", "reason": reason}, retry_after
    if not database_up:
        return 200, {"status": "degraded", "reason": "the database is not answering: inference "
                     "goes on, feedback and reads answer 503 until it is back"}, 0
    return 200, {"status": "ready"}, 0


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
