"""Canaries: live trials of an approved candidate on a share of the alias's traffic, and watches
of a new champion; and the caller's user key on every interaction.

`interactions.user_key`: who the caller says the end user is (the OpenAI `user` field, or the
`x-lifelong-user` header), so a canary routes one user to one version all along, and data can be
found by user as well as by principal.
`canaries`: one row per trial (`kind` canary) or post-promotion watch (`kind` watch): the version
on trial, the one it is compared with, the share of traffic, its latest live statistics and, once
it ended, the decision and why. At most one is open (ended_at NULL) at a time; the leader, under
its lease, is the only writer.
`replicas.canary`: the open canary a replica routes to, with its requests and failed requests
per version since it began routing (the leader adds them up to judge serving errors).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when models.py does.
Time = sa.DateTime(timezone=True)
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("user_key", sa.String(256), nullable=True))
        batch.create_index("ix_interactions_user_key", ["user_key"])
    op.create_table(
        "canaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("baseline_version", sa.String(), nullable=True),
        sa.Column("share", sa.Double(), nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("started_by", sa.String(), nullable=False),
        sa.Column("ended_at", Time, nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("stats", Json, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_canaries"),
        sa.CheckConstraint("kind IN ('canary', 'watch')", name=op.f("ck_canaries_kind")),
        sa.CheckConstraint(
            "decision IN ('promote', 'rollback', 'timeout', 'aborted', 'kept')",
            name=op.f("ck_canaries_decision")),
    )
    op.create_index("ix_canaries_ended_at", "canaries", ["ended_at"])
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("canary", Json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("canary")
    op.drop_index("ix_canaries_ended_at", table_name="canaries")
    op.drop_table("canaries")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_index("ix_interactions_user_key")
        batch.drop_column("user_key")
