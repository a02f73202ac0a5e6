"""Initial schema: interactions, feedback, tasks, training and eval runs, the adapter registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
Json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("adapter_version", sa.String(), nullable=True),
        sa.Column("request", Json, nullable=False),
        sa.Column("response_text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("principal", sa.String(), nullable=True),
        sa.Column("prompt_key", sa.String(length=64), nullable=False),
        sa.Column("heldout", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "endpoint IN ('chat.completions', 'completions')", name=op.f("ck_interactions_endpoint")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
    )
    op.create_index(op.f("ix_interactions_created_at"), "interactions", ["created_at"])
    op.create_index(op.f("ix_interactions_adapter_version"), "interactions", ["adapter_version"])
    op.create_index(op.f("ix_interactions_principal"), "interactions", ["principal"])
    op.create_index(op.f("ix_interactions_prompt_key"), "interactions", ["prompt_key"])

    op.create_table(
        "feedback",
        sa.Column("id", BigId, nullable=False),
        sa.Column("interaction_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("principal", sa.String(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("preferred_over", sa.String(), nullable=True),
        sa.Column("rejected_text", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("reward", sa.Double(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("verifier", sa.String(), nullable=True),
        sa.Column("details", Json, nullable=True),
        sa.CheckConstraint(
            "kind IN ('rating', 'preference', 'correction', 'outcome')",
            name=op.f("ck_feedback_kind"),
        ),
        sa.CheckConstraint(
            "kind <> 'rating' OR score IS NOT NULL", name=op.f("ck_feedback_rating_has_score")
        ),
        sa.CheckConstraint(
            "kind <> 'preference' OR ((preferred_over IS NULL) <> (rejected_text IS NULL))",
            name=op.f("ck_feedback_preference_has_one_target"),
        ),
        sa.CheckConstraint(
            "kind <> 'correction' OR text IS NOT NULL",
            name=op.f("ck_feedback_correction_has_text"),
        ),
        sa.CheckConstraint(
            "kind <> 'outcome' OR reward IS NOT NULL OR passed IS NOT NULL",
            name=op.f("ck_feedback_outcome_has_result"),
        ),
        sa.ForeignKeyConstraint(
            ["interaction_id"], ["interactions.id"],
            name=op.f("fk_feedback_interaction_id_interactions"),
        ),
        sa.ForeignKeyConstraint(
            ["preferred_over"], ["interactions.id"],
            name=op.f("fk_feedback_preferred_over_interactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_interaction_id"), "feedback", ["interaction_id"])

    op.create_table(
        "tasks",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("messages", Json, nullable=True),
        sa.Column("prompt_key", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("verifier", sa.String(), nullable=False),
        sa.Column("options", Json, nullable=False),
        sa.Column("tags", Json, nullable=False),
        sa.Column("heldout", sa.Boolean(), nullable=False),
        sa.Column("principal", sa.String(), nullable=True),
        sa.CheckConstraint(
            "(prompt IS NULL AND messages IS NOT NULL) OR (prompt IS NOT NULL AND messages IS NULL)",
            name=op.f("ck_tasks_one_prompt"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(op.f("ix_tasks_prompt_key"), "tasks", ["prompt_key"])

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("finished_at", Time, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("parent_version", sa.String(), nullable=True),
        sa.Column("adapter_version", sa.String(), nullable=True),
        sa.Column("data_watermark", sa.BigInteger(), nullable=True),
        sa.Column("config", Json, nullable=False),
        sa.Column("metrics", Json, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_training_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )

    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("finished_at", Time, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("candidate_version", sa.String(), nullable=True),
        sa.Column("baseline_version", sa.String(), nullable=True),
        sa.Column("config", Json, nullable=False),
        sa.Column("summary", Json, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_eval_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )

    op.create_table(
        "adapters",
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("parent_version", sa.String(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("promoted_at", Time, nullable=True),
        sa.Column("promoted_by", sa.String(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("data_watermark", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'champion', 'retired', 'rejected')",
            name=op.f("ck_adapters_status"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_version"], ["adapters.version"],
            name=op.f("fk_adapters_parent_version_adapters"),
        ),
        sa.ForeignKeyConstraint(
            ["training_run_id"], ["training_runs.id"],
            name=op.f("fk_adapters_training_run_id_training_runs"),
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_adapters")),
    )
    # At most one champion, enforced by the database (a partial unique index on both dialects).
    op.create_index(
        "uq_adapters_one_champion",
        "adapters",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'champion'"),
        postgresql_where=sa.text("status = 'champion'"),
    )


def downgrade() -> None:
    op.drop_table("adapters")
    op.drop_table("eval_runs")
    op.drop_table("training_runs")
    op.drop_table("tasks")
    op.drop_table("feedback")
    op.drop_table("interactions")
