"""Eval results: every item's answer and verdict per eval run, and the gate's decisions.

`eval_results`: one row per (eval run, suite, item, side), side being the candidate or the
champion, so a paired comparison can be read back and re-tested. `gate_decisions`: the gate's
status and reasons (each test's numbers) for an eval run, findable by candidate version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
Json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "eval_results",
        sa.Column("id", BigId, nullable=False),
        sa.Column("eval_run_id", sa.Integer(), nullable=False),
        sa.Column("suite", sa.String(), nullable=False),
        sa.Column("suite_kind", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("side", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("answers", Json, nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("format_ok", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "suite_kind IN ('target', 'regression', 'retention')",
            name=op.f("ck_eval_results_suite_kind"),
        ),
        sa.CheckConstraint(
            "side IN ('candidate', 'champion')", name=op.f("ck_eval_results_side")
        ),
        sa.CheckConstraint("score >= 0 AND score <= 1", name=op.f("ck_eval_results_score_range")),
        sa.ForeignKeyConstraint(
            ["eval_run_id"], ["eval_runs.id"], name=op.f("fk_eval_results_eval_run_id_eval_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_results")),
    )
    op.create_index(
        op.f("ix_eval_results_eval_run_id"), "eval_results", ["eval_run_id"], unique=False
    )
    op.create_index(
        "uq_eval_results_item", "eval_results", ["eval_run_id", "suite", "item_id", "side"],
        unique=True,
    )

    op.create_table(
        "gate_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("eval_run_id", sa.Integer(), nullable=False),
        sa.Column("decided_at", Time, nullable=False),
        sa.Column("candidate_version", sa.String(), nullable=True),
        sa.Column("champion_version", sa.String(), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("reasons", Json, nullable=False),
        sa.Column("details", Json, nullable=False),
        sa.CheckConstraint(
            "status IN ('approved', 'rejected', 'not_enough_evidence')",
            name=op.f("ck_gate_decisions_status"),
        ),
        sa.ForeignKeyConstraint(
            ["eval_run_id"], ["eval_runs.id"], name=op.f("fk_gate_decisions_eval_run_id_eval_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_decisions")),
        sa.UniqueConstraint("eval_run_id", name=op.f("uq_gate_decisions_eval_run_id")),
    )
    op.create_index(
        op.f("ix_gate_decisions_candidate_version"), "gate_decisions", ["candidate_version"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_gate_decisions_candidate_version"), table_name="gate_decisions")
    op.drop_table("gate_decisions")
    op.drop_index("uq_eval_results_item", table_name="eval_results")
    op.drop_index(op.f("ix_eval_results_eval_run_id"), table_name="eval_results")
    op.drop_table("eval_results")
