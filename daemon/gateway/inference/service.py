"""Inference logic: resolve the model name, forward to a ready vLLM, map the answer back, log it.

The response is vLLM's own, with `id` replaced by the interaction id (what feedback refers to)
and `model` by the name the client asked for. Logging is a non-blocking hand-off to the
interaction log's background writer, after the answer is complete. A request the key's rate
limit or the store's text limit refuses never reaches vLLM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from lifelong.daemon.catalog import ModelCatalog, Route, UnknownModel
from lifelong.daemon.gateway.auth import Principal
from lifelong.daemon.gateway.errors import ApiError, status_of
from lifelong.daemon.gateway.rate_limit import RateLimiter
from lifelong.daemon.metrics import ServingMetrics
from lifelong.daemon.settings import LimitsSettings
from lifelong.daemon.upstream import (
    BASE_MODEL_NAME,
    UpstreamPool,
)
from lifelong.daemon.user_traffic import UserTraffic
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.records import NewInteraction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    name: str  # stored with the interaction
    route: str  # vLLM's route
    id_prefix: str  # OpenAI's id prefix for this object


CHAT = Endpoint("chat.completions", "/v1/chat/completions", "chatcmpl-")
COMPLETIONS = Endpoint("completions", "/v1/completions", "cmpl-")


def _text_of(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if message is not None:
        return message.get("content") or ""
    return choice.get("text") or ""


def _delta_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if delta is not None:
        return delta.get("content") or ""
    return choice.get("text") or ""


def _tokens(usage: dict[str, Any]) -> int:
    return usage.get("total_tokens") or (usage.get("prompt_tokens") or 0) + (
        usage.get("completion_tokens") or 0)


class InferenceService:
    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        pool: UpstreamPool,
        interaction_log: InteractionLog,
        metrics: ServingMetrics,
        limits: LimitsSettings,
        max_request_chars: int,
        max_model_len: int,
        traffic: UserTraffic | None = None,
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.interaction_log = interaction_log
        self.metrics = metrics
        self.limits = limits  # what one request may ask (checked by the routes)
        self.max_request_chars = max_request_chars
        # A chat request without max_tokens runs to the end of the model's context: held to the
        # cap when the cap is the shorter (else vLLM's own limit is).
        self.default_max_tokens = limits.max_tokens if limits.max_tokens < max_model_len else None
        self.rate = RateLimiter(requests_per_minute=limits.requests_per_minute,
                                tokens_per_minute=limits.tokens_per_minute)
        self.traffic = traffic or UserTraffic()

    def _model_label(self, name: str) -> str:
        # Bounded: what clients ask for is free text, so a version or `base` asked by name is
        # `pinned` and the version label says which.
        return name if name == self.catalog.alias else "pinned"

    def _headers(self, interaction_id: str, route: Route) -> dict[str, str]:
        return {"x-lifelong-interaction-id": interaction_id, "x-lifelong-adapter": route.version}

    def _record(
        self,
        *,
        endpoint: Endpoint,
        interaction_id: str,
        body: dict[str, Any],
        route: Route,
        principal: Principal,
        user_key: str | None,
        started: float,
        created_at: datetime,
        text: str,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
    ) -> None:
        usage = usage or {}
        accepted = self.interaction_log.submit(
            NewInteraction(
                id=interaction_id,
                created_at=created_at,
                endpoint=endpoint.name,
                request=body,
                model=route.requested,
                adapter_version=None if route.version == BASE_MODEL_NAME else route.version,
                response_text=text,
                finish_reason=finish_reason,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                latency_ms=(time.perf_counter() - started) * 1000.0,
                principal=principal.name,
                user_key=user_key,
            )
        )
        if not accepted:
            logger.warning("interaction log full; dropped", extra={"interaction_id": interaction_id})

    def _upstream_body(self, endpoint: Endpoint, body: dict[str, Any], route: Route) -> dict[str, Any]:
        upstream_body = {**body, "model": route.upstream_model}
        unbounded = "max_tokens" not in body and "max_completion_tokens" not in body
        if endpoint is CHAT and unbounded and self.default_max_tokens is not None:
            upstream_body["max_tokens"] = self.default_max_tokens  # text completions default to 16
        return upstream_body

    async def answer(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal,
        user_key: str | None = None,
    ) -> JSONResponse | StreamingResponse:
        """Stream or not, as the body asks. Counts the requests that fail before answering.
        `user_key`: the end user the caller names (stored; a canary routes by it, else by the
        principal). Raises RateLimited, or ApiError(400) for a request longer than the store
        keeps."""
        self.rate.admit(principal.name)
        # The request is stored with its interaction: held to the store's text limit, as
        # feedback texts are (refused rather than cut: a cut prompt is not what was answered).
        chars = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
        if chars > self.max_request_chars:
            field = "messages" if endpoint is CHAT else "prompt"
            raise ApiError(
                400, f"The request holds {chars} characters, more than the {self.max_request_chars} "
                "an interaction may store (database.max_text_chars).",
                param=field, code="request_too_long",
            )
        visit = self.traffic.arrive()
        streaming = False
        try:
            if body.get("stream"):
                response = await self.stream(endpoint, body, principal, user_key,
                                             on_end=visit.done)
                streaming = True  # the visit ends with the stream's last chunk
                return response
            return await self.complete(endpoint, body, principal, user_key)
        except Exception as exc:
            status = status_of(exc)
            try:
                route = self.catalog.resolve(body["model"], user_key or principal.name)
                model, version = self._model_label(body["model"]), route.version
                self.catalog.tally(route, failed=status >= 500)
            except UnknownModel:
                model, version = "unknown", None
            self.metrics.request(endpoint=endpoint.name, model=model, version=version,
                                 status=status)
            raise
        finally:
            if not streaming:
                visit.done()

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal,
        user_key: str | None = None,
    ) -> JSONResponse:
        """A non-streaming completion. Raises UnknownModel, UpstreamUnavailable/Timeout/Rejected."""
        started = time.perf_counter()
        created_at = datetime.now(UTC)
        route = self.catalog.resolve(body["model"], user_key or principal.name)
        interaction_id = endpoint.id_prefix + uuid.uuid4().hex
        upstream_body = self._upstream_body(endpoint, body, route)
        answer = await self.pool.call(lambda upstream: upstream.complete(endpoint.route,
                                                                         upstream_body))
        answer["id"] = interaction_id
        answer["model"] = route.requested
        first = answer["choices"][0] if answer.get("choices") else {}
        self.rate.charge(principal.name, _tokens(answer.get("usage") or {}))
        self._record(
            endpoint=endpoint, interaction_id=interaction_id, body=body, route=route,
            principal=principal, user_key=user_key, started=started, created_at=created_at,
            text=_text_of(first), finish_reason=first.get("finish_reason"),
            usage=answer.get("usage"),
        )
        self.catalog.tally(route, failed=False)
        self.metrics.request(endpoint=endpoint.name, model=self._model_label(route.requested),
                             version=route.version, status=200,
                             seconds=time.perf_counter() - started)
        self.metrics.tokens(version=route.version, usage=answer.get("usage"))
        return JSONResponse(answer, headers=self._headers(interaction_id, route))

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal,
        user_key: str | None = None, on_end: Callable[[], None] = lambda: None,
    ) -> StreamingResponse:
        """A streaming completion as server-sent events; the upstream stream is opened before the
        response starts, so a down or refusing vLLM still gets a proper status code."""
        started = time.perf_counter()
        created_at = datetime.now(UTC)
        route = self.catalog.resolve(body["model"], user_key or principal.name)
        interaction_id = endpoint.id_prefix + uuid.uuid4().hex
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Always ask vLLM for the usage chunk: the interaction log needs the token counts.
        upstream_body = {
            **self._upstream_body(endpoint, body, route),
            "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
        }
        exits = contextlib.AsyncExitStack()
        events = await self.pool.call(lambda upstream: exits.enter_async_context(
            upstream.stream(endpoint.route, upstream_body)))

        async def relay() -> AsyncIterator[bytes]:
            parts: list[str] = []
            finish_reason: str | None = "abort"  # unless the stream tells otherwise
            usage: dict[str, Any] | None = None
            first_token = True
            try:
                async for data in events:
                    if data == "[DONE]":
                        yield b"data: [DONE]\n\n"
                        continue
                    chunk = json.loads(data)
                    chunk["id"] = interaction_id
                    chunk["model"] = route.requested
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0) == 0:
                            parts.append(_delta_of(choice))
                            if first_token and parts[-1]:
                                first_token = False
                                self.metrics.first_token(endpoint=endpoint.name,
                                                         version=route.version,
                                                         seconds=time.perf_counter() - started)
                            if choice.get("finish_reason"):
                                finish_reason = choice["finish_reason"]
                    if not client_wants_usage:
                        if not chunk.get("choices"):
                            continue  # the usage-only chunk we asked for ourselves
                        chunk.pop("usage", None)
                    yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            finally:
                on_end()
                await exits.aclose()
                # A stream the client left early has no usage chunk: charge what it received
                # (about a token a chunk), so leaving early does not escape the limit.
                self.rate.charge(principal.name, _tokens(usage) if usage else len(parts))
                self._record(
                    endpoint=endpoint, interaction_id=interaction_id, body=body, route=route,
                    principal=principal, user_key=user_key, started=started,
                    created_at=created_at, text="".join(parts), finish_reason=finish_reason,
                    usage=usage,
                )
                self.catalog.tally(route, failed=False)
                self.metrics.request(
                    endpoint=endpoint.name, model=self._model_label(route.requested),
                    version=route.version, status=200, seconds=time.perf_counter() - started)
                self.metrics.tokens(version=route.version, usage=usage)

        return StreamingResponse(
            relay(), media_type="text/event-stream", headers=self._headers(interaction_id, route)
        )
