"""The tables of the feedback store, as SQLAlchemy 2.0 declarative models.

These models describe the schema the migrations in `migrations/versions/` build; a test checks
that Alembic's autogenerate finds no difference, on SQLite and on PostgreSQL. Change the schema by
adding a migration, then the model.

Times are stored in UTC and always come back timezone-aware, on both dialects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: SQLite's batch migrations can only alter what has a name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ADAPTER_STATUSES = ("candidate", "approved", "champion", "retired", "rejected")
# skipped: too little new data, nothing trained; interrupted: its process died with the daemon.
TRAINING_RUN_STATUSES = ("running", "succeeded", "failed", "skipped", "interrupted")
EVAL_RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
FEEDBACK_KINDS = ("rating", "preference", "correction", "outcome")
ENDPOINTS = ("chat.completions", "completions")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC (SQLite has no time zones: naive UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL: it has equality (DISTINCT, UNION work) and can be indexed later.
# Python None stays SQL NULL rather than the JSON value `null`.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Interaction(Base):
    """One answered completion request, keyed by the response id the client saw."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String)
    adapter_version: Mapped[str | None] = mapped_column(String, index=True)
    request: Mapped[dict[str, Any]] = mapped_column(Json)
    response_text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    principal: Mapped[str | None] = mapped_column(String, index=True)
    # Who the caller says the end user is (OpenAI's `user` field or the x-lifelong-user header).
    user_key: Mapped[str | None] = mapped_column(String(256), index=True)
    # sha256 of the canonical JSON of the prompt or messages: groups answers to one prompt.
    prompt_key: Mapped[str] = mapped_column(String(64), index=True)
    heldout: Mapped[bool] = mapped_column(Boolean)

    feedback: Mapped[list[Feedback]] = relationship(
        back_populates="interaction",
        foreign_keys="Feedback.interaction_id",
        order_by="Feedback.id",
        lazy="raise",  # load it explicitly (selectinload): no hidden queries per row
    )

    __table_args__ = (CheckConstraint(f"endpoint IN ({_one_of(ENDPOINTS)})", name="endpoint"),)


class Feedback(Base):
    """One piece of feedback on an interaction; `kind` says which nullable columns are set."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    principal: Mapped[str | None] = mapped_column(String, index=True)
    # rating
    score: Mapped[float | None] = mapped_column(Double)
    # preference: exactly one of the two
    preferred_over: Mapped[str | None] = mapped_column(ForeignKey("interactions.id"), index=True)
    rejected_text: Mapped[str | None] = mapped_column(Text)
    # correction
    text: Mapped[str | None] = mapped_column(Text)
    # outcome: at least one of reward and passed
    reward: Mapped[float | None] = mapped_column(Double)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    verifier: Mapped[str | None] = mapped_column(String)
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)

    interaction: Mapped[Interaction] = relationship(
        back_populates="feedback", foreign_keys=[interaction_id], lazy="raise"
    )

    __table_args__ = (
        CheckConstraint(f"kind IN ({_one_of(FEEDBACK_KINDS)})", name="kind"),
        CheckConstraint("kind <> 'rating' OR score IS NOT NULL", name="rating_has_score"),
        CheckConstraint(
            "kind <> 'preference' OR ((preferred_over IS NULL) <> (rejected_text IS NULL))",
            name="preference_has_one_target",
        ),
        CheckConstraint("kind <> 'correction' OR text IS NOT NULL", name="correction_has_text"),
        CheckConstraint(
            "kind <> 'outcome' OR reward IS NOT NULL OR passed IS NOT NULL",
            name="outcome_has_result",
        ),
        # Ids are never reused, even after the newest rows are deleted (migration 0010).
        {"sqlite_autoincrement": True},
    )


class FeedbackRequest(Base):
    """A feedback request sent with an idempotency key: a retry with the same key (and the same
    items) gets these rows back instead of writing them again. Keys are per principal; the
    anonymous principal (no API keys configured) is stored as "" so its keys collide too."""

    __tablename__ = "feedback_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    principal: Mapped[str] = mapped_column(String)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))  # of the items, to spot a reused key
    feedback_ids: Mapped[list[int]] = mapped_column(Json)  # in the order they were sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (UniqueConstraint("principal", "idempotency_key"),)


class Task(Base):
    """A verifiable prompt with its reference answer and the verifier that judges answers."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    # Same key as interactions.prompt_key: links a task to the answers given to it.
    prompt_key: Mapped[str] = mapped_column(String(64), index=True)
    reference: Mapped[str] = mapped_column(Text)
    verifier: Mapped[str] = mapped_column(String)
    options: Mapped[dict[str, Any]] = mapped_column(Json)
    tags: Mapped[list[str]] = mapped_column(Json)
    heldout: Mapped[bool] = mapped_column(Boolean)
    principal: Mapped[str | None] = mapped_column(String, index=True)

    __table_args__ = (
        CheckConstraint(
            "(prompt IS NULL AND messages IS NOT NULL) OR (prompt IS NOT NULL AND messages IS NULL)",
            name="one_prompt",
        ),
    )


