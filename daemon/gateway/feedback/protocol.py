"""Wire types of the feedback API (extend them, never rename: clients depend on these names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Header
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lifelong.evals.verifiers import (
    InvalidVerifierOptions,
    UnknownVerifier,
    check_verifier,
    verifier_names,
)

Text = Annotated[str, Field(min_length=1)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID) per feedback call: a retry of the call with the "
        "same key returns what the first one stored and stores nothing again, so a call whose "
        "answer was lost can be sent again. Keys are per API key's principal and kept for good.",
    ),
]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interaction_id: Text = Field(description="The `id` of a chat or text completion.")


class RatingIn(_Item):
    kind: Literal["rating"]
    score: float = Field(description="In the configured range (default -1..1); thumbs are -1/+1.")


class CorrectionIn(_Item):
    kind: Literal["correction"]
    text: Text = Field(description="The ideal response.")


class PreferenceIn(_Item):
    kind: Literal["preference"]
    preferred_over: str | None = Field(
        default=None, description="Another interaction this one is better than."
    )
    rejected_text: str | None = Field(default=None, description="A worse answer, as text.")

    @model_validator(mode="after")
    def _one_target(self) -> PreferenceIn:
        if (self.preferred_over is None) == (self.rejected_text is None):
            raise ValueError("give exactly one of `preferred_over` or `rejected_text`")
        return self


class OutcomeIn(_Item):
    kind: Literal["outcome"]
    passed: bool | None = None
    reward: float | None = None
    verifier: str | None = Field(default=None, description="Name of what judged the answer.")
    details: dict[str, Any] | None = Field(
        default=None, description="Anything about the judgement. `reference` (a string: what "
        "the answer was compared with) and `options` (the verifier's), with a verifier the "
        "daemon has, make the prompt a practice task: the model may practise on it (GRPO).",
    )

    @model_validator(mode="after")
    def _some_result(self) -> OutcomeIn:
        if self.passed is None and self.reward is None:
            raise ValueError("give `passed`, `reward`, or both")
        return self

    @model_validator(mode="after")
    def _practisable(self) -> OutcomeIn:
        # Refused now rather than when a practice run first grades against it.
        reference = (self.details or {}).get("reference")
        if reference is None or self.verifier not in verifier_names():
            return self
        if not isinstance(reference, str):
            raise ValueError("details.reference must be a string")
        try:
            check_verifier(self.verifier, (self.details or {}).get("options", {}),
                           reference=reference)
        except (UnknownVerifier, InvalidVerifierOptions) as exc:
            raise ValueError(str(exc)) from None
        return self


FeedbackIn = Annotated[
    RatingIn | CorrectionIn | PreferenceIn | OutcomeIn, Field(discriminator="kind")
]

FEEDBACK_EXAMPLES = {
    "rating": {"value": {"interaction_id": "chatcmpl-…", "kind": "rating", "score": 1}},
    "correction": {
        "value": {"interaction_id": "chatcmpl-…", "kind": "correction", "text": "46"}
    },
    "preference": {
        "value": {"interaction_id": "chatcmpl-…", "kind": "preference",
                  "preferred_over": "chatcmpl-…"}
    },
    "outcome": {
        "value": {"interaction_id": "chatcmpl-…", "kind": "outcome", "passed": True,
                  "reward": 1.0, "verifier": "exact_match", "details": {"expected": "46"}}
    },
}


class FeedbackBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[FeedbackIn] = Field(min_length=1, max_length=1000)


class FeedbackOut(BaseModel):
    id: int
    interaction_id: str
    kind: str
    created_at: datetime
    principal: str | None
    score: float | None = None
    text: str | None = None
    preferred_over: str | None = None
    rejected_text: str | None = None
    passed: bool | None = None
    reward: float | None = None
    verifier: str | None = None
    details: dict[str, Any] | None = None


class FeedbackBatchOut(BaseModel):
    items: list[FeedbackOut]


class TaskIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "What is 12 + 34?", "reference": "46", "verifier": "exact_match",
                 "tags": ["add2"]}
            ]
        },
    )
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    reference: str = Field(description="The answer a verifier compares with.")
    verifier: Text = Field(description="Verifier name, e.g. `exact_match`.")
    options: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    heldout: bool | None = Field(
        default=None,
        description="true: an eval item only, never trained or practised on (an application's "
        "own test set); false: never held out; absent: held out at database.heldout_fraction.",
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> TaskIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    @model_validator(mode="after")
    def _known_verifier(self) -> TaskIn:
        # Refused now, at registration, rather than when an eval first runs the task.
        try:
            check_verifier(self.verifier, self.options, reference=self.reference)
        except (UnknownVerifier, InvalidVerifierOptions) as exc:
            raise ValueError(str(exc)) from None
        return self


class TaskOut(BaseModel):
    id: str
    created_at: datetime
    prompt: str | None
    messages: list[dict[str, Any]] | None
    reference: str
    verifier: str
    options: dict[str, Any]
    tags: list[str]
    heldout: bool
    principal: str | None


class InteractionOut(BaseModel):
    id: str
    created_at: datetime
    endpoint: str
    model: str
    adapter_version: str | None
    request: dict[str, Any]
    response_text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    principal: str | None
    heldout: bool
    feedback: list[FeedbackOut]
