"""`GET /metrics`: the gateway's Prometheus metrics (`daemon/metrics.py`), in the text format.

No API key, like the health routes: Prometheus scrapes it, and it names no user data (versions,
suites and counts only). Collection reads the store at most every few seconds, in a thread, so a
scrape never blocks the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Requests, latency, feedback, training runs, gate decisions, promotions, the champion."""
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