class TrainingRun(Base):
    """One training attempt; grows columns through migrations as the trainer needs them."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))  # e.g. "sft", "dpo"
    parent_version: Mapped[str | None] = mapped_column(String)  # None: trained on the base model
    adapter_version: Mapped[str | None] = mapped_column(String)  # what it produced, if anything
    data_watermark: Mapped[int | None] = mapped_column(BigInteger)  # last feedback id it used
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[str | None] = mapped_column(Text)
    # The process that trains it: a restarted daemon marks its own dead ones interrupted.
    host: Mapped[str | None] = mapped_column(String)
    pid: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(f"status IN ({_one_of(TRAINING_RUN_STATUSES)})", name="status"),
    )


class EvalRun(Base):
    """One evaluation of a candidate adapter against a baseline (None: the base model)."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    candidate_version: Mapped[str | None] = mapped_column(String)
    baseline_version: Mapped[str | None] = mapped_column(String)
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    summary: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(f"status IN ({_one_of(EVAL_RUN_STATUSES)})", name="status"),
    )


class Adapter(Base):
    """A trained LoRA adapter in the registry. At most one row is ever the champion."""

    __tablename__ = "adapters"

    version: Mapped[str] = mapped_column(String, primary_key=True)
    parent_version: Mapped[str | None] = mapped_column(ForeignKey("adapters.version"))
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    promoted_by: Mapped[str | None] = mapped_column(String)  # a principal, or "gate"
    forced: Mapped[bool] = mapped_column(Boolean)  # promoted without passing the gate
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    data_watermark: Mapped[int | None] = mapped_column(BigInteger)  # last feedback id trained on

    __table_args__ = (
        CheckConstraint(f"status IN ({_one_of(ADAPTER_STATUSES)})", name="status"),
        # The database itself refuses a second champion, whatever the code does.
        Index(
            "uq_adapters_one_champion",
            "status",
            unique=True,
            sqlite_where=text("status = 'champion'"),
            postgresql_where=text("status = 'champion'"),
        ),
    )


class AdapterFeedback(Base):
    """A run of consecutive feedback ids an adapter learned from (`first_id`..`last_id`,
    inclusive): its training data, compact enough to count what has been deleted since with
    one indexed count (`lineage.py`)."""

    __tablename__ = "adapter_feedback"

    adapter_version: Mapped[str] = mapped_column(ForeignKey("adapters.version"), primary_key=True)
    first_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("first_id <= last_id", name="range"),)


EVAL_SIDES = ("candidate", "champion")
SUITE_KINDS = ("target", "regression", "retention")
GATE_STATUSES = ("approved", "rejected", "not_enough_evidence")


class EvalResult(Base):
    """One item's answer and verdict in an eval run, for the candidate or the champion."""

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    eval_run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id"), index=True)
    suite: Mapped[str] = mapped_column(String)
    suite_kind: Mapped[str] = mapped_column(String(16))
    item_id: Mapped[str] = mapped_column(String, index=True)
    side: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String)  # the name vLLM served it under
    answers: Mapped[list[str]] = mapped_column(Json)  # one per sample
    score: Mapped[float] = mapped_column(Double)
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Double)
    format_ok: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        CheckConstraint(f"suite_kind IN ({_one_of(SUITE_KINDS)})", name="suite_kind"),
        CheckConstraint(f"side IN ({_one_of(EVAL_SIDES)})", name="side"),
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
        # One answer per item and side in a run: what pairs the candidate with the champion.
        Index("uq_eval_results_item", "eval_run_id", "suite", "item_id", "side", unique=True),
    )


