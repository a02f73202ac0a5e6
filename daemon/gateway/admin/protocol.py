"""Wire types of the admin API (extend them, never rename: operators' scripts depend on them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifelong.adapters.recipe import Method, check_recipe

# A run's id as the database can hold it (a larger one was a 500: SQLite's INTEGER overflowed).
RunId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A training or eval run's id.")]


class TrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    methods: list[Method] | None = Field(
        default=None, min_length=1, description="The recipe for this run; default training.recipe."
    )
    fresh: bool = Field(default=False, description="Start from zero, not the champion's weights.")
    now: bool = Field(
        default=False, description="Train even below training.min_new_examples (one will do)."
    )

    @field_validator("methods")
    @classmethod
    def _a_recipe(cls, methods: list[Method] | None) -> list[Method] | None:
        if methods is not None:
            check_recipe(methods)
        return methods


class TrainingRunOut(BaseModel):
    id: int
    status: str = Field(description="running, succeeded, skipped, failed or interrupted.")
    method: str
    started_at: str
    finished_at: str | None
    parent_version: str | None
    adapter_version: str | None = Field(description="The candidate it made, if any.")
    data_watermark: int | None
    pid: int | None
    error: str | None
    progress: dict[str, Any] = Field(description="Last step, loss, learning rate; tokens so far.")
    outcome: str | None
    reason: str | None = Field(description="Why a run was skipped.")
    stages: list[dict[str, Any]]
    rounds: list[dict[str, Any]] = Field(
        default_factory=list, description="GRPO: per round, the practice pass rate, mean "
        "reward, flat groups, answers trained, loss and the seconds it paused for users.")


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str = Field(min_length=1, description="The adapter version to judge.")
    against: str | None = Field(
        default=None, description="An adapter version or `base`; default: the champion."
    )


class EvalRunOut(BaseModel):
    id: int
    status: str = Field(description="running, succeeded, failed or interrupted.")
    candidate_version: str | None
    baseline_version: str | None = Field(description="None: the base model.")
    started_at: str
    finished_at: str | None
    error: str | None
    summary: dict[str, Any] | None = Field(description="Per suite, both sides' summaries.")
    decision: dict[str, Any] | None = Field(
        description="The gate's status, reasons and every test's numbers."
    )


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, description="The adapter to serve under the public alias.")
    force: bool = Field(
        default=False, description="Promote without the gate's approval (recorded as forced)."
    )
    reason: str | None = Field(default=None, description="Why, for the promotion log.")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str | None = Field(
        default=None, description="A version or `base`; default: what the champion replaced."
    )
    reason: str | None = Field(default=None, description="Why, for the promotion log.")


class PromotedOut(BaseModel):
    champion: str = Field(description="The version now behind the public alias, or `base`.")
    previous: str
    forced: bool
    lagging: list[str] = Field(
        default_factory=list, description="Gateway replicas that did not route the alias to the "
        "new champion within cluster.propagation_timeout_s.")


class CanaryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, description="An adapter the gate approved, to try on "
                         "promotion.canary.share of the alias's users.")


class TrialOut(BaseModel):
    id: int
    kind: str = Field(description="canary, or watch (a new champion against its predecessor).")
    version: str
    baseline: str = Field(description="What it is compared with: a version or `base`.")
    share: float
    started_at: str
    started_by: str
    ended_at: str | None
    decision: str | None = Field(description="promote, rollback, timeout, aborted or kept.")
    reason: str | None
    stats: dict[str, Any] | None = Field(description="The latest live counts, rates and the "
                                         "sequential test's bounds.")
