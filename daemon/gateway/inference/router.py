"""HTTP routes for inference: parse, check the scope, hand to the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lifelong.daemon.gateway.auth import InferPrincipal
from lifelong.daemon.gateway.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    check_caps,
)
from lifelong.daemon.gateway.inference.service import CHAT, COMPLETIONS, InferenceService

router = APIRouter(tags=["inference"])


def _service(request: Request) -> InferenceService:
    return request.app.state.inference


ServiceDep = Annotated[InferenceService, Depends(_service)]
# Who the end user is, for callers that cannot set OpenAI's `user` field (which wins).
UserHeader = Annotated[str | None, Header(alias="x-lifelong-user", min_length=1, max_length=256,
                                          description="The end user's key (see `user`).")]


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, principal: InferPrincipal, service: ServiceDep,
    user: UserHeader = None,
) -> JSONResponse | StreamingResponse:
    """OpenAI chat completion, answered by vLLM; `id` is the interaction id for feedback."""
    check_caps(body, service.limits)
    return await service.answer(CHAT, body.model_dump(exclude_unset=True), principal,
                                user_key=body.user or user)


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, principal: InferPrincipal, service: ServiceDep,
    user: UserHeader = None,
) -> JSONResponse | StreamingResponse:
    """OpenAI text completion, answered by vLLM; `id` is the interaction id for feedback."""
    check_caps(body, service.limits)
    return await service.answer(COMPLETIONS, body.model_dump(exclude_unset=True), principal,
                                user_key=body.user or user)


@router.get("/v1/models")
async def models(_: InferPrincipal, service: ServiceDep) -> ModelList:
    """The public alias (the current champion), `base`, and every live adapter version."""
    catalog = service.catalog
    cards = [ModelCard(id=catalog.alias, root=catalog.champion or "base"), ModelCard(id="base")]
    cards += [ModelCard(id=version, root=version) for version in sorted(catalog.live)]
    return ModelList(data=cards)