class GateDecision(Base):
    """The gate's verdict on one eval run's candidate, with every test's numbers."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id"), unique=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    candidate_version: Mapped[str | None] = mapped_column(String, index=True)  # None: the base
    champion_version: Mapped[str | None] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(24))
    reasons: Mapped[list[str]] = mapped_column(Json)  # one line each, the deciding one first
    details: Mapped[dict[str, Any]] = mapped_column(Json)  # the whole decision: suites, checks, policy

    __table_args__ = (CheckConstraint(f"status IN ({_one_of(GATE_STATUSES)})", name="status"),)


PROMOTION_KINDS = ("promote", "rollback")


class Promotion(Base):
    """One change of champion (None: the base model), in order; rollback reads it backwards."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[str | None] = mapped_column(String)
    to_version: Mapped[str | None] = mapped_column(String)
    by: Mapped[str] = mapped_column(String)  # a principal, or "gate"
    forced: Mapped[bool] = mapped_column(Boolean)  # promoted without the gate's approval
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint(f"kind IN ({_one_of(PROMOTION_KINDS)})", name="kind"),)


CANARY_KINDS = ("canary", "watch")
CANARY_DECISIONS = ("promote", "rollback", "timeout", "aborted", "kept")


class Canary(Base):
    """A live trial of `version` on a share of the alias's traffic against `baseline_version`
    (kind canary), or a watch of a new champion against its predecessor (kind watch). Open while
    `ended_at` is NULL; at most one is open."""

    __tablename__ = "canaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String)
    baseline_version: Mapped[str | None] = mapped_column(String)  # None: the base model
    share: Mapped[float] = mapped_column(Double)  # of the alias's users routed to `version`
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_by: Mapped[str] = mapped_column(String)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    decision: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    stats: Mapped[dict[str, Any] | None] = mapped_column(Json)  # the latest live statistics

    __table_args__ = (
        CheckConstraint(f"kind IN ({_one_of(CANARY_KINDS)})", name="kind"),
        CheckConstraint(f"decision IN ({_one_of(CANARY_DECISIONS)})", name="decision"),
    )


class Rollout(Base):
    """One sampled answer to a practice task in a GRPO run, graded by the task's verifier."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"))
    round: Mapped[int] = mapped_column(Integer)  # 0-based; round r samples from round r-1's update
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    policy: Mapped[str] = mapped_column(String)  # the name vLLM served the sampling policy under
    sample: Mapped[int] = mapped_column(Integer)  # index within the task's group of this round
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String)
    reward: Mapped[float] = mapped_column(Double)
    passed: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        CheckConstraint("round >= 0", name="round_range"),
        Index("ix_rollouts_run_round", "training_run_id", "round"),
    )


class Lease(Base):
    """A named lease (the learning loop's leadership): its holder, fencing epoch and expiry in the
    database's clock (seconds since 1970), so no replica's own clock decides who leads."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))  # a replica id
    holder_url: Mapped[str | None] = mapped_column(String)  # where the holder answers
    epoch: Mapped[int] = mapped_column(BigInteger)  # raised at every change of holder
    expires_at: Mapped[float] = mapped_column(Double)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Replica(Base):
    """A gateway replica's last heartbeat: where it answers, whether it leads, the champion it
    routes the alias to and what each vLLM server it talks to serves."""

    __tablename__ = "replicas"

    replica_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[float] = mapped_column(Double)  # the database's clock, seconds since 1970
    leader: Mapped[bool] = mapped_column(Boolean)
    champion: Mapped[str | None] = mapped_column(String)  # None: the base model
    servers: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    # The canary it routes to: {"id", "version", "requests": {version: n}, "errors": {...}}.
    canary: Mapped[dict[str, Any] | None] = mapped_column(Json)
