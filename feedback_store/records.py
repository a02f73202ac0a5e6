"""What callers submit to the store: plain frozen dataclasses, apart from the table rows.

The HTTP layer maps its wire types onto these; the store validates them (`feedback.py`,
`tasks.py`) and turns them into rows (`models.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Split = Literal["train", "heldout"]


@dataclass(frozen=True, slots=True)
class NewInteraction:
    """One answered request, as the gateway logs it."""

    id: str  # the OpenAI response id the client saw, e.g. "chatcmpl-<hex>"
    created_at: datetime  # timezone-aware
    endpoint: Literal["chat.completions", "completions"]
    request: dict[str, Any]  # the body as the client sent it: messages/prompt and sampling params
    model: str  # the model name the client asked for
    response_text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    adapter_version: str | None = None  # None: the base model answered
    principal: str | None = None
    user_key: str | None = None  # the caller's end user (OpenAI `user`, or x-lifelong-user)


@dataclass(frozen=True, slots=True)
class Rating:
    interaction_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Preference:
    """`interaction_id` is better than `preferred_over` (an interaction) or `rejected_text`."""

    interaction_id: str
    preferred_over: str | None = None
    rejected_text: str | None = None


@dataclass(frozen=True, slots=True)
class Correction:
    interaction_id: str
    text: str  # the ideal response


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verifiable result; at least one of `reward` and `passed`."""

    interaction_id: str
    reward: float | None = None
    passed: bool | None = None
    verifier: str | None = None
    details: dict[str, Any] | None = None


FeedbackItem = Rating | Preference | Correction | Outcome


@dataclass(frozen=True, slots=True)
class NewTask:
    """A verifiable prompt: exactly one of `prompt` and `messages`."""

    reference: str
    verifier: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    heldout: bool | None = None  # None: split by the task id's hash at the store's fraction
