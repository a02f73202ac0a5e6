"""Rollouts: the answers a GRPO run sampled for its practice tasks, each graded by the task's verifier.

One row per sample: the run and round that drew it, the task (prompt) it answers, the policy
that answered (the name vLLM served it under), the sample's index in its group, its text,
finish reason, reward and verdict. They are data, like feedback: what the model tried and how it
did, readable after the run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("training_run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(), nullable=False),
        sa.Column("policy", sa.String(), nullable=False),
        sa.Column("sample", sa.Integer(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("reward", sa.Double(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.CheckConstraint("round >= 0", name=op.f("ck_rollouts_round_range")),
        sa.ForeignKeyConstraint(
            ["training_run_id"], ["training_runs.id"],
            name=op.f("fk_rollouts_training_run_id_training_runs"),
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_rollouts_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(
        "ix_rollouts_run_round", "rollouts", ["training_run_id", "round"], unique=False
    )
    op.create_index(op.f("ix_rollouts_task_id"), "rollouts", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rollouts_task_id"), table_name="rollouts")
    op.drop_index("ix_rollouts_run_round", table_name="rollouts")
    op.drop_table("rollouts")
