"""Request types for the inference routes, in OpenAI's shapes.

Only the fields the gateway acts on are declared; every other OpenAI/vLLM sampling parameter is
kept (extra="allow") and passed to vLLM, which validates it and answers in the OpenAI error shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "lifelong",
                    "messages": [{"role": "user", "content": "What is 12 + 34?"}],
                    "max_tokens": 16,
                }
            ]
        },
    )

    model: str = Field(description="`lifelong` (the champion), an adapter version, or `base`.")
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "lifelong", "prompt": "12 + 34 =", "max_tokens": 8}]},
    )

    model: str = Field(description="`lifelong` (the champion), an adapter version, or `base`.")
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "lifelong"
    root: str | None = Field(default=None, description="What the name serves now.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
