"""Wire types of the data API (extend them, never rename: compliance scripts depend on them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# As long as interactions.user_key holds.
USER_KEY_CHARS = 256


class ErasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal: str | None = Field(
        default=None, min_length=1, description="An API key's principal: its answers, the "
        "feedback on them and the feedback it gave, its tasks.")
    user_key: str | None = Field(
        default=None, min_length=1, max_length=USER_KEY_CHARS, description="An end user as the "
        "caller named them (OpenAI `user` field or x-lifelong-user header): their answers and "
        "the feedback on them.")


class DeletedOut(BaseModel):
    interactions: int
    feedback: int
    feedback_requests: int
    tasks: int
    rollouts: int
    eval_results: int


class ErasureOut(BaseModel):
    """The receipt: what was deleted, and when the erasure started and ended (UTC)."""

    principal: str | None
    user_key: str | None
    deleted: DeletedOut
    started_at: str
    finished_at: str
    batches: int
