"""Data governance: what each adapter was trained on, ids that are never reused, and the indexes
that let retention and erasure find rows without scanning.

`adapter_feedback`: the feedback ids an adapter learned from, as inclusive ranges of consecutive
ids (`first_id`..`last_id`): a few rows per adapter, so counting which of them have since been
deleted is one join. The adapter folder's `feedback_ids.json` (checksummed in its manifest)
stays the artifact's own record; these rows are the same list, queryable.
`feedback` on SQLite: AUTOINCREMENT, so deleting the newest feedback (an erasure) never hands its
id to the next row; otherwise a new row would sit below an adapter's data watermark (never
trained on) and inside an adapter's ranges (counted as still present). PostgreSQL's sequences
never reuse ids already.
Indexes for deleting by age and owner: feedback.created_at, feedback.principal,
feedback.preferred_over (PostgreSQL checks that foreign key on every interaction deleted),
tasks.principal, rollouts.created_at, feedback_requests.created_at, eval_results.item_id
(an erased interaction's or task's eval answers go with it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("feedback", "created_at"),
    ("feedback", "principal"),
    ("feedback", "preferred_over"),
    ("tasks", "principal"),
    ("rollouts", "created_at"),
    ("feedback_requests", "created_at"),
    ("eval_results", "item_id"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite sets AUTOINCREMENT only when a table is created: copy the table into a new one.
        with op.batch_alter_table("feedback", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass
    for table, column in _INDEXES:
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_table(
        "adapter_feedback",
        sa.Column("adapter_version", sa.String(), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("adapter_version", "first_id", name="pk_adapter_feedback"),
        sa.ForeignKeyConstraint(["adapter_version"], ["adapters.version"],
                                name="fk_adapter_feedback_adapter_version_adapters"),
        sa.CheckConstraint("first_id <= last_id", name=op.f("ck_adapter_feedback_range")),
    )


def downgrade() -> None:
    op.drop_table("adapter_feedback")
    for table, column in reversed(_INDEXES):
        op.drop_index(f"ix_{table}_{column}", table_name=table)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("feedback", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}):
            pass
